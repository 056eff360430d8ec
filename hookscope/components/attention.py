"""Multi-head attention (MHA / GQA / MQA; self or cross) with every TransformerLens hook point.

One class serves every family. What differs between them is a constructor argument, never a test of
the architecture: GQA head counts, biases (``k_bias=False`` for Whisper), the score scale and whether it
multiplies the query before the dot product (Whisper) or the scores, Gemma 2's soft-capping, per-head
q/k norms (Qwen3), rotary positions, an additive position bias (T5), the softmax dtype and a float32 q.k
(GPT-Neo).
Cross-attention is a call, not a class: keys and values read another sequence, or arrive precomputed
from :meth:`Attention.project_kv` (computed once per encoder output while decoding).

Without hooks on the scores or the pattern it runs ``scaled_dot_product_attention``. A hook that may
edit them (or needs their gradient), soft-capping, or a float64 run that must mirror a float32 softmax
makes the explicit path the one that runs; hooks that only observe (a cache) get the explicit scores and
pattern computed beside the fused kernel, so caching never changes the output. Both paths compute the
same function.
"""

from __future__ import annotations

from collections.abc import Callable

import einops
import torch
import torch.nn.functional as F
from torch import nn

from hookscope.components.masks import AttentionMask, mask_fill_dtype
from hookscope.components.rotary import apply_rotary
from hookscope.components.views import bias_or_zeros, split_heads_in
from hookscope.hooks import HookPoint, hooks_active, hooks_editing

# cos, sin tables [batch, pos, rotary_dim] (or [batch, pos, 1, rotary_dim]), optionally the interleaved flag
Rotary = tuple[torch.Tensor, torch.Tensor] | tuple[torch.Tensor, torch.Tensor, bool]
KV = tuple[torch.Tensor, torch.Tensor]  # keys, values [batch, key_pos, kv_head_index, d_head]


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """``[batch, pos, kv_head, d_head]`` -> ``[batch, pos, kv_head * n_rep, d_head]`` (each KV head repeated)."""
    if n_rep == 1:
        return x
    return torch.repeat_interleave(x, n_rep, dim=2)


def soft_cap(x: torch.Tensor, cap: float) -> torch.Tensor:
    """Gemma 2's ``tanh(x / cap) * cap``."""
    return torch.tanh(x / cap) * cap


def project_heads(x: torch.Tensor, linear: nn.Linear, n_heads: int, d_head: int) -> torch.Tensor:
    """``[batch, pos, head_index, d_head]`` from ``[batch, pos, d_model]``, or from per-head inputs
    ``[batch, pos, head_index, d_model]`` (split-input hooks: each head reads its own copy)."""
    if x.ndim == 4:
        y = torch.einsum("bphm,hme->bphe", x, split_heads_in(linear.weight, n_heads))
        return y if linear.bias is None else y + linear.bias.view(n_heads, d_head)
    return linear(x).view(*x.shape[:2], n_heads, d_head)


def fused_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: AttentionMask,
    *,
    scale: float,
    window: int | None = None,
    position_bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """``scaled_dot_product_attention`` over ``[batch, pos, head_index, d_head]`` q and k, v.

    k and v may have fewer (KV) heads than q (GQA/MQA): the kernel shares them across query heads
    (``enable_gqa``) instead of copying the cache to every query head each step; the result is bitwise
    that of repeating them. ``position_bias [1, head_index, query_pos, key_pos]`` joins the additive mask.
    Returns z ``[batch, query_pos, head_index, d_head]``.
    """
    attn_mask, is_causal = mask.for_sdpa(window, q.dtype)
    if position_bias is not None:
        if is_causal:
            attn_mask, is_causal = mask.bias(window, q.dtype), False
        attn_mask = position_bias if attn_mask is None else position_bias + attn_mask
    z = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
        attn_mask=attn_mask, is_causal=is_causal, scale=scale, enable_gqa=k.shape[2] != q.shape[2],
    )
    return z.transpose(1, 2)


