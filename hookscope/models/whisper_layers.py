"""Whisper's parts: the convolutional audio stem, its attention settings, and the two block kinds.

Whisper's attention is the shared :class:`~hookscope.components.attention.Attention` with Whisper's
arguments (no key bias, the query scaled before the dot product); cross-attention reads K/V computed
once per audio clip (:meth:`~hookscope.components.attention.Attention.project_kv`). Hook names are the
shared ones.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from hookscope.components.activations import get_activation
from hookscope.components.attention import Attention
from hookscope.components.block_hooks import add_block_hooks, attend
from hookscope.components.embed import PosEmbed
from hookscope.components.masks import AttentionMask
from hookscope.components.mlp import MLP
from hookscope.components.norm import LayerNorm
from hookscope.hooks import HookPoint


class AudioEmbed(nn.Module):
    """Log-mel ``[batch, n_mels, frames]`` -> residual stream ``[batch, pos, d_model]``.

    ``act(conv1)``, then ``act(conv2)`` (stride 2, halving the frames), then sinusoidal positions (stored
    as a frozen weight, as HF and CTranslate2 store them).
    """

    def __init__(self, n_mels: int, d_model: int, n_ctx: int, act: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(n_mels, d_model, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(d_model, d_model, kernel_size=3, stride=2, padding=1)
        self.pos_embed = PosEmbed(n_ctx, d_model)
        self.pos_embed.weight.requires_grad_(False)  # fixed sinusoids, as in HF
        self.act = get_activation(act)
        self.n_ctx = n_ctx
        self.hook_conv1 = HookPoint()  # [batch, frame, d_model]  after the activation
        self.hook_conv2 = HookPoint()  # [batch, pos, d_model]  after the activation
        self.hook_pos_embed = HookPoint()  # [batch, pos, d_model]

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        n_mels = self.conv1.in_channels
        if features.ndim != 3 or features.shape[1] != n_mels or features.shape[-1] != 2 * self.n_ctx:
            raise ValueError(
                f"Whisper's encoder reads log-mel features [batch, {n_mels}, {2 * self.n_ctx}] ({n_mels} mel "
                f"bins, 30 s padded), got shape {tuple(features.shape)}; use hookscope.audio.log_mel() to "
                "make them"
            )
        h1 = self.hook_conv1(self.act(self.conv1(features)).transpose(1, 2))  # [batch, frame, d_model]
        h2 = self.hook_conv2(
            self.act(self.conv2(h1.transpose(1, 2))).transpose(1, 2)
        )  # [batch, pos, d_model]
        positions = torch.arange(self.n_ctx, device=features.device)
        pos = self.hook_pos_embed(self.pos_embed(positions)[None].expand(h2.shape[0], -1, -1))
        return h2 + pos


def _attention(d_model: int, n_heads: int) -> Attention:
    """Whisper's attention: no key bias (query, value and output have one), and the query is scaled by
    ``d_head ** -0.5`` before the dot product (HF's order: it changes the rounding); softmax in the input
    dtype, as HF's eager attention. ``hook_q`` sees the query before that scaling."""
    return Attention(
        d_model, n_heads, n_heads, d_model // n_heads, qkv_bias=True, k_bias=False, out_bias=True,
        prescale_query=True, softmax_in_float32=False,
    )


class EncoderBlock(nn.Module):
    """Pre-LN: ``x + attn(ln1(x))`` (bidirectional), then ``+ mlp(ln2(.))``."""

    def __init__(self, d_model: int, n_heads: int, d_mlp: int, act: str, eps: float) -> None:
        super().__init__()
        self.ln1 = LayerNorm(d_model, eps)
        self.attn = _attention(d_model, n_heads)
        self.ln2 = LayerNorm(d_model, eps)
        self.mlp = MLP(d_model, d_mlp, act, bias=True)
        add_block_hooks(self, split_inputs=False)

    def forward(self, x: torch.Tensor, mask: AttentionMask) -> torch.Tensor:
        x = self.hook_resid_pre(x)
        x = self.hook_resid_mid(x + self.hook_attn_out(attend(self, self.ln1(x), mask)))
        mlp_out = self.hook_mlp_out(self.mlp(self.ln2(self.hook_mlp_in(x))))
        return self.hook_resid_post(x + mlp_out)


class DecoderBlock(nn.Module):
    """Pre-LN: causal self-attention (ln1), cross-attention to the audio (ln2), MLP (ln3): T5's names."""

    def __init__(self, d_model: int, n_heads: int, d_mlp: int, act: str, eps: float) -> None:
        super().__init__()
        self.ln1 = LayerNorm(d_model, eps)
        self.attn = _attention(d_model, n_heads)
        self.ln2 = LayerNorm(d_model, eps)
        self.cross_attn = _attention(d_model, n_heads)
        self.ln3 = LayerNorm(d_model, eps)
        self.mlp = MLP(d_model, d_mlp, act, bias=True)
        add_block_hooks(self, split_inputs=False, cross_attention=True)

    def forward(
        self,
        x: torch.Tensor,
        self_mask: AttentionMask,
        cross_kv: tuple[torch.Tensor, torch.Tensor],
        cross_mask: AttentionMask,
        kv_cache: Any = None,
    ) -> torch.Tensor:
        x = self.hook_resid_pre(x)
        x = self.hook_resid_mid(x + self.hook_attn_out(attend(self, self.ln1(x), self_mask, kv_cache=kv_cache)))
        cross = self.cross_attn(self.ln2(self.hook_cross_attn_in(x)), cross_kv, cross_mask)
        x = self.hook_resid_mid_cross(x + self.hook_cross_attn_out(cross))
        mlp_out = self.hook_mlp_out(self.mlp(self.ln3(self.hook_mlp_in(x))))
        return self.hook_resid_post(x + mlp_out)
