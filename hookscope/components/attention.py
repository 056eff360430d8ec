"""Multi-head attention (MHA / GQA / MQA) with every TransformerLens hook point.

Without hooks inside attention it runs ``scaled_dot_product_attention``; when any internal hook (scores,
pattern, z, result, split inputs) is active, or soft-capping is on, it runs the explicit path. Both
paths compute the same function.
"""

from __future__ import annotations

from collections.abc import Callable

import einops
import torch
import torch.nn.functional as F
from torch import nn

from hookscope.components.masks import AttentionMask
from hookscope.components.rotary import apply_rotary
from hookscope.hooks import HookPoint, hooks_active


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """``[batch, pos, kv_head, d_head]`` -> ``[batch, pos, kv_head * n_rep, d_head]`` (each KV head repeated)."""
    if n_rep == 1:
        return x
    return torch.repeat_interleave(x, n_rep, dim=2)


def soft_cap(x: torch.Tensor, cap: float) -> torch.Tensor:
    """Gemma 2's ``tanh(x / cap) * cap``."""
    return torch.tanh(x / cap) * cap


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
        return einops.rearrange(self.q_proj.weight, "(h e) m -> h m e", h=self.n_heads)

    @property
    def _W_K(self) -> torch.Tensor:  # [kv_head_index, d_model, d_head]: the stored GQA/MQA key heads
        return einops.rearrange(self.k_proj.weight, "(h e) m -> h m e", h=self.n_kv_heads)

    @property
    def _W_V(self) -> torch.Tensor:  # [kv_head_index, d_model, d_head]
        return einops.rearrange(self.v_proj.weight, "(h e) m -> h m e", h=self.n_kv_heads)

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
        if linear.bias is None:
            return torch.zeros(n, self.d_head, dtype=linear.weight.dtype, device=linear.weight.device)
        return linear.bias.view(n, self.d_head)

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
        b = self.o_proj.bias
        return b if b is not None else torch.zeros_like(self.o_proj.weight[:, 0])