class HeadWeightViews:
    """TransformerLens-shaped views of ``q_proj/k_proj/v_proj/o_proj`` (``nn.Linear``, PyTorch layout).

    Needs ``n_heads``, ``n_kv_heads`` and ``d_head`` attributes; a missing bias reads as zeros.
    """

    n_heads: int
    n_kv_heads: int
    d_head: int
    q_proj: nn.Linear
    k_proj: nn.Linear
    v_proj: nn.Linear
    o_proj: nn.Linear

    @property
    def W_Q(self) -> torch.Tensor:  # [head_index, d_model, d_head]
        return split_heads_in(self.q_proj.weight, self.n_heads)

    @property
    def _W_K(self) -> torch.Tensor:  # [kv_head_index, d_model, d_head]: the stored GQA/MQA key heads
        return split_heads_in(self.k_proj.weight, self.n_kv_heads)

    @property
    def _W_V(self) -> torch.Tensor:  # [kv_head_index, d_model, d_head]
        return split_heads_in(self.v_proj.weight, self.n_kv_heads)

    @property
    def W_K(self) -> torch.Tensor:  # [head_index, d_model, d_head]: each query head's key weights
        return self._per_query_head(self._W_K)

    @property
    def W_V(self) -> torch.Tensor:  # [head_index, d_model, d_head]
        return self._per_query_head(self._W_V)

    def _per_query_head(self, kv: torch.Tensor) -> torch.Tensor:
        """Repeat KV-head tensors to one per query head (as TransformerLens shows GQA weights)."""
        if self.n_kv_heads == self.n_heads:
            return kv
        return kv.repeat_interleave(self.n_heads // self.n_kv_heads, dim=0)

    @property
    def W_O(self) -> torch.Tensor:  # [head_index, d_head, d_model]
        return einops.rearrange(self.o_proj.weight, "m (h e) -> h e m", h=self.n_heads)

    def _bias_view(self, linear: nn.Linear, n: int) -> torch.Tensor:
        return bias_or_zeros(linear.bias, linear.weight).view(n, self.d_head)

    @property
    def b_Q(self) -> torch.Tensor:  # [head_index, d_head]
        return self._bias_view(self.q_proj, self.n_heads)

    @property
    def _b_K(self) -> torch.Tensor:  # [kv_head_index, d_head]
        return self._bias_view(self.k_proj, self.n_kv_heads)

    @property
    def _b_V(self) -> torch.Tensor:  # [kv_head_index, d_head]
        return self._bias_view(self.v_proj, self.n_kv_heads)

    @property
    def b_K(self) -> torch.Tensor:  # [head_index, d_head]
        return self._per_query_head(self._b_K)

    @property
    def b_V(self) -> torch.Tensor:  # [head_index, d_head]
        return self._per_query_head(self._b_V)

    @property
    def b_O(self) -> torch.Tensor:  # [d_model]
        return bias_or_zeros(self.o_proj.bias, self.o_proj.weight)


class Attention(HeadWeightViews, nn.Module):
    """``softmax(q k^T * scale [+ position_bias] + mask) v`` then the output projection.

    Args:
        qkv_bias: the q, k and v projections have biases.
        out_bias: the output projection has a bias.
        k_bias: the key projection's bias when it differs from ``qkv_bias`` (Whisper has none).
        scale: multiplier on ``q . k`` (``d_head ** -0.5`` by default; T5 folds it into its weights: 1).
        prescale_query: multiply the query by ``scale`` before the dot product (after ``hook_q``)
            instead of the scores (HF Whisper's order; it changes the rounding).
        softcap: Gemma 2 attention-logit soft-capping, or None.
        qk_norm: a factory ``d_head -> nn.Module`` for per-head q/k norms (Qwen3), or None.
        softmax_in_float32: compute the pattern in float32 whatever the input dtype (HF Llama-style
            eager attention); False computes it in the scores' dtype (HF BERT, T5, Whisper).
        qk_in_float32: multiply q and k (and scale their product) in float32 whatever the input dtype (HF
            GPT-Neo, GPT-J); the scores then take the wider of float32 and the input dtype (HF adds its
            mask in the model dtype).
        rotary: the model applies rotary positions (the forward gets ``rotary=``): only then are there
            ``hook_rot_q`` / ``hook_rot_k`` points.
        position_bias: the forward gets an additive ``position_bias=`` (T5 self-attention): only then is
            there ``hook_position_bias`` (``[1, head_index, query_pos, key_pos]``).
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        n_kv_heads: int,
        d_head: int,
        *,
        qkv_bias: bool,
        out_bias: bool,
        k_bias: bool | None = None,
        scale: float | None = None,
        prescale_query: bool = False,
        softcap: float | None = None,
        qk_norm: Callable[[int], nn.Module] | None = None,
        softmax_in_float32: bool = True,
        qk_in_float32: bool = False,
        rotary: bool = False,
        position_bias: bool = False,
    ) -> None:
        super().__init__()
        if n_heads % n_kv_heads:
            raise ValueError(f"n_heads ({n_heads}) must be a multiple of n_kv_heads ({n_kv_heads})")
        self.n_heads, self.n_kv_heads, self.d_head = n_heads, n_kv_heads, d_head
        self.scale = d_head**-0.5 if scale is None else scale
        self.prescale_query = prescale_query
        self.softcap = softcap
        self.softmax_dtype: torch.dtype | None = torch.float32 if softmax_in_float32 else None
        self.qk_dtype: torch.dtype | None = torch.float32 if qk_in_float32 else None
        self.q_proj = nn.Linear(d_model, n_heads * d_head, bias=qkv_bias)
        self.k_proj = nn.Linear(d_model, n_kv_heads * d_head, bias=qkv_bias if k_bias is None else k_bias)
        self.v_proj = nn.Linear(d_model, n_kv_heads * d_head, bias=qkv_bias)
        self.o_proj = nn.Linear(n_heads * d_head, d_model, bias=out_bias)
        self.q_norm: nn.Module | None = qk_norm(d_head) if qk_norm else None
        self.k_norm: nn.Module | None = qk_norm(d_head) if qk_norm else None
        self.hook_q = HookPoint()  # [batch, pos, head_index, d_head]
        self.hook_k = HookPoint()  # [batch, key_pos, kv_head_index, d_head]
        self.hook_v = HookPoint()  # [batch, key_pos, kv_head_index, d_head]
        if rotary:  # only models with rotary positions have these points: none that can never fire
            self.hook_rot_q = HookPoint()  # [batch, pos, head_index, d_head]
            self.hook_rot_k = HookPoint()  # [batch, pos, kv_head_index, d_head]
        if position_bias:
            self.hook_position_bias = HookPoint()  # [1, head_index, query_pos, key_pos]
        self.hook_attn_scores = HookPoint()  # [batch, head_index, query_pos, key_pos]
        self.hook_pattern = HookPoint()  # [batch, head_index, query_pos, key_pos]
        self.hook_z = HookPoint()  # [batch, pos, head_index, d_head]
        self.hook_result = HookPoint(opt_in=True)  # [batch, pos, head_index, d_model]
        self._explicit_points = (self.hook_attn_scores, self.hook_pattern)

    # ------------------------------------------------------------------ forward
    def project_kv(self, k_in: torch.Tensor, v_in: torch.Tensor | None = None) -> KV:
        """Keys and values ``[batch, key_pos, kv_head_index, d_head]`` (hooked) of what they read.

        ``k_in`` is ``[batch, key_pos, d_model]`` (or per KV head); ``v_in`` only when the values read
        something else (split-input hooks). Cross-attention calls this once per encoder output and
        passes the pair to :meth:`forward` at every decoding step.
        """
        k = project_heads(k_in, self.k_proj, self.n_kv_heads, self.d_head)
        v = project_heads(k_in if v_in is None else v_in, self.v_proj, self.n_kv_heads, self.d_head)
        return self.hook_k(k), self.hook_v(v)

    def forward(
        self,
        q_in: torch.Tensor,
        kv_in: torch.Tensor | KV,
        mask: AttentionMask,
        *,
        v_in: torch.Tensor | None = None,
        rotary: Rotary | None = None,
        window: int | None = None,
        kv_cache: object | None = None,
        position_bias: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Attention output ``[batch, query_pos, d_model]``.

        Args:
            q_in: what the queries read, ``[batch, query_pos, d_model]`` (or per head, split inputs).
            kv_in: what keys and values read (``q_in`` itself for self-attention, the encoder output for
                cross-attention), or a precomputed ``(k, v)`` from :meth:`project_kv`.
            mask: which keys each query sees.
            v_in: what the values read when it is not ``kv_in`` (per-KV-head split inputs).
            rotary: cos/sin tables for rotary positions. window: sliding-window width, or None.
            kv_cache: with ``update(k, v) -> (k_all, v_all)`` over ``[batch, pos, kv_head, d_head]``
                (generation): earlier positions' keys and values.
            position_bias: ``[1, head_index, query_pos, key_pos]`` added to the scores before the mask.
        """
        q = self.hook_q(project_heads(q_in, self.q_proj, self.n_heads, self.d_head))
        k, v = kv_in if isinstance(kv_in, tuple) else self.project_kv(kv_in, v_in)
        if self.q_norm is not None and self.k_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if rotary is not None:
            q = self.hook_rot_q(apply_rotary(q, *rotary))
            k = self.hook_rot_k(apply_rotary(k, *rotary))
        if kv_cache is not None:
            k, v = kv_cache.update(k, v)  # type: ignore[attr-defined]
        if position_bias is not None:
            position_bias = self.hook_position_bias(position_bias)
        if self.prescale_query:
            q = q * self.scale
        # Hooks that only observe (a cache) leave the numbers as the un-hooked forward's: the fused kernel
        # computes z and the explicit path runs beside it for them, so run_with_cache == forward exactly.
        explicit = self._explicit_points
        # training on left-padded rows: SDPA's backward is wrong for queries that see no key (see the mask)
        blind = torch.is_grad_enabled() and mask.has_blind_queries(window)
        if self.needs_explicit(q.dtype) or blind or hooks_editing(explicit):
            z = self._explicit(q, k, v, mask, window, position_bias)
        else:
            scale = 1.0 if self.prescale_query else self.scale
            z = fused_attention(q, k, v, mask, scale=scale, window=window, position_bias=position_bias)
            if hooks_active(explicit):
                self._explicit(q, k, v, mask, window, position_bias)  # for the observers only
        return self._output(self.hook_z(z))

    def needs_explicit(self, dtype: torch.dtype) -> bool:
        """Whether the fused kernel cannot compute this attention's numbers for activations of ``dtype``:
        soft-capping, or HF's float32 softmax / float32 q.k (mirrored exactly in float64, which is for
        verification, and in half precision) that SDPA would compute in ``dtype`` instead."""
        mirror_fp32_softmax = dtype == torch.float64 and self.softmax_dtype == torch.float32
        mirror_qk = self.qk_dtype is not None and dtype != self.qk_dtype
        return self.softcap is not None or mirror_fp32_softmax or mirror_qk

    def _explicit(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        mask: AttentionMask,
        window: int | None,
        position_bias: torch.Tensor | None,
    ) -> torch.Tensor:
        n_rep = self.n_heads // self.n_kv_heads
        # [batch, head, pos, d_head], multiplied as HF's eager attention does (same rounding in float32)
        q, k, v = q.transpose(1, 2), repeat_kv(k, n_rep).transpose(1, 2), repeat_kv(v, n_rep).transpose(1, 2)
        scale = 1.0 if self.prescale_query else self.scale
        if self.qk_dtype is None:
            scores = torch.matmul(q, k.transpose(2, 3)) * scale  # [batch, head, query_pos, key_pos]
        else:  # HF GPT-J scales in float32 too, before its mask widens the scores to the model dtype
            # keys laid out [batch, head, key_pos, d_head] as HF's cache returns them: a float32 product's
            # rounding depends on the operands' memory layout, which a float64 model would show
            k = k.to(self.qk_dtype, memory_format=torch.contiguous_format)
            scores = torch.matmul(q.to(self.qk_dtype), k.transpose(2, 3)) * scale
            scores = scores.to(torch.promote_types(self.qk_dtype, q.dtype))
        if self.softcap is not None:
            scores = soft_cap(scores, self.softcap)
        if position_bias is not None:
            scores = scores + position_bias
        fill = mask_fill_dtype(scores.dtype, self.softmax_dtype)
        scores = self.hook_attn_scores(scores + mask.bias(window, scores.dtype, fill))
        pattern = F.softmax(scores, dim=-1, dtype=self.softmax_dtype).to(q.dtype)
        pattern = self.hook_pattern(pattern)
        return torch.matmul(pattern, v).transpose(1, 2)  # [batch, pos, head, d_head]

    def _output(self, z: torch.Tensor) -> torch.Tensor:
        """``[batch, pos, head_index, d_head]`` -> ``[batch, pos, d_model]``; per-head ``hook_result`` on request."""
        if self.hook_result.has_hooks:
            result = self.hook_result(torch.einsum("bphe,hem->bphm", z, self.W_O))
            if hooks_editing((self.hook_result,)):
                return result.sum(dim=2) + self.b_O
        return self.o_proj(z.reshape(*z.shape[:2], self.n_heads * self.d_head))
