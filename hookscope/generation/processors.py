"""Logits processors and samplers as pure functions over ``scores [batch, d_vocab]``.

Each mirrors the Hugging Face class named in its docstring (``transformers.generation.logits_process``),
with the same filter value (``-inf``) and the same ``min_tokens_to_keep`` rule, and is unit-tested against
it. :func:`process_logits` applies them in HF ``generate``'s order: repetition penalty, token suppression
(Whisper's ``suppress_tokens``, then ``begin_suppress_tokens``), then (sampling only) temperature, top-k,
top-p, min-p.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

FILTERED = float("-inf")


def apply_temperature(scores: torch.Tensor, temperature: float) -> torch.Tensor:
    """``scores / temperature`` (HF ``TemperatureLogitsWarper``)."""
    return scores / temperature


def apply_top_k(scores: torch.Tensor, top_k: int, min_tokens_to_keep: int = 1) -> torch.Tensor:
    """Keep the ``top_k`` highest scores (ties kept), -inf elsewhere (HF ``TopKLogitsWarper``)."""
    k = min(max(top_k, min_tokens_to_keep), scores.shape[-1])
    kth = torch.topk(scores, k, dim=-1).values[..., -1:]  # [batch, 1]
    return scores.masked_fill(scores < kth, FILTERED)


def apply_top_p(scores: torch.Tensor, top_p: float, min_tokens_to_keep: int = 1) -> torch.Tensor:
    """Nucleus filtering (HF ``TopPLogitsWarper``).

    Sorted ascending, a token is dropped when the probability mass up to and including it is at most
    ``1 - top_p``: the smallest set of top tokens whose mass reaches ``top_p`` survives.
    """
    sorted_scores, order = torch.sort(scores, dim=-1)  # ascending
    mass_below = sorted_scores.softmax(dim=-1).cumsum(dim=-1)
    drop_sorted = mass_below <= 1 - top_p
    drop_sorted[..., -min_tokens_to_keep:] = False
    drop = drop_sorted.scatter(-1, order, drop_sorted)
    return scores.masked_fill(drop, FILTERED)


def apply_min_p(scores: torch.Tensor, min_p: float, min_tokens_to_keep: int = 1) -> torch.Tensor:
    """Drop tokens less likely than ``min_p`` times the top token's probability (HF ``MinPLogitsWarper``)."""
    probs = scores.softmax(dim=-1)
    drop = probs < min_p * probs.amax(dim=-1, keepdim=True)
    keep = torch.topk(probs, min(min_tokens_to_keep, probs.shape[-1]), dim=-1).indices
    drop = drop.scatter(-1, keep, False)
    return scores.masked_fill(drop, FILTERED)


