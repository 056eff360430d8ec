"""Canonical hooks of wrapped transformers models against HF's own hidden states and attentions."""

from __future__ import annotations

import pytest
import torch

from hookscope.bridge import wrap
from tests.bridge import models as M
from tests.helpers import TOLERANCES, first_divergence

EVERY_CANONICAL = ("blocks.", "encoder.", "decoder.", "ln_final.", "encoder_final_ln.", "decoder_final_ln.")


def _canonical(name: str) -> bool:
    return name.startswith(EVERY_CANONICAL)


def _assert_match(pairs: list[tuple[str, torch.Tensor, torch.Tensor]], dtype: torch.dtype) -> None:
    atol, rtol = TOLERANCES[dtype]
    problem = first_divergence(pairs, atol=atol, rtol=rtol)
    assert problem is None, problem


def _stack_pairs(cache, prefix: str, hidden, attentions, final: str | None, post: str = "hook_resid_post") -> list:
    """resid_pre[i] = hidden[i]; resid_post[i] = hidden[i+1] except the last (HF stores it normed).

    ``post``: the block-output hook (BERT: ``hook_normalized_resid_post``, after the post-LN)."""
    n = len(attentions)
    pairs = [
        (f"{prefix}.{i}.hook_resid_pre", cache[f"{prefix}.{i}.hook_resid_pre"], hidden[i]) for i in range(n)
    ]
    pairs += [
        (f"{prefix}.{i}.{post}", cache[f"{prefix}.{i}.{post}"], hidden[i + 1]) for i in range(n - 1)
    ]
    last = final if final is not None else f"{prefix}.{n - 1}.{post}"
    pairs.append((last, cache[last], hidden[n]))
    pairs += [
        (f"{prefix}.{i}.attn.hook_pattern", cache[f"{prefix}.{i}.attn.hook_pattern"], attentions[i])
        for i in range(n)
    ]
    return pairs


@pytest.mark.parametrize("layout", sorted(M.DECODER_CONFIGS))
def test_decoder_hooks_equal_hf_hidden_states_and_attentions(layout: str) -> None:
    model = M.decoder(layout)
    ids = M.tokens()
    with torch.no_grad():
        ref = model(ids, output_hidden_states=True, output_attentions=True)
        logits, cache = wrap(model).run_with_cache(ids, names_filter=_canonical)
    assert len(ref.attentions) == M.LAYERS
    pairs = _stack_pairs(cache, "blocks", ref.hidden_states, ref.attentions, "ln_final.hook_normalized")
    _assert_match([*pairs, ("logits", logits.logits, ref.logits)], torch.float32)
    # the residual bookkeeping holds: resid_post = resid_pre + attn_out + mlp_out (sequential or parallel)
    for i in range(M.LAYERS):
        total = cache[f"blocks.{i}.hook_resid_pre"] + cache[f"blocks.{i}.hook_attn_out"]
        total = total + cache[f"blocks.{i}.hook_mlp_out"]
        torch.testing.assert_close(total, cache[f"blocks.{i}.hook_resid_post"], atol=1e-5, rtol=1e-5)
        if f"blocks.{i}.hook_resid_mid" in cache:
            mid = cache[f"blocks.{i}.hook_resid_pre"] + cache[f"blocks.{i}.hook_attn_out"]
            torch.testing.assert_close(mid, cache[f"blocks.{i}.hook_resid_mid"], atol=1e-5, rtol=1e-5)


def test_float64_llama_matches_to_1e10() -> None:
    model = M.decoder("llama", dtype=torch.float64)
    ids = M.tokens()
    with torch.no_grad():
        ref = model(ids, output_hidden_states=True, output_attentions=True)
        logits, cache = wrap(model).run_with_cache(ids, names_filter=_canonical)
    pairs = _stack_pairs(cache, "blocks", ref.hidden_states, ref.attentions, "ln_final.hook_normalized")
    _assert_match([*pairs, ("logits", logits.logits, ref.logits)], torch.float64)


