"""The lean decode path computes exactly what the plain one does (bit for bit), with less work per step."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers.models.llama.modeling_llama import LlamaRMSNorm

import hookscope
from hookscope.components.attention import fused_attention, repeat_kv
from hookscope.components.masks import AttentionMask
from hookscope.components.norm import RMSNorm
from hookscope.generation.kv_cache import KVCache
from tests.equivalence.decoder_configs import random_hf_model, random_tokens


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("d", [64, 384, 576, 1000, 4096])
def test_rmsnorm_fast_path_is_bitwise_hf_llama_rmsnorm(dtype: torch.dtype, d: int) -> None:
    torch.manual_seed(d)
    ours, ref = RMSNorm(d, 1e-6).to(dtype), LlamaRMSNorm(d, eps=1e-6).to(dtype)
    with torch.no_grad():
        ours.weight.normal_()
        ref.weight.copy_(ours.weight)
    x = (torch.randn(3, 7, d) * 4).to(dtype)
    assert torch.equal(ours(x), ref(x))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(1, 6, 2, 1, 50), (2, 4, 1, 7, 7), (3, 9, 3, 5, 19)])
@pytest.mark.parametrize("masking", ["none", "causal", "padding"])
def test_gqa_attention_without_repeated_heads_is_bitwise_the_repeated_one(
    dtype: torch.dtype, shape: tuple[int, ...], masking: str
) -> None:
    batch, n_heads, n_kv, q_len, k_len = shape
    gen = torch.Generator().manual_seed(sum(shape))
    q = torch.randn(batch, q_len, n_heads, 16, generator=gen, dtype=dtype)
    k = torch.randn(batch, k_len, n_kv, 16, generator=gen, dtype=dtype)
    v = torch.randn(batch, k_len, n_kv, 16, generator=gen, dtype=dtype)
    valid = None
    if masking == "padding":
        valid = torch.ones(batch, k_len, dtype=torch.bool)
        valid[0, :2] = False
    mask = AttentionMask(valid, torch.arange(k_len - q_len, k_len), k_len, causal=masking != "none")
    n_rep = n_heads // n_kv
    shared = fused_attention(q, k, v, mask, scale=0.25)
    repeated = fused_attention(q, repeat_kv(k, n_rep), repeat_kv(v, n_rep), mask, scale=0.25)
    assert torch.equal(shared, repeated)


def test_decode_step_attends_without_a_mask_and_equals_the_full_forward(monkeypatch) -> None:
    model = hookscope.load(random_hf_model("llama"))
    tokens = random_tokens(2, 9)
    masks: list[object] = []
    real_sdpa = F.scaled_dot_product_attention

    def spy(*args: object, **kwargs: object) -> torch.Tensor:
        masks.append(kwargs.get("attn_mask"))
        return real_sdpa(*args, **kwargs)

    cache = KVCache.for_model(model, 2, 9)
    with torch.no_grad():
        model(tokens[:, :8], kv_cache=cache)
        monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
        step = model(tokens[:, 8:], kv_cache=cache)[:, -1]
        full = model(tokens)[:, -1]
    assert masks and all(m is None for m in masks)  # one query at the end sees every key
    torch.testing.assert_close(step, full, rtol=1e-5, atol=1e-5)
