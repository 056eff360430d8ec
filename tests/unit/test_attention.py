"""The one attention component against a reference written here from the formula, per argument.

Every family's attention is :class:`hookscope.components.attention.Attention` with its own arguments
(GQA, no key bias, query pre-scaling, soft-capping, an additive position bias, cross-attention, sliding
windows); each is checked on both paths (SDPA without hooks, the explicit one with a pattern hook).
"""

from __future__ import annotations

import math

import pytest
import torch

from hookscope.components.attention import Attention
from hookscope.components.masks import AttentionMask
from tests.helpers import redraw_parameters

D_MODEL, N_HEADS, N_KV, D_HEAD = 11, 6, 2, 5


def reference(
    attn: Attention,
    x_q: torch.Tensor,
    x_kv: torch.Tensor,
    allowed: torch.Tensor,
    position_bias: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Output ``[batch, q, d_model]`` and pattern ``[batch, head, q, k]``, head by head with plain loops."""
    batch, n_q, _ = x_q.shape
    out = torch.zeros(batch, n_q, attn.o_proj.out_features, dtype=x_q.dtype)
    patterns = []
    group = attn.n_heads // attn.n_kv_heads
    for h in range(attn.n_heads):
        rows = slice(h * attn.d_head, (h + 1) * attn.d_head)
        kv_rows = slice((h // group) * attn.d_head, (h // group + 1) * attn.d_head)
        q = x_q @ attn.q_proj.weight[rows].T + (0 if attn.q_proj.bias is None else attn.q_proj.bias[rows])
        k = x_kv @ attn.k_proj.weight[kv_rows].T + (0 if attn.k_proj.bias is None else attn.k_proj.bias[kv_rows])
        v = x_kv @ attn.v_proj.weight[kv_rows].T + (0 if attn.v_proj.bias is None else attn.v_proj.bias[kv_rows])
        scores = q @ k.transpose(1, 2) * attn.scale  # [batch, q, k]
        if attn.softcap is not None:
            scores = attn.softcap * torch.tanh(scores / attn.softcap)
        if position_bias is not None:
            scores = scores + position_bias[0, h]
        scores = scores.masked_fill(~allowed, -math.inf)
        pattern = torch.softmax(scores, dim=-1)
        # a query that sees no key (left padding) gets a uniform pattern, as HF's finite mask fill gives
        pattern = torch.where(allowed.any(-1, keepdim=True), pattern, 1.0 / allowed.shape[-1])
        patterns.append(pattern)
        out += (pattern @ v) @ attn.o_proj.weight[:, rows].T
    if attn.o_proj.bias is not None:
        out += attn.o_proj.bias
    return out, torch.stack(patterns, dim=1)


def make(**kwargs: object) -> Attention:
    args = {"qkv_bias": True, "out_bias": True, "softmax_in_float32": False, **kwargs}
    attn = Attention(D_MODEL, N_HEADS, N_KV, D_HEAD, **args)  # type: ignore[arg-type]
    return redraw_parameters(attn, seed=3).double()


CASES = {
    "gqa_causal": ({}, {"causal": True}),
    "no_key_bias_prescaled_query": ({"k_bias": False, "prescale_query": True}, {"causal": True}),
    "softcap_scale": ({"softcap": 1.5, "scale": 0.7}, {"causal": True}),
    "position_bias_no_biases": ({"qkv_bias": False, "out_bias": False, "scale": 1.0, "position_bias": True},
                                {"causal": False}),
    "padding_and_window": ({}, {"causal": True, "padding": True, "window": 3}),
    "cross": ({"k_bias": False, "prescale_query": True}, {"causal": False, "n_keys": 9, "padding": True}),
}


def _inputs(spec: dict) -> tuple[torch.Tensor, torch.Tensor, AttentionMask, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    batch, n_q = 3, 7
    n_k = spec.get("n_keys", n_q)
    x_q = torch.randn(batch, n_q, D_MODEL, generator=gen, dtype=torch.float64)
    x_kv = x_q if n_k == n_q else torch.randn(batch, n_k, D_MODEL, generator=gen, dtype=torch.float64)
    valid = torch.ones(batch, n_k, dtype=torch.bool)
    if spec.get("padding"):
        valid[1, :2] = False  # left padding in one row
        valid[2, -3:] = False  # right padding in another
    mask = AttentionMask(valid if spec.get("padding") else None, torch.arange(n_q), n_k, causal=spec["causal"])
    allowed = mask.allowed(spec.get("window"))[:, 0].expand(batch, -1, -1)  # [batch, q, k]
    return x_q, x_kv, mask, allowed


@pytest.mark.parametrize("explicit", [False, True], ids=["sdpa", "explicit"])
@pytest.mark.parametrize("case", list(CASES))
def test_attention_matches_the_formula_for_every_argument(case: str, explicit: bool) -> None:
    kwargs, spec = CASES[case]
    attn = make(**kwargs)
    x_q, x_kv, mask, allowed = _inputs(spec)
    pb = None
    if kwargs.get("position_bias"):
        pb = torch.randn(1, N_HEADS, x_q.shape[1], x_kv.shape[1], generator=torch.Generator().manual_seed(2),
                         dtype=torch.float64)
    want, want_pattern = reference(attn, x_q, x_kv, allowed, pb)
    seen: dict[str, torch.Tensor] = {}
    if explicit:
        attn.hook_pattern.add_hook(lambda t, hook: seen.setdefault("pattern", t))
    got = attn(x_q, x_kv, mask, window=spec.get("window"), position_bias=pb)
    attn.hook_pattern.remove_hooks()
    torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-10)
    if explicit:
        torch.testing.assert_close(seen["pattern"], want_pattern, atol=1e-10, rtol=1e-10)


def test_precomputed_keys_and_values_give_the_same_output_as_projecting_them() -> None:
    attn = make(k_bias=False, prescale_query=True)
    x_q, x_kv, mask, _ = _inputs(CASES["cross"][1])
    torch.testing.assert_close(attn(x_q, attn.project_kv(x_kv), mask), attn(x_q, x_kv, mask), atol=0, rtol=0)


def test_per_head_results_sum_to_the_output_and_a_float32_run_matches_float64() -> None:
    attn = make()
    x_q, x_kv, mask, allowed = _inputs(CASES["padding_and_window"][1])
    want, _ = reference(attn, x_q, x_kv, allowed)
    results: list[torch.Tensor] = []
    attn.hook_result.add_hook(lambda t, hook: results.append(t))
    got = attn(x_q, x_kv, mask, window=3)
    attn.hook_result.remove_hooks()
    assert results[0].shape == (3, 7, N_HEADS, D_MODEL)
    torch.testing.assert_close(results[0].sum(dim=2) + attn.o_proj.bias, want, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-10)
    attn32 = attn.float()
    got32 = attn32(x_q.float(), x_q.float(), AttentionMask(mask.key_valid, mask.query_index, 7), window=3)
    torch.testing.assert_close(got32.double(), want, atol=1e-5, rtol=1e-5)


def test_a_hooked_query_is_the_unscaled_projection_when_the_query_is_prescaled() -> None:
    attn = make(k_bias=False, prescale_query=True)
    x_q, x_kv, mask, _ = _inputs(CASES["gqa_causal"][1])
    seen: list[torch.Tensor] = []
    attn.hook_q.add_hook(lambda t, hook: seen.append(t))
    attn(x_q, x_kv, mask)
    attn.hook_q.remove_hooks()
    torch.testing.assert_close(seen[0], attn.q_proj(x_q).view(3, 7, N_HEADS, D_HEAD), atol=0, rtol=0)
    assert attn.k_proj.bias is None and not hasattr(attn, "hook_position_bias")
