"""Probes for the induction-head phase change (Olsson et al. 2022), on repeated random tokens.

A sequence ``[BOS, r_1..r_n, r_1..r_n]`` of random tokens can only be predicted in its second half by
looking back: an induction head at query position ``n + i`` (the second ``r_i``) attends to key position
``i + 1`` (the token that followed ``r_i`` the first time). These helpers measure exactly that.
"""

from __future__ import annotations

import re

import torch

from hookscope.models.lm_loss import causal_lm_loss
from hookscope.training.loop import logits_of


def repeated_random_tokens(
    n_tokens: int, batch: int, vocab: int, seed: int = 0, bos: int | None = None, low: int = 0,
    pool: torch.Tensor | None = None,
) -> torch.Tensor:
    """``[batch, 1 + 2 n]`` rows ``[bos, r, r]`` (no BOS when ``bos`` is None) with ``r`` uniform in [low, vocab),
    or uniform over the ids in ``pool`` (e.g. the tokens the training data actually uses: a token never seen
    in training has an untrained embedding, so no head could recognise it)."""
    gen = torch.Generator().manual_seed(seed)
    if pool is not None:
        half = pool[torch.randint(0, len(pool), (batch, n_tokens), generator=gen)]
    else:
        half = torch.randint(low, vocab, (batch, n_tokens), generator=gen)
    rows = torch.cat([half, half], dim=1)
    if bos is not None:
        rows = torch.cat([torch.full((batch, 1), bos), rows], dim=1)
    return rows


def induction_stripe(pattern: torch.Tensor, n_tokens: int, offset: int) -> torch.Tensor:
    """Mean attention on the induction stripe, per head: ``pattern [batch, head, query, key]`` ->
    ``[head]``. Queries are the second half (``offset + n .. offset + 2n - 1``), each scored on its key
    ``query - n + 1``. ``offset`` is 1 with a BOS in front, else 0."""
    queries = torch.arange(offset + n_tokens, offset + 2 * n_tokens)
    keys = queries - n_tokens + 1
    return pattern[:, :, queries, keys].mean(dim=(0, 2))


def repeat_spans(
    rows: torch.Tensor, fraction: float, *, min_span: int = 8, seed: int = 0, offset: int = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A copy of ``rows`` in which ``fraction`` of the rows repeat a span of their own tokens later on.

    Real text repeats names and phrases within a context, which is what makes an induction head pay; this
    makes such repeats denser. In each picked row (``[n_rows, pos]``), a span of ``s`` tokens (``s`` uniform
    in ``[min_span, (pos - offset) // 2]``) starting at ``a >= offset`` is copied over positions ``b .. b + s
    - 1`` with ``b >= a + s`` (so the copy follows its source). The first ``offset`` positions (BOS) are kept.

    Returns:
        the new rows and a bool ``[n_rows]`` mask of the rows that hold a repeat.
    """
    if rows.ndim != 2:
        raise ValueError(f"rows must be [n_rows, pos], got shape {tuple(rows.shape)}")
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must lie in [0, 1], got {fraction}")
    longest = (rows.shape[1] - offset) // 2
    if min_span < 1 or min_span > longest:
        raise ValueError(f"min_span must lie in [1, {longest}] for rows of {rows.shape[1]} positions "
                         f"(offset {offset}), got {min_span}")
    gen = torch.Generator().manual_seed(seed)
    picked = torch.rand(rows.shape[0], generator=gen) < fraction
    out = rows.clone()
    end = rows.shape[1]
    for i in picked.nonzero().flatten().tolist():
        span = int(torch.randint(min_span, longest + 1, (), generator=gen))
        source = int(torch.randint(offset, end - 2 * span + 1, (), generator=gen))
        dest = int(torch.randint(source + span, end - span + 1, (), generator=gen))
        out[i, dest:dest + span] = rows[i, source:source + span]
    return out, picked


@torch.no_grad()
def induction_scores(model: torch.nn.Module, tokens: torch.Tensor, n_tokens: int, offset: int = 1) -> torch.Tensor:
    """``[layer, head]`` induction scores of a hooked model (native or ``wrap()``'ed) on repeated tokens (see
    :func:`induction_stripe`)."""
    if tokens.shape[1] != offset + 2 * n_tokens:
        raise ValueError(f"tokens have {tokens.shape[1]} positions; expected {offset} + 2 x {n_tokens}")
    pattern = re.compile(r"blocks\.(\d+)\.attn\.hook_pattern")
    _, cache = model.run_with_cache(tokens, names_filter=lambda name: pattern.fullmatch(name) is not None)
    layers = sorted((int(pattern.fullmatch(name).group(1)), name) for name in cache.keys())  # type: ignore[union-attr]
    if not layers:
        raise ValueError("the model records no blocks.{i}.attn.hook_pattern: induction scores need attention patterns")
    return torch.stack([induction_stripe(cache[name], n_tokens, offset) for _, name in layers])


@torch.no_grad()
def repeated_half_losses(
    model: torch.nn.Module, tokens: torch.Tensor, n_tokens: int, offset: int = 1,
) -> tuple[float, float]:
    """Mean next-token loss predicting the first half and the second (repeated) half.

    The first half is random, so its loss is about ``log(vocab)``; an induction head brings the
    second half's loss far below it (in-context learning).
    """
    per_token = causal_lm_loss(logits_of(model(tokens)), tokens, per_token=True)  # [batch, pos - 1]
    # prediction t scores token t + 1: the first half's tokens are positions offset+1 .. offset+n-1
    first = per_token[:, offset:offset + n_tokens - 1].mean()
    second = per_token[:, offset + n_tokens:].mean()
    return float(first), float(second)
