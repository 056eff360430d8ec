"""Attention internals through the attention-function registry: exact, editable, and only when asked."""

from __future__ import annotations

import pytest
import torch
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from hookscope.bridge import wrap
from hookscope.hooks import HookError
from tests.bridge import models as M


def test_sdpa_is_kept_unless_an_attention_internal_is_hooked() -> None:
    model = M.decoder("llama", attn="sdpa")
    wrapped = wrap(model)
    ids = M.tokens()
    seen: list[str] = []

    def record_impl(t: torch.Tensor, hook) -> None:
        seen.append(model.config._attn_implementation)

    wrapped.run_with_hooks(ids, fwd_hooks=[("blocks.0.hook_resid_post", record_impl)])
    wrapped.run_with_hooks(ids, fwd_hooks=[("blocks.0.attn.hook_pattern", record_impl)])
    assert seen == ["sdpa", "hookscope"]
    assert model.config._attn_implementation == "sdpa"
    with pytest.raises(ZeroDivisionError), wrapped.hooks([("blocks.1.attn.hook_z", lambda t, hook: 1 / 0)]):
        wrapped(ids)
    assert model.config._attn_implementation == "sdpa" and wrapped.active_hooks() == {}


def test_t5_stacks_switch_and_restore_their_own_configs() -> None:
    model = M.t5(attn="sdpa")
    configs = {id(model.encoder.config), id(model.decoder.config), id(model.config)}
    assert len(configs) == 3  # T5 stacks hold copies of the config
    wrapped = wrap(model)
    impls: list[str] = []
    hook = (
        "encoder.0.attn.hook_pattern",
        lambda t, hook: impls.append(model.encoder.config._attn_implementation),
    )
    wrapped.run_with_hooks(
        input_ids=M.tokens(batch=2), decoder_input_ids=M.tokens(batch=2, pos=3), fwd_hooks=[hook]
    )
    assert impls == ["hookscope"]
    for cfg in (model.config, model.encoder.config, model.decoder.config):
        assert cfg._attn_implementation == "sdpa"


def test_hooked_attention_output_equals_sdpa_output() -> None:
    model = M.decoder("qwen3", attn="sdpa")
    ids = M.tokens()
    with torch.no_grad():
        ref = model(ids).logits
        out, cache = wrap(model).run_with_cache(ids, names_filter=lambda n: "attn.hook_" in n)
    assert cache["blocks.0.attn.hook_pattern"].shape == (M.BATCH, M.HEADS, M.POS, M.POS)
    torch.testing.assert_close(out.logits, ref, atol=1e-5, rtol=1e-5)


def test_gqa_shapes_and_z_equals_pattern_times_v() -> None:
    model = M.decoder("mistral")
    _, cache = wrap(model).run_with_cache(M.tokens(), names_filter=lambda n: n.startswith("blocks.1.attn."))
    q, k, v = (cache[f"blocks.1.attn.hook_{x}"] for x in ("rot_q", "rot_k", "v"))
    assert q.shape == (M.BATCH, M.POS, M.HEADS, M.D_HEAD)
    assert k.shape == v.shape == (M.BATCH, M.POS, M.KV, M.D_HEAD)
    pattern, z = cache["blocks.1.attn.hook_pattern"], cache["blocks.1.attn.hook_z"]
    # brute force: query head h reads kv head h // (heads / kv_heads)
    for h in range(M.HEADS):
        kv = h // (M.HEADS // M.KV)
        torch.testing.assert_close(z[:, :, h], pattern[:, h] @ v[:, :, kv], atol=1e-6, rtol=1e-5)
        scores = q[:, :, h] @ k[:, :, kv].transpose(1, 2) / M.D_HEAD**0.5
        allowed = torch.ones(M.POS, M.POS).tril().triu(-3).bool()  # causal, sliding window 4
        expected = scores.masked_fill(~allowed, float("-inf")).softmax(-1)
        torch.testing.assert_close(pattern[:, h], expected, atol=1e-6, rtol=1e-5)


