"""Attention masks as data: which key each query may see, built once per forward and shared by layers.

Masked scores get the dtype's most negative finite value, as HF does, so a query that sees no key
(a left-padding position) gets a uniform pattern instead of NaN.
"""

from __future__ import annotations

import torch


def positions_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Token positions ``[batch, pos]`` that skip left padding: the i-th real token gets position i.

    Mirrors what HF ``generate`` passes as ``position_ids`` (padding positions get 1, then are masked).
    """
    positions = attention_mask.long().cumsum(-1) - 1
    return positions.masked_fill(attention_mask == 0, 1)


def mask_fill_dtype(scores_dtype: torch.dtype, softmax_dtype: torch.dtype | None) -> torch.dtype:
    """The dtype whose most negative value fills masked scores: the softmax's when it is narrower than the
    scores' (a float64 run with a float32 softmax), so a fully masked row stays finite there (no NaN)."""
    if softmax_dtype is not None and torch.finfo(softmax_dtype).bits < torch.finfo(scores_dtype).bits:
        return softmax_dtype
    return scores_dtype


class AttentionMask:
    """Visibility of keys ``[batch, key_pos]`` from queries at absolute indices ``query_index [query_pos]``.

    Args:
        key_valid: ``[batch, key_pos]`` bool, False for padding (or None: every key real).
        query_index: absolute index of each query in the key sequence (with a KV cache, the new tokens).
        key_len: number of keys.
        causal: queries see only keys at or before their own index.
    """

    def __init__(
        self, key_valid: torch.Tensor | None, query_index: torch.Tensor, key_len: int, causal: bool = True
    ) -> None:
        self.key_valid = key_valid
        self.query_index = query_index
        self.key_len = key_len
        self.causal = causal
        self._bias: dict[tuple[int | None, torch.dtype], torch.Tensor] = {}
        self._blind: dict[int | None, bool] = {}

    def to(self, device: torch.device | str) -> AttentionMask:
        """The same mask on another device (accelerate moves block inputs with ``.to``)."""
        key_valid = None if self.key_valid is None else self.key_valid.to(device)
        return AttentionMask(key_valid, self.query_index.to(device), self.key_len, self.causal)

    @property
    def is_plain_causal(self) -> bool:
        """No padding and queries are exactly the keys: SDPA's ``is_causal`` covers it."""
        return self.key_valid is None and self.causal and self.query_index.shape[0] == self.key_len

    def allowed(self, window: int | None) -> torch.Tensor:
        """``[batch or 1, 1, query_pos, key_pos]`` bool: True where the query may attend."""
        key_index = torch.arange(self.key_len, device=self.query_index.device)
        q = self.query_index[:, None]
        ok = torch.ones(q.shape[0], self.key_len, dtype=torch.bool, device=q.device)
        if self.causal:
            ok = ok & (key_index[None, :] <= q)
        if window is not None:
            ok = ok & (q - key_index[None, :] < window)
        ok = ok[None, None]
        if self.key_valid is not None:
            ok = ok & self.key_valid[:, None, None, :].bool()
        return ok

    def has_blind_queries(self, window: int | None) -> bool:
        """Whether some query sees no key at all (a left-padding position; one host sync, then cached).

        Such a row's softmax is uniform over huge negative scores; SDPA's CPU backward recomputes it from a
        log-sum-exp that the fill swamps and gets every weight as 1, not 1/n, so its gradients are wrong
        (10x on a random GPT-2): the attention then takes the explicit path, as HF's eager one.
        """
        if self.key_valid is None:  # every query sees at least itself
            return False
        if window not in self._blind:
            self._blind[window] = not bool(self.allowed(window).any(-1).all())
        return self._blind[window]

    def bias(self, window: int | None, dtype: torch.dtype, fill_dtype: torch.dtype | None = None) -> torch.Tensor:
        """Additive mask ``[batch or 1, 1, query_pos, key_pos]``: 0 where allowed, a huge negative elsewhere.

        The fill is the most negative value of ``fill_dtype`` (default ``dtype``): pass the softmax's
        dtype when it is narrower, so a fully masked row stays finite there (no NaN).
        """
        key = (window, dtype, fill_dtype)
        if key not in self._bias:
            allowed = self.allowed(window)
            zero = torch.zeros((), dtype=dtype, device=allowed.device)
            self._bias[key] = torch.where(allowed, zero, torch.finfo(fill_dtype or dtype).min)
        return self._bias[key]

    def for_sdpa(self, window: int | None, dtype: torch.dtype) -> tuple[torch.Tensor | None, bool]:
        """``(attn_mask, is_causal)`` for ``scaled_dot_product_attention``."""
        if window is not None and window >= self.key_len:
            window = None  # a window longer than the sequence changes nothing
        if window is None and self.is_plain_causal:
            return None, True
        if not self.causal and self.key_valid is None and window is None:
            return None, False
        return self.bias(window, dtype), False


def causal_mask_and_positions(
    attention_mask: torch.Tensor | None, position_ids: torch.Tensor | None, batch: int, n_pos: int, past: int,
    device: torch.device,
) -> tuple[AttentionMask, torch.Tensor, torch.Tensor | None]:
    """The causal mask, positions ``[batch, pos]`` and checked ``attention_mask`` (None when nothing is
    masked) of ``n_pos`` new queries after ``past`` cached keys.

    ``attention_mask`` ``[batch, past + pos]`` (or ``[past + pos]``) is 0 at padding; positions then skip
    left padding (the i-th real token gets position i). An all-ones mask without a cache is dropped, so the
    fused causal kernel runs; a single new query sees every earlier key, so it gets no causal mask.
    """
    n_keys = past + n_pos
    if attention_mask is not None:
        attention_mask = attention_mask[None] if attention_mask.ndim == 1 else attention_mask
        if attention_mask.shape[-1] != n_keys:
            raise ValueError(f"attention_mask covers {attention_mask.shape[-1]} positions, expected {n_keys}")
        if attention_mask.shape[0] != batch:
            raise ValueError(f"attention_mask has {attention_mask.shape[0]} rows for a batch of {batch}")
        if past == 0 and bool(attention_mask.all()):
            attention_mask = None  # nothing masked: keep SDPA's fast causal path (decode steps skip the sync)
    if position_ids is None:
        position_ids = (
            positions_from_mask(attention_mask)[:, past:]
            if attention_mask is not None
            else torch.arange(past, n_keys, device=device)[None].expand(batch, -1)
        )
    elif position_ids.ndim == 1:
        position_ids = position_ids[None].expand(batch, -1)
    mask = AttentionMask(attention_mask, torch.arange(past, n_keys, device=device), n_keys, causal=n_pos > 1)
    return mask, position_ids, attention_mask
