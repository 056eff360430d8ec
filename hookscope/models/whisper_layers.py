"""Whisper's parts: the convolutional audio stem, its attention (self and cross), and the two block kinds.

Whisper's attention differs from the shared :class:`~hookscope.components.attention.Attention` in ways
that are not choices inside one topology: keys come from another sequence (cross-attention, whose K/V
are computed once per audio clip while decoding), the key projection has no bias while query, value and
output do, and the query is scaled *before* the dot product (HF keeps that order for Whisper; it changes
the rounding). So it is its own small class here; hook names are the shared ones.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from hookscope.components.activations import get_activation
from hookscope.components.attention import HeadWeightViews
from hookscope.components.embed import PosEmbed
from hookscope.components.masks import AttentionMask
from hookscope.components.mlp import MLP
from hookscope.components.norm import LayerNorm
from hookscope.hooks import HookPoint, hooks_active


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


class WhisperAttention(HeadWeightViews, nn.Module):
    """Multi-head attention with ``k_proj`` bias-free and the query pre-scaled by ``d_head ** -0.5``.

    Self-attention calls :meth:`project_kv` on its own input; cross-attention calls it once on the
    encoder output and passes the result to every decoding step.
    """

    def __init__(self, d_model: int, n_heads: int) -> None:
        super().__init__()
        self.n_heads, self.d_head = n_heads, d_model // n_heads
        self.n_kv_heads = n_heads
        self.scale = self.d_head**-0.5
        self.q_proj = nn.Linear(d_model, d_model, bias=True)
        self.k_proj = nn.Linear(d_model, d_model, bias=False)
        self.v_proj = nn.Linear(d_model, d_model, bias=True)
        self.o_proj = nn.Linear(d_model, d_model, bias=True)
        self.hook_q = HookPoint()  # [batch, pos, head_index, d_head]  before scaling
        self.hook_k = HookPoint()  # [batch, key_pos, head_index, d_head]
        self.hook_v = HookPoint()  # [batch, key_pos, head_index, d_head]
        self.hook_attn_scores = HookPoint()  # [batch, head_index, query_pos, key_pos]
        self.hook_pattern = HookPoint()  # [batch, head_index, query_pos, key_pos]
        self.hook_z = HookPoint()  # [batch, pos, head_index, d_head]
        self.hook_result = HookPoint(opt_in=True)  # [batch, pos, head_index, d_model]
        self._explicit_points = (self.hook_attn_scores, self.hook_pattern, self.hook_z, self.hook_result)

    # ------------------------------------------------------------------ forward
    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(*x.shape[:2], self.n_heads, self.d_head)  # [batch, pos, head_index, d_head]

    def project_kv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values ``[batch, key_pos, head_index, d_head]`` of ``x`` (hooked)."""
        return self.hook_k(self._heads(self.k_proj(x))), self.hook_v(self._heads(self.v_proj(x)))

    def masked_score(self, dtype: torch.dtype) -> float:
        """What ``hook_attn_scores`` holds at a masked key (its mask adds the dtype's minimum)."""
        return torch.finfo(dtype).min

    def forward(
        self,
        x: torch.Tensor,
        kv: tuple[torch.Tensor, torch.Tensor] | None,
        mask: AttentionMask,
        kv_cache: Any = None,
    ) -> torch.Tensor:
        """Output ``[batch, pos, d_model]``; ``kv`` is None for self-attention, the encoder's K/V for cross.

        ``kv_cache`` (self-attention while decoding) has ``update(k, v) -> (k_all, v_all)``.
        """
        q = self.hook_q(self._heads(self.q_proj(x)))
        k, v = self.project_kv(x) if kv is None else kv
        if kv_cache is not None:
            k, v = kv_cache.update(k, v)
        q = q * self.scale  # HF scales the query before the dot product
        if hooks_active(self._explicit_points):
            z = self._explicit(q, k, v, mask)
        else:
            attn_mask, is_causal = mask.for_sdpa(None, q.dtype)
            z = F.scaled_dot_product_attention(
                q.transpose(1, 2),
                k.transpose(1, 2),
                v.transpose(1, 2),
                attn_mask=attn_mask,
                is_causal=is_causal,
                scale=1.0,
            ).transpose(1, 2)
        z = self.hook_z(z)  # [batch, pos, head_index, d_head]
        if self.hook_result.has_hooks:
            result = self.hook_result(torch.einsum("bphe,hem->bphm", z, self.W_O))
            return result.sum(dim=2) + self.o_proj.bias
        return self.o_proj(z.reshape(*z.shape[:2], self.n_heads * self.d_head))

    def _explicit(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: AttentionMask
    ) -> torch.Tensor:
        scores = torch.einsum("bqhe,bkhe->bhqk", q, k)  # [batch, head, query_pos, key_pos]
        scores = self.hook_attn_scores(scores + mask.bias(None, scores.dtype))
        pattern = self.hook_pattern(F.softmax(scores, dim=-1))  # in the input dtype, as HF eager
        return torch.einsum("bhqk,bkhe->bqhe", pattern, v)  # [batch, pos, head, d_head]


