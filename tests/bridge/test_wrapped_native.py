"""A wrapped HF model and the native model built from it give the same cache, name for name."""

from __future__ import annotations

import torch

import hookscope
from tests.equivalence.decoder_configs import random_hf_model, random_tokens


def test_wrapped_cache_equals_native_cache() -> None:
    hf = random_hf_model("llama")
    native = hookscope.load(hf)
    wrapped = hookscope.wrap(hf)
    tokens = random_tokens(2, 6)
    names = [n for n in wrapped.hook_dict if n.startswith("blocks.") and n in native.hook_dict
             and any(k in n for k in ("hook_resid", "hook_attn_out", "hook_mlp_out", "hook_pattern", "hook_z"))]
    assert len(names) >= 6 * native.cfg.n_layers
    _, ours = native.run_with_cache(tokens, names_filter=names)
    _, theirs = wrapped.run_with_cache(tokens, names_filter=names)
    for n in names:
        torch.testing.assert_close(theirs[n], ours[n], atol=1e-5, rtol=1e-5, msg=n)


def test_lens_and_partial_forward_on_a_wrapped_model() -> None:
    hf = random_hf_model("gpt2")
    wrapped = hookscope.wrap(hf)
    tokens = random_tokens(1, 5)
    names = [f"blocks.{i}.hook_resid_post" for i in range(3)]
    result = hookscope.logit_lens(wrapped, tokens, names=names, decoder=["transformer.ln_f", "lm_head"])
    with torch.no_grad():
        ref = hf(tokens).logits[0].softmax(-1)
    torch.testing.assert_close(result.top_probs[-1, :, 0], ref.max(-1).values, atol=1e-5, rtol=1e-5)
    acts = hookscope.partial_forward(wrapped, tokens, ["blocks.1.hook_resid_post"])
    assert acts["blocks.1.hook_resid_post"].shape == (1, 5, 48)
