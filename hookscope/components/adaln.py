"""Diffusion conditioning: sinusoidal timestep features, timestep + class embedding, adaLN modulation.

Adaptive LayerNorm ("adaLN-Zero", Peebles & Xie 2023): a conditioning vector ``c [batch, d_model]`` is
mapped through ``Linear(SiLU(c))`` to per-channel shifts, scales and gates; the block normalises without
a learned affine, then applies ``x * (1 + scale) + shift`` and multiplies each sub-layer's output by its
gate before adding it to the residual. Every modulation vector has its own hook point.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from hookscope.hooks import HookPoint


def timestep_features(
    timesteps: torch.Tensor, n_channels: int, *, flip_sin_to_cos: bool = True, freq_shift: float = 1.0,
    max_period: float = 10000.0,
) -> torch.Tensor:
    """Sinusoidal features ``[batch, n_channels]`` of (possibly fractional) timesteps ``[batch]``.

    Frequencies ``exp(-ln(max_period) * k / (half - freq_shift))``, ``k < half``; ``[sin, cos]`` or, with
    ``flip_sin_to_cos``, ``[cos, sin]``. Computed in float32 whatever the model dtype, as diffusers and
    the DDPM/DiT reference code do, so a float64 model sees the same (float32-rounded) features.
    """
    half = n_channels // 2
    exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device)
    freqs = torch.exp(exponent / (half - freq_shift))
    angles = timesteps[:, None].float() * freqs[None, :]  # [batch, half]
    sin, cos = torch.sin(angles), torch.cos(angles)
    feats = torch.cat([cos, sin] if flip_sin_to_cos else [sin, cos], dim=-1)
    if n_channels % 2:
        feats = F.pad(feats, (0, 1))
    return feats


class TimestepClassEmbed(nn.Module):
    """``c = MLP(timestep features) + class_table[label]`` ``[batch, d_model]`` (DiT's conditioning).

    The class table has one more row than there are classes: the "null" label ``n_classes`` used for
    classifier-free guidance.
    """

    def __init__(self, d_model: int, n_classes: int, n_freq: int = 256) -> None:
        super().__init__()
        self.n_freq = n_freq
        self.n_classes = n_classes
        self.time_in = nn.Linear(n_freq, d_model)
        self.time_out = nn.Linear(d_model, d_model)
        self.class_table = nn.Embedding(n_classes + 1, d_model)
        self.hook_time_embed = HookPoint()  # [batch, d_model]
        self.hook_class_embed = HookPoint()  # [batch, d_model]

    def forward(self, timesteps: torch.Tensor, class_labels: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        feats = timestep_features(timesteps, self.n_freq).to(dtype)
        t_emb = self.hook_time_embed(self.time_out(F.silu(self.time_in(feats))))
        y_emb = self.hook_class_embed(self.class_table(class_labels))
        return t_emb + y_emb


class AdaLNModulation(nn.Module):
    """``Linear(SiLU(c))`` split into ``n_chunks`` modulation vectors, each ``[batch, d_model]``.

    The caller fixes what the chunks mean (DiT blocks: shift_msa, scale_msa, gate_msa, shift_mlp,
    scale_mlp, gate_mlp; DiT's final layer: shift, scale) and puts a hook point on each.
    """

    def __init__(self, d_model: int, n_chunks: int) -> None:
        super().__init__()
        self.n_chunks = n_chunks
        self.linear = nn.Linear(d_model, n_chunks * d_model)

    def forward(self, cond: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.linear(F.silu(cond)).chunk(self.n_chunks, dim=1)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``x * (1 + scale) + shift`` with per-sample ``[batch, d_model]`` vectors over ``[batch, pos, d_model]``."""
    return x * (1 + scale[:, None]) + shift[:, None]
