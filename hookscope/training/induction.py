"""Probes for the induction-head phase change (Olsson et al. 2022), on repeated random tokens.

A sequence ``[BOS, r_1..r_n, r_1..r_n]`` of random tokens can only be predicted in its second half by
looking back: an induction head at query position ``n + i`` (the second ``r_i``) attends to key position
``i + 1`` (the token that followed ``r_i`` the first time). These helpers measure exactly that.
"""

from __future__ import annotations

import torch

from hookscope.models.lm_loss import causal_lm_loss


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


@torch.no_grad()
def induction_scores(model: torch.nn.Module, tokens: torch.Tensor, n_tokens: int, offset: int = 1) -> torch.Tensor:
    """``[layer, head]`` induction scores of a hooked model on repeated tokens (see :func:`induction_stripe`)."""
    if tokens.shape[1] != offset + 2 * n_tokens:
        raise ValueError(f"tokens have {tokens.shape[1]} positions; expected {offset} + 2 x {n_tokens}")
    _, cache = model.run_with_cache(tokens, names_filter=lambda name: name.endswith("attn.hook_pattern"))
    return torch.stack([induction_stripe(cache[f"blocks.{i}.attn.hook_pattern"], n_tokens, offset)
                        for i in range(len(model.blocks))])


@torch.no_grad()
def repeated_half_losses(
    model: torch.nn.Module, tokens: torch.Tensor, n_tokens: int, offset: int = 1,
) -> tuple[float, float]:
    """Mean next-token loss predicting the first half and the second (repeated) half.

    The first half is random, so its loss is about ``log(vocab)``; an induction head brings the
    second half's loss far below it (in-context learning).
    """
    per_token = causal_lm_loss(model(tokens), tokens, per_token=True)  # [batch, pos - 1]
    # prediction t scores token t + 1: the first half's tokens are positions offset+1 .. offset+n-1
    first = per_token[:, offset:offset + n_tokens - 1].mean()
    second = per_token[:, offset + n_tokens:].mean()
    return float(first), float(second)
