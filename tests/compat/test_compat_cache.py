"""compat.ActivationCache: TransformerLens's methods, checked by identities in float64 (components sum to the
residual they decompose; attributions sum to the logits) and against hand-computed neuron outputs."""

from __future__ import annotations

import pytest
import torch

from hookscope.compat import ActivationCache
from hookscope.models.decoder import Decoder
from tests.compat.helpers import hf_and_compat
from tests.equivalence.decoder_configs import random_tokens

EXACT = dict(atol=1e-10, rtol=1e-10)
FP32_NORM = dict(atol=1e-5, rtol=1e-5)  # float32 RMSNorm / Gemma post-norms inside a float64 model (as HF)
_RUNS: dict[str, tuple] = {}


def run(arch: str) -> tuple:
    if arch not in _RUNS:
        _, model = hf_and_compat(arch, torch.float64)
        tokens = random_tokens(3, 6)
        with torch.no_grad():
            logits, cache = model.run_with_cache(tokens)
        _RUNS[arch] = (model, tokens, logits, cache)
    return _RUNS[arch]


@pytest.mark.parametrize("arch", ["gpt2", "llama", "neox", "gemma2"])
def test_full_resid_decomposition_sums_to_the_residual(arch: str) -> None:
    model, _, _, cache = run(arch)
    assert isinstance(cache, ActivationCache)
    n = model.cfg.n_layers
    tol = FP32_NORM if arch == "gemma2" else EXACT  # Gemma 2 post-norms normalise in float32
    for expand in (True, False):
        stack, labels = cache.get_full_resid_decomposition(expand_neurons=expand, return_labels=True)
        assert len(labels) == stack.shape[0] and labels[-1] == "bias"
        torch.testing.assert_close(stack.sum(0), cache["resid_post", -1], **tol)
    mid = cache.get_full_resid_decomposition(layer=1, mlp_input=True)
    target = cache["resid_pre", 1] if arch == "neox" else cache["resid_mid", 1]  # parallel MLP reads resid_pre
    torch.testing.assert_close(mid.sum(0), target, **tol)
    assert n > 1


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_neuron_results_are_activation_times_w_out(arch: str) -> None:
    model, _, _, cache = run(arch)
    post = cache["post", 0]  # [batch, pos, d_mlp]
    w_out = model.blocks[0].mlp.W_out  # [d_mlp, d_model]
    some = cache.get_neuron_results(0, neuron_slice=[2, 5], pos_slice=-1)  # [batch, neuron, d_model]
    torch.testing.assert_close(some, post[:, -1, [2, 5], None] * w_out[[2, 5]], **EXACT)
    neurons, labels = cache.stack_neuron_results(1, return_labels=True)
    assert labels[:2] == ["L0N0", "L0N1"] and len(labels) == neurons.shape[0]
    b_out = model.blocks[0].mlp.b_out
    torch.testing.assert_close(neurons.sum(0) + b_out, cache["mlp_out", 0], **EXACT)


def test_logit_attrs_and_lens_through_the_cache_methods() -> None:
    model, tokens, logits, cache = run("gpt2")
    stack = cache.decompose_resid(pos_slice=-1)  # [component, batch, d_model]
    attrs = cache.logit_attrs(stack, tokens[:, -1], pos_slice=-1)
    const = model.ln_final.bias @ model.W_U + model.b_U
    rows = torch.arange(3)
    torch.testing.assert_close(attrs.sum(0), logits[rows, -1, tokens[:, -1]] - const[tokens[:, -1]], **EXACT)
    lens = cache.accumulated_resid(apply_ln=True)
    torch.testing.assert_close(model.unembed(lens[-1]), logits, **EXACT)
    heads = cache.stack_head_results(layer=-1, incl_remainder=True)
    torch.testing.assert_close(heads.sum(0), cache["resid_post", -1], **EXACT)


def test_store_methods() -> None:
    model, tokens, _, cache = run("gpt2")
    assert cache.has_embed and cache.has_pos_embed and set(cache.keys()) == set(cache.cache_dict)
    one = cache.apply_slice_to_batch_dim(1)
    assert not one.has_batch_dim and torch.equal(one["resid_pre", 0], cache["resid_pre", 0][1])
    two = cache.apply_slice_to_batch_dim((0, 2))
    assert two.has_batch_dim and two["resid_pre", 0].shape[0] == 2
    with torch.no_grad():
        _, single = model.run_with_cache(tokens[:1])
    single.remove_batch_dim()  # in place, as TL
    assert not single.has_batch_dim and single["resid_pre", 0].shape == (*tokens[:1].shape[1:], model.cfg.d_model)
    with pytest.raises(AssertionError, match="batch size 3"):
        cache.apply_slice_to_batch_dim(slice(None)).remove_batch_dim()
    assert torch.equal(cache["scale", -1, "ln1"], cache[f"scale{model.cfg.n_layers - 1}ln1"])
    fresh = ActivationCache({k: v for k, v in cache.items() if not k.endswith("hook_result")}, model)
    fresh.compute_head_results()
    z, w_o = cache["z", 1], model.blocks[1].attn.W_O
    torch.testing.assert_close(fresh["result", 1], torch.einsum("bphe,hem->bphm", z, w_o), **EXACT)
    assert torch.equal(cache.stack_activation("resid_pre"), torch.stack([cache["resid_pre", i] for i in range(3)]))
    enabled = torch.is_grad_enabled()
    try:
        cache.toggle_autodiff(False)
        assert not torch.is_grad_enabled()
    finally:
        torch.set_grad_enabled(enabled)


@pytest.mark.skipif(not hasattr(Decoder, "process_weights"), reason="needs Decoder.process_weights (issue 17)")
@pytest.mark.parametrize("arch", ["gpt2", "llama", "neox", "gemma2"])
def test_weight_processing_keeps_log_probs(arch: str) -> None:
    """TL's from_pretrained defaults (fold_ln, centring...) through the native process_weights."""
    hf, model = hf_and_compat(arch, processing=True)
    x = random_tokens(2, 7)
    with torch.no_grad():
        ref = hf(x).logits.log_softmax(-1)
        ours = model(x).log_softmax(-1)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    assert model.cfg.normalization_type == ("LNPre" if arch in ("gpt2", "neox") else "RMSPre")
