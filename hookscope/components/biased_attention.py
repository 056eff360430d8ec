"""Attention with an additive score bias and a separate key/value source: T5 self- and cross-attention.

Differs from :class:`~hookscope.components.attention.Attention` in three ways, each an argument:
queries and keys may come from different sequences of different lengths (cross-attention), a
position bias ``[1, head_index, query_pos, key_pos]`` may be added to the scores before the mask, and
the softmax runs in the scores' dtype by default (HF T5's eager attention does; in float64 an fp32
softmax would lose precision). Projections, weight views and hook points are inherited, so
``hook_q/k/v/attn_scores/pattern/z/result`` mean the same thing as in the decoder family.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from hookscope.components.attention import Attention
from hookscope.components.masks import AttentionMask
from hookscope.hooks import HookPoint, hooks_active


class BiasedAttention(Attention):
    """Multi-head attention ``softmax(q k^T * scale + position_bias + mask) v``.

    Args:
        position_bias: whether this layer receives a position bias (and so has ``hook_position_bias``);
            T5 self-attention does, T5 cross-attention does not.
        softmax_fp32: run the softmax in float32 whatever the dtype (HF Llama style) instead of the
            scores' dtype (HF T5 style).
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        d_head: int,
        *,
        bias: bool = False,
        scale: float | None = None,
        position_bias: bool = True,
        softmax_fp32: bool = False,
    ) -> None:
        super().__init__(d_model, n_heads, n_heads, d_head, qkv_bias=bias, out_bias=bias, scale=scale, rotary=False)
        self.softmax_fp32 = softmax_fp32
        self.hook_position_bias: HookPoint | None = HookPoint() if position_bias else None
        # [1, head_index, query_pos, key_pos]

    def masked_score(self, dtype: torch.dtype) -> float:
        """What ``hook_attn_scores`` holds at a masked key (its mask adds the dtype's minimum)."""
        return torch.finfo(dtype).min

    def project_kv(
        self, kv_in: torch.Tensor, v_in: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values ``[batch, key_pos, head_index, d_head]`` (hooked) from ``[batch, key_pos,
        d_model]``
        (or per-head ``[batch, key_pos, head_index, d_model]`` inputs, with ``v_in`` separate)."""
        v_in = kv_in if v_in is None else v_in
        k, v = (
            self._project(kv_in, self.k_proj, self._W_K, self._b_K),
            self._project(v_in, self.v_proj, self._W_V, self._b_V),
        )
        return self.hook_k(k), self.hook_v(v)

    def _project(
        self, x: torch.Tensor, linear: torch.nn.Linear, W: torch.Tensor, b: torch.Tensor
    ) -> torch.Tensor:
        if x.ndim == 4:  # per-head inputs (split-input hooks)
            return torch.einsum("bphm,hme->bphe", x, W) + b
        return linear(x).view(*x.shape[:2], self.n_heads, self.d_head)

    def forward(  # type: ignore[override]
        self,
        q_in: torch.Tensor,
        kv: torch.Tensor | tuple[torch.Tensor, torch.Tensor],
        mask: AttentionMask,
        position_bias: torch.Tensor | None = None,
        kv_cache: object | None = None,
    ) -> torch.Tensor:
        """Attention output ``[batch, query_pos, d_model]``.

        Args:
            q_in: what the queries read, ``[batch, query_pos, d_model]`` (or per head).
            kv: what keys and values read, ``[batch, key_pos, d_model]``; or precomputed ``(k, v)``
                ``[batch, key_pos, head_index, d_head]`` (cached cross-attention keys and values).
            mask: which keys each query sees.
            position_bias: ``[1, head_index, query_pos, key_pos]`` added to the scores before the mask.
            kv_cache: self-attention cache with ``update(k, v) -> (k_all, v_all)`` (generation).
        """
        q = self.hook_q(self._project(q_in, self.q_proj, self.W_Q, self.b_Q))
        k, v = kv if isinstance(kv, tuple) else self.project_kv(kv)
        if kv_cache is not None:
            k, v = kv_cache.update(k, v)  # type: ignore[attr-defined]
        if position_bias is not None and self.hook_position_bias is not None:
            position_bias = self.hook_position_bias(position_bias)
        if (self.softmax_fp32 and q.dtype != torch.float32) or hooks_active(self._explicit_points):
            z = self._explicit_biased(q, k, v, mask, position_bias)
        else:
            z = self._fused_biased(q, k, v, mask, position_bias)
        z = self.hook_z(z)
        if self.hook_result.has_hooks:
            result = self.hook_result(torch.einsum("bphe,hem->bphm", z, self.W_O))
            return result.sum(dim=2) + self.b_O
        return self.o_proj(z.reshape(*z.shape[:2], self.n_heads * self.d_head))

    def _explicit_biased(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        mask: AttentionMask,
        position_bias: torch.Tensor | None,
    ) -> torch.Tensor:
        scores = torch.einsum("bqhe,bkhe->bhqk", q, k) * self.scale  # [batch, head, query_pos, key_pos]
        if position_bias is not None:
            scores = scores + position_bias
        scores = self.hook_attn_scores(scores + mask.bias(None, scores.dtype))
        if self.softmax_fp32:
            pattern = F.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
        else:
            pattern = F.softmax(scores, dim=-1)
        pattern = self.hook_pattern(pattern)
        return torch.einsum("bhqk,bkhe->bqhe", pattern, v)  # [batch, query_pos, head, d_head]

    def _fused_biased(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        mask: AttentionMask,
        position_bias: torch.Tensor | None,
    ) -> torch.Tensor:
        attn_mask, is_causal = mask.for_sdpa(None, q.dtype)
        if position_bias is not None:
            if is_causal:
                attn_mask, is_causal = mask.bias(None, q.dtype), False
            attn_mask = position_bias if attn_mask is None else position_bias + attn_mask
        z = F.scaled_dot_product_attention(
            q.transpose(1, 2),
            k.transpose(1, 2),
            v.transpose(1, 2),
            attn_mask=attn_mask,
            is_causal=is_causal,
            scale=self.scale,
        )
        return z.transpose(1, 2)  # [batch, query_pos, head, d_head]
