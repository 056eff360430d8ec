"""Texts a user writes that the Wikipedia corpus never holds: special tokens typed in the text, Greek capitals,
unassigned code points, rare CJK blocks, random mixtures of scripts and controls; and ``decode`` of any ids.
Every case is compared with Hugging Face's tokenizer on the same vocabulary."""

from __future__ import annotations

import random

import pytest

from tests.tokenizers.test_tokenizers import bert_pair, gpt2_pair  # noqa: F401  (fixtures)

SPECIAL_IN_TEXT = [
    "[CLS] hello [SEP] world [MASK].", "x[MASK]y", "  [MASK]  ", "[PAD][UNK][MASK][MASK]", "[mask] stays text",
    "[MASK", "a <|endoftext|>b<|endoftext|><|endoftext|>", "<|endoftext|", "[SEP]",
]
UNICODE_CORNERS = [
    "ΟΔΟΣ ΣΑΣ Σ", "ὈΔΥΣΣΕΎΣ", "İstanbul ß ﬁ ǅ Ⅻ", "\ud7ff", "ᾰ\ufa6eb", "word\u0a61word", "𫢒 𫢰 𫠝 𬺰 𠀀",
    "\x1c\x1d\x1e\x1f sep", "a\x0bb\x0cc\x85d\u2029e", "\u3000full\u3000width ｆｕｌｌ", "e\u0301 \u0301abc",
    "\U0001F600\U0001F3FB 🤗", "supercalifragilistic" * 6, "é" * 150, "x" * 100, "x" * 101, "١٢٣ ٤",
    "hello , world . it 's do not can ' t n't", "'S 'LL I'M", "\r\n\r\n", " \u200d ",
]
# scripts and symbols of Unicode's older planes (newer assignments differ between Python's tables and HF's)
ALPHABET = [chr(c) for c in [*range(0x00, 0x250), *range(0x370, 0x3D0), *range(0x400, 0x460), *range(0x2000, 0x2070),
                             *range(0x3000, 0x3010), 0x4E00, 0x4E01, 0xAC00, 0xFEFF, 0xFFFD, 0x0E01, 0x0300, 0x0301,
                             0x1F600, 0x1F3FB, 0xE000, 0x0378, 0x0379]]


def _random_texts(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, 24))) for _ in range(n)]


def _assert_same(ours, hf, texts: list[str]) -> None:
    for text in texts:
        want = hf(text)["input_ids"]
        assert ours.encode(text) == want, repr(text)
        assert ours.decode(want) == hf.decode(want), repr(text)


def test_special_tokens_written_in_the_text_are_never_split(gpt2_pair, bert_pair) -> None:  # noqa: F811
    _assert_same(*bert_pair, SPECIAL_IN_TEXT)
    _assert_same(*gpt2_pair, SPECIAL_IN_TEXT)
    wordpiece, _ = bert_pair
    assert wordpiece.encode("x[MASK]y", add_special_tokens=False)[1] == wordpiece.mask_token_id


def test_wordpiece_lowercases_each_character_alone_and_keeps_unassigned_code_points(bert_pair) -> None:  # noqa: F811
    _assert_same(*bert_pair, UNICODE_CORNERS)


def test_bpe_equals_hf_on_unicode_corners(gpt2_pair) -> None:  # noqa: F811
    _assert_same(*gpt2_pair, UNICODE_CORNERS)


def test_both_equal_hf_on_random_mixtures_of_scripts_and_controls(gpt2_pair, bert_pair) -> None:  # noqa: F811
    texts = _random_texts(400, seed=7)
    _assert_same(*gpt2_pair, texts)
    _assert_same(*bert_pair, texts)


@pytest.mark.parametrize("skip", [False, True])
def test_decode_of_arbitrary_ids_equals_hf(gpt2_pair, bert_pair, skip: bool) -> None:  # noqa: F811
    rng = random.Random(3)
    for ours, hf in (gpt2_pair, bert_pair):
        for _ in range(300):
            ids = [rng.randrange(len(ours)) for _ in range(rng.randint(1, 9))]
            if rng.random() < 0.3:  # a special token in the middle
                ids.insert(rng.randrange(len(ids)), next(iter(ours.special_ids)))
            assert ours.decode(ids, skip_special_tokens=skip) == hf.decode(ids, skip_special_tokens=skip), ids
