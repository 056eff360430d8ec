"""Helpers for the TransformerLens-shaped weight views the components expose."""

from __future__ import annotations

import torch


def bias_or_zeros(bias: torch.Tensor | None, weight: torch.Tensor) -> torch.Tensor:
    """``bias [d_out]``, or zeros of that shape when the layer has none (TransformerLens always shows one).

    ``weight`` is the layer's ``[d_out, d_in]`` weight: the zeros take its dtype and device.
    """
    return bias if bias is not None else torch.zeros_like(weight[:, 0])


def split_heads_in(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """An input projection ``[n_heads * d_head, d_model]`` as ``[head_index, d_model, d_head]`` (a view)."""
    return weight.unflatten(0, (n_heads, -1)).transpose(1, 2)