class Attention(HeadWeightViews, nn.Module):
    """Self-attention over ``[batch, pos, d_model]`` with optional rotary and per-head q/k norms.

    Args:
        qk_norm: a factory ``d_head -> nn.Module`` for per-head q/k norms (Qwen3), or None.
        scale: multiplier on ``q . k`` (``d_head ** -0.5`` by default).
        softcap: Gemma 2 attention-logit soft-capping, or None.
        softmax_in_float32: compute the pattern in float32 whatever the input dtype (HF Llama-style
            eager attention); False computes it in the input dtype (HF BERT's eager attention).
        rotary: the model applies rotary positions (the forward gets ``rotary=``): only then are there
            ``hook_rot_q`` / ``hook_rot_k`` points.
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
        scale: float | None = None,
        softcap: float | None = None,
        qk_norm: Callable[[int], nn.Module] | None = None,
        softmax_in_float32: bool = True,
        rotary: bool = False,
    ) -> None:
        super().__init__()
        if n_heads % n_kv_heads:
            raise ValueError(f"n_heads ({n_heads}) must be a multiple of n_kv_heads ({n_kv_heads})")
        self.n_heads, self.n_kv_heads, self.d_head = n_heads, n_kv_heads, d_head
        self.scale = d_head**-0.5 if scale is None else scale
        self.softcap = softcap
        self.softmax_dtype: torch.dtype | None = torch.float32 if softmax_in_float32 else None
        self.q_proj = nn.Linear(d_model, n_heads * d_head, bias=qkv_bias)
        self.k_proj = nn.Linear(d_model, n_kv_heads * d_head, bias=qkv_bias)
        self.v_proj = nn.Linear(d_model, n_kv_heads * d_head, bias=qkv_bias)
        self.o_proj = nn.Linear(n_heads * d_head, d_model, bias=out_bias)
        self.q_norm: nn.Module | None = qk_norm(d_head) if qk_norm else None
        self.k_norm: nn.Module | None = qk_norm(d_head) if qk_norm else None
        self.hook_q = HookPoint()  # [batch, pos, head_index, d_head]
        self.hook_k = HookPoint()  # [batch, pos, kv_head_index, d_head]
        self.hook_v = HookPoint()  # [batch, pos, kv_head_index, d_head]
        if rotary:  # only models with rotary positions have these points: none that can never fire
            self.hook_rot_q = HookPoint()  # [batch, pos, head_index, d_head]
            self.hook_rot_k = HookPoint()  # [batch, pos, kv_head_index, d_head]
        self.hook_attn_scores = HookPoint()  # [batch, head_index, query_pos, key_pos]
        self.hook_pattern = HookPoint()  # [batch, head_index, query_pos, key_pos]
        self.hook_z = HookPoint()  # [batch, pos, head_index, d_head]
        self.hook_result = HookPoint(opt_in=True)  # [batch, pos, head_index, d_model]
        self._explicit_points = (self.hook_attn_scores, self.hook_pattern, self.hook_z, self.hook_result)

    def masked_score(self, dtype: torch.dtype) -> float:
        """What ``hook_attn_scores`` holds at a masked key: the minimum of the narrower of the scores'
        dtype and the softmax's (the mask :meth:`_explicit` adds)."""
        narrowest = self.softmax_dtype if self.softmax_dtype is not None else dtype
        return torch.finfo(narrowest if torch.finfo(narrowest).bits < torch.finfo(dtype).bits else dtype).min

    # ------------------------------------------------------------------ forward
    def project_qkv(
        self, q_in: torch.Tensor, k_in: torch.Tensor, v_in: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k, v ``[batch, pos, head, d_head]`` from ``[batch, pos, d_model]`` inputs, or from per-head
        inputs ``[batch, pos, head, d_model]`` (split-input hooks)."""
        if q_in.ndim == 4:
            q = torch.einsum("bphm,hme->bphe", q_in, self.W_Q) + self.b_Q
            k = torch.einsum("bphm,hme->bphe", k_in, self._W_K) + self._b_K
            v = torch.einsum("bphm,hme->bphe", v_in, self._W_V) + self._b_V
            return q, k, v
        b, p = q_in.shape[:2]
        q = self.q_proj(q_in).view(b, p, self.n_heads, self.d_head)
        k = self.k_proj(k_in).view(b, p, self.n_kv_heads, self.d_head)
        v = self.v_proj(v_in).view(b, p, self.n_kv_heads, self.d_head)
        return q, k, v

    def forward(
        self,
        q_in: torch.Tensor,
        k_in: torch.Tensor,
        v_in: torch.Tensor,
        mask: AttentionMask,
        rotary: tuple[torch.Tensor, torch.Tensor] | None = None,
        window: int | None = None,
        kv_cache: object | None = None,
    ) -> torch.Tensor:
        """Attention output ``[batch, pos, d_model]``.

        ``kv_cache`` (generation) must have ``update(k, v) -> (k_all, v_all)`` over ``[batch, pos, kv_head, d_head]``.
        """
        q, k, v = self.project_qkv(q_in, k_in, v_in)
        q, k, v = self.hook_q(q), self.hook_k(k), self.hook_v(v)
        if self.q_norm is not None and self.k_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if rotary is not None:
            q = self.hook_rot_q(apply_rotary(q, *rotary))
            k = self.hook_rot_k(apply_rotary(k, *rotary))
        if kv_cache is not None:
            k, v = kv_cache.update(k, v)  # type: ignore[attr-defined]
        # float64 is for verification: there reproduce HF eager's float32 softmax exactly instead of
        # SDPA's more precise float64 one (they differ by ~1e-7)
        mirror_fp32_softmax = q.dtype == torch.float64 and self.softmax_dtype == torch.float32
        if self.softcap is not None or mirror_fp32_softmax or hooks_active(self._explicit_points):
            z = self._explicit(q, k, v, mask, window)
        else:
            z = self._fused(q, k, v, mask, window)
        z = self.hook_z(z)
        if self.hook_result.has_hooks:
            result = self.hook_result(torch.einsum("bphe,hem->bphm", z, self.W_O))
            return result.sum(dim=2) + self.b_O
        return self.o_proj(z.reshape(*z.shape[:2], self.n_heads * self.d_head))

    def _explicit(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: AttentionMask, window: int | None
    ) -> torch.Tensor:
        n_rep = self.n_heads // self.n_kv_heads
        # [batch, head, pos, d_head], multiplied as HF's eager attention does (same rounding in float32)
        q, k, v = q.transpose(1, 2), repeat_kv(k, n_rep).transpose(1, 2), repeat_kv(v, n_rep).transpose(1, 2)
        scores = torch.matmul(q, k.transpose(2, 3)) * self.scale  # [batch, head, query_pos, key_pos]
        if self.softcap is not None:
            scores = soft_cap(scores, self.softcap)
        narrowest = self.softmax_dtype if self.softmax_dtype is not None else scores.dtype
        fill = narrowest if torch.finfo(narrowest).bits < torch.finfo(scores.dtype).bits else None
        scores = self.hook_attn_scores(scores + mask.bias(window, scores.dtype, fill))
        pattern = F.softmax(scores, dim=-1, dtype=self.softmax_dtype).to(q.dtype)
        pattern = self.hook_pattern(pattern)
        return torch.matmul(pattern, v).transpose(1, 2)  # [batch, pos, head, d_head]

    def _fused(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: AttentionMask, window: int | None
    ) -> torch.Tensor:
        n_rep = self.n_heads // self.n_kv_heads
        k, v = repeat_kv(k, n_rep), repeat_kv(v, n_rep)
        attn_mask, is_causal = mask.for_sdpa(window, q.dtype)
        z = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
            attn_mask=attn_mask, is_causal=is_causal, scale=self.scale,
        )
        return z.transpose(1, 2)  # [batch, pos, head, d_head]