def _resid_hooks(block: nn.Module) -> None:
    block.hook_resid_pre = HookPoint()  # [batch, pos, d_model]
    block.hook_attn_out = HookPoint()  # [batch, pos, d_model]
    block.hook_resid_mid = HookPoint()  # [batch, pos, d_model]
    block.hook_mlp_in = HookPoint(opt_in=True)  # [batch, pos, d_model]  the residual the MLP's norm reads (= resid_mid)
    block.hook_mlp_out = HookPoint()  # [batch, pos, d_model]
    block.hook_resid_post = HookPoint()  # [batch, pos, d_model]


class EncoderBlock(nn.Module):
    """Pre-LN: ``x + attn(ln1(x))`` (bidirectional), then ``+ mlp(ln2(.))``."""

    def __init__(self, d_model: int, n_heads: int, d_mlp: int, act: str, eps: float) -> None:
        super().__init__()
        self.ln1 = LayerNorm(d_model, eps)
        self.attn = WhisperAttention(d_model, n_heads)
        self.ln2 = LayerNorm(d_model, eps)
        self.mlp = MLP(d_model, d_mlp, act, bias=True)
        _resid_hooks(self)

    def forward(self, x: torch.Tensor, mask: AttentionMask) -> torch.Tensor:
        x = self.hook_resid_pre(x)
        x = self.hook_resid_mid(x + self.hook_attn_out(self.attn(self.ln1(x), None, mask)))
        mlp_out = self.hook_mlp_out(self.mlp(self.ln2(self.hook_mlp_in(x))))
        return self.hook_resid_post(x + mlp_out)


class DecoderBlock(nn.Module):
    """Pre-LN: causal self-attention (ln1), cross-attention to the audio (ln2), MLP (ln3): T5's names."""

    def __init__(self, d_model: int, n_heads: int, d_mlp: int, act: str, eps: float) -> None:
        super().__init__()
        self.ln1 = LayerNorm(d_model, eps)
        self.attn = WhisperAttention(d_model, n_heads)
        self.ln2 = LayerNorm(d_model, eps)
        self.cross_attn = WhisperAttention(d_model, n_heads)
        self.ln3 = LayerNorm(d_model, eps)
        self.mlp = MLP(d_model, d_mlp, act, bias=True)
        _resid_hooks(self)
        self.hook_cross_attn_in = HookPoint()  # [batch, pos, d_model]  the residual cross-attention reads
        self.hook_cross_attn_out = HookPoint()  # [batch, pos, d_model]
        self.hook_resid_mid_cross = HookPoint()  # [batch, pos, d_model]

    def forward(
        self,
        x: torch.Tensor,
        self_mask: AttentionMask,
        cross_kv: tuple[torch.Tensor, torch.Tensor],
        cross_mask: AttentionMask,
        kv_cache: Any = None,
    ) -> torch.Tensor:
        x = self.hook_resid_pre(x)
        x = self.hook_resid_mid(x + self.hook_attn_out(self.attn(self.ln1(x), None, self_mask, kv_cache)))
        cross = self.cross_attn(self.ln2(self.hook_cross_attn_in(x)), cross_kv, cross_mask)
        x = self.hook_resid_mid_cross(x + self.hook_cross_attn_out(cross))
        mlp_out = self.hook_mlp_out(self.mlp(self.ln3(self.hook_mlp_in(x))))
        return self.hook_resid_post(x + mlp_out)