def test_bert_post_ln_encoder() -> None:
    model = M.bert()
    ids = M.tokens()
    mask = torch.ones_like(ids)
    mask[0, -2:] = 0  # padding reaches the hooked attention through the mask
    with torch.no_grad():
        ref = model(ids, attention_mask=mask, output_hidden_states=True, output_attentions=True)
        out, cache = wrap(model).run_with_cache(ids, attention_mask=mask, names_filter=_canonical)
    pairs = _stack_pairs(cache, "blocks", ref.hidden_states, ref.attentions, None, "hook_normalized_resid_post")
    _assert_match(
        [*pairs, ("last_hidden_state", out.last_hidden_state, ref.last_hidden_state)], torch.float32
    )
    assert cache["blocks.0.attn.hook_pattern"][0, :, :, -2:].abs().max() == 0


def test_vit_patches() -> None:
    model = M.vit()
    pixels = torch.randn(2, 3, 12, 12, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model(pixels, output_hidden_states=True, output_attentions=True)
        _, cache = wrap(model).run_with_cache(pixels, names_filter=_canonical)
    pairs = _stack_pairs(cache, "blocks", ref.hidden_states, ref.attentions, None)
    pairs.append(("ln_final.hook_normalized", cache["ln_final.hook_normalized"], ref.last_hidden_state))
    _assert_match(pairs, torch.float32)
    assert cache["blocks.0.hook_resid_pre"].shape == (2, 10, M.D)  # 9 patches + class token


@pytest.mark.parametrize("family", ["t5", "whisper"])
def test_encoder_decoder(family: str) -> None:
    model = M.t5() if family == "t5" else M.whisper()
    dec = M.tokens(batch=2, pos=5, seed=3)
    if family == "t5":
        inputs = {"input_ids": M.tokens(batch=2), "decoder_input_ids": dec}
    else:
        inputs = {
            "input_features": torch.randn(2, 8, 12, generator=torch.Generator().manual_seed(0)),
            "decoder_input_ids": dec,
        }
    with torch.no_grad():
        ref = model(**inputs, output_hidden_states=True, output_attentions=True)
        out, cache = wrap(model).run_with_cache(**inputs, names_filter=_canonical)
    pairs = _stack_pairs(
        cache,
        "encoder",
        ref.encoder_hidden_states,
        ref.encoder_attentions,
        "encoder_final_ln.hook_normalized",
    )
    pairs += _stack_pairs(
        cache,
        "decoder",
        ref.decoder_hidden_states,
        ref.decoder_attentions,
        "decoder_final_ln.hook_normalized",
    )
    pairs += [
        (f"decoder.{i}.cross_attn.hook_pattern", cache[f"decoder.{i}.cross_attn.hook_pattern"], a)
        for i, a in enumerate(ref.cross_attentions)
    ]
    _assert_match([*pairs, ("logits", out.logits, ref.logits)], torch.float32)


def test_stop_at_a_block_returns_its_output_and_runs_nothing_later() -> None:
    model = M.decoder("gpt2")
    ids = M.tokens()
    calls: list[int] = []
    for i, block in enumerate(model.transformer.h):
        block.register_forward_pre_hook(lambda mod, args, i=i: calls.append(i))
    with torch.no_grad():
        hidden = model(ids, output_hidden_states=True).hidden_states
        calls.clear()
        # transformers may keep its own output-recording hooks: count ours as the difference
        before = [len(m._forward_hooks) for m in model.transformer.h]
        stopped = wrap(model)(ids, stop_at="transformer.h.1")
    assert calls == [0, 1]
    torch.testing.assert_close(stopped, hidden[2], atol=1e-5, rtol=1e-5)
    assert [len(m._forward_hooks) for m in model.transformer.h] == before  # the stop hook is gone


def test_mapping_report_names_what_is_missing() -> None:
    neox = wrap(M.decoder("gpt_neox"))
    report = neox.mapping_report()
    assert "blocks.{i}.hook_resid_mid: not mapped (only when config.use_parallel_residual == False)" in report
    assert "blocks.{i}.attn.hook_q: not mapped" in report
    assert "blocks.2.attn.hook_rot_q" in neox.hook_dict and "blocks.2.attn.hook_q" not in neox.hook_dict
    llama = wrap(M.decoder("llama"))
    assert llama.canonical_names()["blocks.1.hook_resid_pre"] == "model.layers.1.hook_in"
    assert llama.canonical_names()["ln_final.hook_normalized"] == "model.norm"
    assert "not mapped" not in llama.mapping_report()
    unknown = wrap(torch.nn.Sequential(torch.nn.Linear(3, 3)))
    assert unknown.layout is None and "module path only" in unknown.mapping_report()
    assert unknown.canonical_names() == {}