def apply_repetition_penalty(
    scores: torch.Tensor, tokens: torch.Tensor, penalty: float, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Penalise every token already present (HF ``RepetitionPenaltyLogitsProcessor``), once per token.

    Positive scores are divided by ``penalty``, negative ones multiplied, so ``penalty > 1`` always makes
    a seen token less likely.

    Args:
        scores: ``[batch, d_vocab]``.
        tokens: ``[batch, pos]`` the sequence so far (prompt included, as HF does for decoder-only models).
        mask: ``[batch, pos]``, 0 at padding; padding tokens are not counted (HF counts them: it has no mask
            here; with no padding both agree).
    """
    d_vocab = scores.shape[-1]
    ids = tokens.clamp(max=d_vocab)  # ids beyond the output vocab go to a spare column, dropped below
    if mask is not None:
        ids = ids.masked_fill(mask == 0, d_vocab)
    seen = torch.zeros(scores.shape[0], d_vocab + 1, dtype=torch.bool, device=scores.device)
    seen.scatter_(1, ids, True)
    penalised = torch.where(scores < 0, scores * penalty, scores / penalty)
    return torch.where(seen[:, :d_vocab], penalised, scores)


def apply_freq_penalty(
    scores: torch.Tensor, tokens: torch.Tensor, penalty: float, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Subtract ``penalty`` times each token's count in the sequence so far (TransformerLens ``freq_penalty``).

    Args:
        scores: ``[batch, d_vocab]``.
        tokens: ``[batch, pos]`` the sequence so far, prompt included (as TransformerLens counts).
        mask: ``[batch, pos]``, 0 at padding (not counted).
    """
    d_vocab = scores.shape[-1]
    ids = tokens.clamp(max=d_vocab)  # ids beyond the output vocab count in a spare column, dropped below
    weight = torch.ones_like(ids, dtype=scores.dtype) if mask is None else mask.to(scores.dtype)
    counts = torch.zeros(scores.shape[0], d_vocab + 1, dtype=scores.dtype, device=scores.device)
    counts.scatter_add_(1, ids, weight)
    return scores - penalty * counts[:, :d_vocab]


def apply_suppress_tokens(scores: torch.Tensor, token_ids: tuple[int, ...]) -> torch.Tensor:
    """-inf at ``token_ids`` in every row (HF ``SuppressTokensLogitsProcessor``; ids outside the vocab are
    ignored, as there)."""
    ids = torch.tensor(token_ids, dtype=torch.long, device=scores.device)
    suppressed = torch.isin(torch.arange(scores.shape[-1], device=scores.device), ids)  # [d_vocab]
    return scores.masked_fill(suppressed, FILTERED)


def apply_begin_suppress_tokens(
    scores: torch.Tensor, token_ids: tuple[int, ...], seq_len: int, begin_index: int
) -> torch.Tensor:
    """-inf at ``token_ids`` only when the sequence so far has ``begin_index`` tokens, i.e. at the first
    generated position when ``begin_index`` is the prompt length (HF ``SuppressTokensAtBeginLogitsProcessor``:
    Whisper must not open a transcript with a blank or end-of-text)."""
    return apply_suppress_tokens(scores, token_ids) if seq_len == begin_index else scores


@dataclass(frozen=True)
class Processing:
    """Which processors run, with their settings (validated by the caller)."""

    do_sample: bool = False
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    freq_penalty: float = 0.0  # TransformerLens's: logits minus freq_penalty x count of each token so far
    min_tokens_to_keep: int = 1
    suppress_tokens: tuple[int, ...] = ()  # never generated (Whisper's generation config)
    begin_suppress_tokens: tuple[int, ...] = ()  # not generated when the sequence has begin_index tokens
    begin_index: int = 0  # the prompt length: begin suppression applies to the first generated token

    @property
    def needs_history(self) -> bool:
        return (self.repetition_penalty is not None and self.repetition_penalty != 1.0) or self.freq_penalty > 0

    @property
    def suppresses(self) -> bool:
        return bool(self.suppress_tokens or self.begin_suppress_tokens)

    @property
    def is_identity(self) -> bool:
        return not self.needs_history and not self.suppresses and not self.do_sample


def process_logits(
    scores: torch.Tensor, p: Processing, tokens: torch.Tensor | None = None, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Apply the processors ``p`` asks for to ``scores [batch, d_vocab]``, in HF ``generate``'s order.

    ``tokens``/``mask`` (``[batch, pos]``) are the sequence so far, needed for the repetition penalty and
    (their length) for ``begin_suppress_tokens``.
    """
    if p.needs_history and tokens is None:
        raise ValueError("the repetition and frequency penalties need the tokens generated so far")
    if p.repetition_penalty is not None and p.repetition_penalty != 1.0:
        scores = apply_repetition_penalty(scores, tokens, p.repetition_penalty, mask)  # type: ignore[arg-type]
    if p.suppress_tokens:
        scores = apply_suppress_tokens(scores, p.suppress_tokens)
    if p.begin_suppress_tokens:
        if tokens is None:
            raise ValueError("begin_suppress_tokens needs the tokens so far (their length)")
        scores = apply_begin_suppress_tokens(scores, p.begin_suppress_tokens, tokens.shape[-1], p.begin_index)
    if not p.do_sample:
        return apply_freq_penalty(scores, tokens, p.freq_penalty, mask) if p.freq_penalty > 0 else scores  # type: ignore[arg-type]
    if p.temperature != 1.0:
        scores = apply_temperature(scores, p.temperature)
    if p.freq_penalty > 0:  # after the temperature, before the filters, as TransformerLens's sample_logits
        scores = apply_freq_penalty(scores, tokens, p.freq_penalty, mask)  # type: ignore[arg-type]
    if p.top_k:
        scores = apply_top_k(scores, p.top_k, p.min_tokens_to_keep)
    if p.top_p is not None and p.top_p < 1.0:
        scores = apply_top_p(scores, p.top_p, p.min_tokens_to_keep)
    if p.min_p is not None:
        scores = apply_min_p(scores, p.min_p, p.min_tokens_to_keep)
    return scores


def sample(scores: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One token per row ``[batch]`` drawn from ``softmax(scores)`` (with ``generator``: reproducible)."""
    probs = scores.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)


def greedy(scores: torch.Tensor) -> torch.Tensor:
    """The highest-scoring token per row ``[batch]`` (first one on ties, like ``torch.argmax`` in HF)."""
    return scores.argmax(dim=-1)