def test_pre_rotary_q_rotates_into_rot_q() -> None:
    model = M.decoder("llama")
    ids = M.tokens()
    _, cache = wrap(model).run_with_cache(ids, names_filter=lambda n: n.startswith("blocks.0.attn."))
    positions = torch.arange(M.POS).expand(M.BATCH, -1)
    cos, sin = model.model.rotary_emb(cache["blocks.0.attn.hook_q"], positions)
    q, k = (cache[f"blocks.0.attn.hook_{x}"].transpose(1, 2) for x in ("q", "k"))
    rot_q, rot_k = apply_rotary_pos_emb(q, k, cos, sin)
    torch.testing.assert_close(rot_q.transpose(1, 2), cache["blocks.0.attn.hook_rot_q"], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(rot_k.transpose(1, 2), cache["blocks.0.attn.hook_rot_k"], atol=1e-6, rtol=1e-5)


def test_zero_ablating_a_head_matches_zeroing_its_slice_of_o_proj_input() -> None:
    model = M.decoder("gemma2")
    ids = M.tokens()
    wrapped = wrap(model)

    def kill_head_2_z(z: torch.Tensor, hook) -> torch.Tensor:
        z = z.clone()
        z[:, :, 2] = 0
        return z

    def kill_head_2_o_in(x: torch.Tensor, hook) -> torch.Tensor:
        x = x.clone()
        x[..., 2 * M.D_HEAD : 3 * M.D_HEAD] = 0
        return x

    with torch.no_grad():
        clean = wrapped(ids).logits
        by_z = wrapped.run_with_hooks(ids, fwd_hooks=[("blocks.1.attn.hook_z", kill_head_2_z)]).logits
        by_module = wrapped.run_with_hooks(
            ids, fwd_hooks=[("model.layers.1.self_attn.o_proj.hook_in", kill_head_2_o_in)]
        ).logits
    assert (by_z - clean).abs().max() > 1e-3
    torch.testing.assert_close(by_z, by_module, atol=1e-5, rtol=1e-5)


def test_pattern_replacement_reaches_the_output() -> None:
    model = M.decoder("gpt2")
    ids = M.tokens()
    wrapped = wrap(model)

    def uniform_causal(p: torch.Tensor, hook) -> torch.Tensor:
        causal = torch.ones(M.POS, M.POS).tril()
        return (causal / causal.sum(-1, keepdim=True)).expand_as(p).contiguous()

    with torch.no_grad():
        _, cache = wrapped.run_with_cache(
            ids, names_filter=["blocks.0.attn.hook_v", "blocks.0.hook_attn_out"]
        )
        with wrapped.hooks([("blocks.0.attn.hook_pattern", uniform_causal)]):
            _, edited_cache = wrapped.run_with_cache(ids, names_filter=["blocks.0.hook_attn_out"])
    v = cache["blocks.0.attn.hook_v"]  # [batch, pos, head, d_head]
    causal = torch.ones(M.POS, M.POS).tril()
    z = torch.einsum("qk,bkhd->bqhd", causal / causal.sum(-1, keepdim=True), v).flatten(2)
    attn = model.transformer.h[0].attn
    expected = attn.c_proj(z.contiguous())
    torch.testing.assert_close(edited_cache["blocks.0.hook_attn_out"], expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(edited_cache["blocks.0.hook_attn_out"], cache["blocks.0.hook_attn_out"])


def test_resid_mid_is_observe_only_on_pre_norm_layouts() -> None:
    wrapped = wrap(M.decoder("llama"))
    with pytest.raises(HookError, match="observe-only"):
        wrapped.run_with_hooks(M.tokens(), fwd_hooks=[("blocks.0.hook_resid_mid", lambda t, hook: t * 0)])
    with pytest.raises(HookError, match="backward hooks are refused"):
        wrapped.add_hook("blocks.0.hook_resid_mid", lambda g, hook: None, dir="bwd")
    assert wrapped.active_hooks() == {}
