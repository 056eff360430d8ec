"""Rotary position embeddings as pure functions.

Two pairings of the rotated features exist: HF's "rotate half" (Llama, NeoX, Phi: feature ``i`` turns with
``i + rotary_dim / 2``) and GPT-J's interleaved one (features ``2j`` and ``2j + 1`` turn together). The
pairing is a flag of the tables and of :func:`apply_rotary`, so the query and key keep their source layout
and ``hook_q`` / ``hook_k`` show what the source model computes.

Frequencies and the cos/sin tables are computed in float32 whatever the model dtype, as HF does, so a
float64 model matches HF's float64 model exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class RopeScaling:
    """RoPE frequency scaling. ``kind`` is "linear" or "llama3" (HF ``rope_type``)."""

    kind: str
    factor: float
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192

    def __post_init__(self) -> None:
        if self.kind not in ("linear", "llama3"):
            raise ValueError(f"rope scaling {self.kind!r} is not supported; supported: 'linear', 'llama3'")


def rotary_inv_freq(rotary_dim: int, base: float, scaling: RopeScaling | None = None) -> torch.Tensor:
    """Inverse frequencies ``[rotary_dim // 2]`` in float32 (HF ``compute_default_rope_parameters``)."""
    inv_freq = 1.0 / (base ** (torch.arange(0, rotary_dim, 2, dtype=torch.int64).float() / rotary_dim))
    if scaling is None:
        return inv_freq
    if scaling.kind == "linear":
        return inv_freq / scaling.factor
    return _llama3_inv_freq(inv_freq, scaling)


def _llama3_inv_freq(inv_freq: torch.Tensor, s: RopeScaling) -> torch.Tensor:
    """Llama 3.1's piecewise scaling: long wavelengths slowed by ``factor``, short ones kept, a smooth band between."""
    low_freq_wavelen = s.original_max_position_embeddings / s.low_freq_factor
    high_freq_wavelen = s.original_max_position_embeddings / s.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / s.factor, inv_freq)
    smooth = (s.original_max_position_embeddings / wavelen - s.low_freq_factor) / (
        s.high_freq_factor - s.low_freq_factor
    )
    smoothed = (1 - smooth) * scaled / s.factor + smooth * scaled
    is_medium = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
    return torch.where(is_medium, smoothed, scaled)


def rotary_cos_sin(
    inv_freq: torch.Tensor, positions: torch.Tensor, dtype: torch.dtype, interleaved: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables ``[batch, pos, rotary_dim]`` for integer ``positions [batch, pos]``.

    Frequency ``j`` sits at features ``j`` and ``j + rotary_dim / 2`` (rotate half), or at ``2j`` and
    ``2j + 1`` with ``interleaved`` (GPT-J's ``rotate_every_two``).
    """
    freqs = positions[..., None].float() * inv_freq.to(device=positions.device, dtype=torch.float)
    cos, sin = freqs.cos(), freqs.sin()
    if interleaved:
        cos, sin = cos.repeat_interleave(2, dim=-1), sin.repeat_interleave(2, dim=-1)
    else:
        cos, sin = torch.cat((cos, cos), dim=-1), torch.cat((sin, sin), dim=-1)
    return cos.to(dtype), sin.to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def rotate_every_two(x: torch.Tensor) -> torch.Tensor:
    """``(x0, x1, x2, x3, ...) -> (-x1, x0, -x3, x2, ...)``: GPT-J's pairing of adjacent features."""
    return torch.stack((-x[..., 1::2], x[..., ::2]), dim=-1).flatten(-2)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, interleaved: bool = False) -> torch.Tensor:
    """Rotate the first ``rotary_dim`` features of ``x [batch, pos, head, d_head]``; the rest pass through.

    ``cos``/``sin`` are ``[batch, pos, rotary_dim]`` or already ``[batch, pos, 1, rotary_dim]``, laid out as
    :func:`rotary_cos_sin` makes them for the same ``interleaved``.
    """
    rotary_dim = cos.shape[-1]
    rotate = rotate_every_two if interleaved else rotate_half
    if cos.ndim == 3:  # tables shared by every head (models pass them so, once per forward)
        cos, sin = cos[:, :, None, :], sin[:, :, None, :]  # [batch, pos, 1, rotary_dim]
    if rotary_dim == x.shape[-1]:
        return x * cos + rotate(x) * sin
    x_rot, x_pass = x[..., :rotary_dim], x[..., rotary_dim:]
    return torch.cat((x_rot * cos + rotate(x_rot) * sin, x_pass), dim=-1)
