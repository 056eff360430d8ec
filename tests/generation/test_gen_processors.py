"""Each logits processor equals its Hugging Face class on the same scores; sampling is seeded."""

from __future__ import annotations

import pytest
import torch
from transformers.generation import logits_process as hf

from hookscope.generation.processors import (
    Processing,
    apply_begin_suppress_tokens,
    apply_min_p,
    apply_repetition_penalty,
    apply_suppress_tokens,
    apply_temperature,
    apply_top_k,
    apply_top_p,
    greedy,
    process_logits,
    sample,
)

BATCH, VOCAB = 5, 97


def _scores(seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    scores = 3 * torch.randn(BATCH, VOCAB, generator=gen)
    scores[0, 10:14] = scores[0, 3]  # ties, so tie handling is compared too
    return scores


def _history(seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (BATCH, 9), generator=torch.Generator().manual_seed(seed))


def assert_same_scores(ours: torch.Tensor, ref: torch.Tensor) -> None:
    assert torch.equal(torch.isinf(ours), torch.isinf(ref)), "different tokens filtered"
    finite = ~torch.isinf(ref)
    torch.testing.assert_close(ours[finite], ref[finite], atol=0, rtol=0)


@pytest.mark.parametrize("temperature", [0.3, 1.7])
def test_temperature(temperature: float) -> None:
    s = _scores()
    ref = hf.TemperatureLogitsWarper(temperature)(_history(), s.clone())
    assert_same_scores(apply_temperature(s, temperature), ref)


@pytest.mark.parametrize(("k", "keep"), [(1, 1), (5, 1), (3, 4), (200, 1)])
def test_top_k(k: int, keep: int) -> None:
    s = _scores()
    ref = hf.TopKLogitsWarper(k, min_tokens_to_keep=keep)(_history(), s.clone())
    assert_same_scores(apply_top_k(s, k, keep), ref)


@pytest.mark.parametrize(("p", "keep"), [(0.05, 1), (0.5, 1), (0.9, 3), (1.0, 1)])
def test_top_p(p: float, keep: int) -> None:
    s = _scores()
    assert_same_scores(apply_top_p(s, p, keep), hf.TopPLogitsWarper(p, min_tokens_to_keep=keep)(_history(), s.clone()))


@pytest.mark.parametrize(("p", "keep"), [(0.0, 1), (0.05, 1), (0.3, 2), (0.99, 1)])
def test_min_p(p: float, keep: int) -> None:
    s = _scores()
    assert_same_scores(apply_min_p(s, p, keep), hf.MinPLogitsWarper(p, min_tokens_to_keep=keep)(_history(), s.clone()))


@pytest.mark.parametrize("penalty", [0.7, 1.3])
def test_repetition_penalty(penalty: float) -> None:
    s, tokens = _scores(), _history()
    ref = hf.RepetitionPenaltyLogitsProcessor(penalty)(tokens, s.clone())
    assert_same_scores(apply_repetition_penalty(s, tokens, penalty), ref)


def test_repetition_penalty_ignores_padding() -> None:
    s, tokens = _scores(), _history()
    mask = torch.ones_like(tokens)
    mask[:, :4] = 0
    ref = hf.RepetitionPenaltyLogitsProcessor(1.5)(tokens[:, 4:], s.clone())  # HF on the real tokens only
    assert_same_scores(apply_repetition_penalty(s, tokens, 1.5, mask), ref)


def test_process_logits_matches_hf_chain_in_generate_order() -> None:
    s, tokens = _scores(), _history()
    chain = hf.LogitsProcessorList([
        hf.RepetitionPenaltyLogitsProcessor(1.2), hf.TemperatureLogitsWarper(0.8), hf.TopKLogitsWarper(20),
        hf.TopPLogitsWarper(0.9), hf.MinPLogitsWarper(0.05),
    ])
    p = Processing(do_sample=True, temperature=0.8, top_k=20, top_p=0.9, min_p=0.05, repetition_penalty=1.2)
    assert_same_scores(process_logits(s, p, tokens), chain(tokens, s.clone()))


SUPPRESS, BEGIN = (4, 11, 96, 500), (3, 12)  # 500 lies outside the vocab: ignored, as in HF


def test_suppress_tokens() -> None:
    s = _scores()
    ref = hf.SuppressTokensLogitsProcessor(list(SUPPRESS))(_history(), s.clone())
    out = apply_suppress_tokens(s, SUPPRESS)
    assert_same_scores(out, ref)
    assert torch.isinf(out[:, [4, 11, 96]]).all()


@pytest.mark.parametrize("begin_index", [9, 8])  # the history has 9 tokens: applies, then does not
def test_begin_suppress_tokens(begin_index: int) -> None:
    s, tokens = _scores(), _history()
    ref = hf.SuppressTokensAtBeginLogitsProcessor(list(BEGIN), begin_index)(tokens, s.clone())
    out = apply_begin_suppress_tokens(s, BEGIN, tokens.shape[-1], begin_index)
    assert_same_scores(out, ref)
    assert bool(torch.isinf(out[:, list(BEGIN)]).all()) == (begin_index == tokens.shape[-1])


def test_process_logits_suppression_in_hf_order() -> None:
    """Whisper's chain: repetition penalty, suppress, begin-suppress, then the sampling warpers."""
    s, tokens = _scores(), _history()
    chain = hf.LogitsProcessorList([
        hf.RepetitionPenaltyLogitsProcessor(1.2), hf.SuppressTokensLogitsProcessor(list(SUPPRESS)),
        hf.SuppressTokensAtBeginLogitsProcessor(list(BEGIN), 9), hf.TemperatureLogitsWarper(0.8),
        hf.TopKLogitsWarper(20),
    ])
    p = Processing(
        do_sample=True, temperature=0.8, top_k=20, repetition_penalty=1.2, suppress_tokens=SUPPRESS,
        begin_suppress_tokens=BEGIN, begin_index=9,
    )
    assert not p.is_identity and not Processing(suppress_tokens=SUPPRESS).is_identity
    assert_same_scores(process_logits(s, p, tokens), chain(tokens, s.clone()))
    with pytest.raises(ValueError, match="begin_suppress_tokens needs the tokens"):
        process_logits(s, Processing(begin_suppress_tokens=BEGIN))


def test_greedy_processing_skips_sampling_filters() -> None:
    s, tokens = _scores(), _history()
    p = Processing(do_sample=False, temperature=0.5, top_k=3, repetition_penalty=1.4)
    assert_same_scores(process_logits(s, p, tokens), hf.RepetitionPenaltyLogitsProcessor(1.4)(tokens, s.clone()))


def test_sampling_is_seeded_and_respects_filters() -> None:
    s = apply_top_k(_scores(), 3)
    draws = [sample(s, torch.Generator().manual_seed(7)) for _ in range(2)]
    assert torch.equal(draws[0], draws[1])
    allowed = torch.topk(_scores(), 3).indices
    many = torch.stack([sample(s, torch.Generator().manual_seed(i)) for i in range(50)], dim=1)
    assert all(set(row.tolist()) <= set(a.tolist()) for row, a in zip(many, allowed))
    assert len(set(many[1].tolist())) > 1, "sampling never varied across seeds"


def test_greedy_is_argmax_first_on_ties() -> None:
    s = _scores()
    s[1, 5] = s[1, 40] = s[1].max() + 1
    assert greedy(s)[1].item() == 5
    assert torch.equal(greedy(s), s.argmax(-1))
