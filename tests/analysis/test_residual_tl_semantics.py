"""TransformerLens semantics of the residual helpers that used to give silent wrong numbers.

Each check is against an independent computation: the model's own logits, a by-hand ``F.layer_norm`` /
RMS norm of each row, or the cached hooks summed by hand.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import hookscope
from hookscope.analysis import residual as R
from tests.equivalence import bert_configs
from tests.equivalence.decoder_configs import random_hf_model, random_tokens

EXACT = dict(atol=1e-10, rtol=1e-10)
FP32_NORM = dict(atol=1e-5, rtol=1e-5)  # RMSNorm normalises in float32 even in a float64 model (as HF)


def _model(arch: str) -> hookscope.Decoder:
    return hookscope.load(random_hf_model(arch, torch.float64), dtype=torch.float64)


def _norm_by_hand(model, x: torch.Tensor) -> torch.Tensor:
    """The final norm of ``x`` written out from its parameters (not through hookscope's norm classes)."""
    norm = model.ln_final
    if getattr(norm, "bias", None) is not None:
        return F.layer_norm(x, (x.shape[-1],), norm.weight, norm.bias, norm.eps)
    return x / (x.pow(2).mean(-1, keepdim=True) + norm.eps).sqrt() * norm.weight


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_logit_attrs_applies_the_final_norm_and_sums_to_the_logits(arch: str) -> None:
    model = _model(arch)
    tokens = random_tokens(2, 5)
    with torch.no_grad():
        logits, cache = model.run_with_cache(tokens)
    answer = torch.tensor([7, 40])
    attrs = R.logit_attrs(cache, R.decompose_resid(cache, pos_slice=-1), answer, pos_slice=-1)  # [component, batch]
    bias = getattr(model.ln_final, "bias", None)
    const = (bias @ model.W_U if bias is not None else 0) + model.b_U  # [d_vocab]
    expect = logits[torch.arange(2), -1, answer] - const[answer]
    torch.testing.assert_close(attrs.sum(0), expect, **(EXACT if arch == "gpt2" else FP32_NORM))


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_accumulated_resid_apply_ln_rows_are_the_logit_lens(arch: str) -> None:
    model = _model(arch)
    tokens = random_tokens(3, 6)
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens)
    raw = R.accumulated_resid(cache)  # [row, batch, pos, d_model]
    normed = R.accumulated_resid(cache, apply_ln=True)
    lens = _norm_by_hand(model, raw) @ model.unembed.weight.T + model.b_U  # each row normalised on its own
    torch.testing.assert_close(normed @ model.unembed.weight.T + model.b_U, lens, **FP32_NORM)
    # the rows before the last differ from the last row's scale: the old result would fail here
    assert not torch.allclose(normed[0], R.apply_ln_to_stack(cache, raw)[0], atol=1e-3)


def test_logit_attrs_on_a_position_sliced_stack_keeps_the_component_axis() -> None:
    """batch == pos: a pos_slice applied again would index the batch axis and drop it."""
    model = _model("gpt2")
    tokens = random_tokens(4, 4)
    with torch.no_grad():
        logits, cache = model.run_with_cache(tokens)
    stack = R.decompose_resid(cache, pos_slice=-1)  # [component, batch, d_model]
    attrs = R.logit_attrs(cache, stack, tokens[:, -1], pos_slice=-1)
    assert attrs.shape == (stack.shape[0], 4)
    const = model.ln_final.bias @ model.W_U + model.b_U
    expect = logits[torch.arange(4), -1, tokens[:, -1]] - const[tokens[:, -1]]
    torch.testing.assert_close(attrs.sum(0), expect, **EXACT)
    some = R.decompose_resid(cache, pos_slice=(1, 3))  # a tuple is slice(1, 3), as TransformerLens's Slice
    torch.testing.assert_close(R.logit_attrs(cache, some, tokens[:, 1:3], pos_slice=(1, 3)),
                               R.logit_attrs(cache, R.decompose_resid(cache), tokens)[:, :, 1:3], **EXACT)
    two = R.logit_attrs(cache, stack[:, [0, 2]], tokens[[0, 2], -1], pos_slice=-1, batch_slice=[0, 2])
    assert two.shape == (stack.shape[0], 2)  # batch_slice selects the scales of those rows (stack pre-sliced)


def test_bert_decomposition_is_refused_because_post_ln_is_not_a_sum() -> None:
    bert = hookscope.load(bert_configs.random_hf_model("BertForMaskedLM", torch.float64), dtype=torch.float64)
    tokens, mask, _ = bert_configs.inputs(0)
    with torch.no_grad():
        _, cache = bert.run_with_cache(tokens, attention_mask=mask)
    with pytest.raises(ValueError, match="post-LN"):
        R.decompose_resid(cache)


def test_return_type_none_still_runs_and_caches_the_final_norm() -> None:
    model = _model("llama")
    tokens = random_tokens(2, 5)
    with torch.no_grad():
        out, cache = model.run_with_cache(tokens, return_type=None)
        _, full = model.run_with_cache(tokens)
    assert out is None
    torch.testing.assert_close(cache["ln_final.hook_scale"], full["ln_final.hook_scale"], **EXACT)
    stack = R.decompose_resid(cache)
    torch.testing.assert_close(R.apply_ln_to_stack(cache, stack), R.apply_ln_to_stack(full, stack), **EXACT)


def test_negative_layer_indices() -> None:
    model = _model("gpt2")
    n = model.cfg.n_layers
    with torch.no_grad():
        _, cache = model.run_with_cache(random_tokens(2, 5))
    assert torch.equal(cache["resid_post", -1], cache[f"blocks.{n - 1}.hook_resid_post"])
    assert torch.equal(cache["scale", -2, "ln1"], cache[f"blocks.{n - 2}.ln1.hook_scale"])
    assert ("resid_pre", -1) in cache
    stack = R.decompose_resid(cache)
    assert torch.equal(R.apply_ln_to_stack(cache, stack, layer=-1), R.apply_ln_to_stack(cache, stack))
    assert torch.equal(R.accumulated_resid(cache, layer=-1), R.accumulated_resid(cache))
    assert torch.equal(R.accumulated_resid(cache, layer=-2), R.accumulated_resid(cache, layer=n - 1))
    assert torch.equal(R.stack_head_results(cache, layer=-1), R.stack_head_results(cache, layer=n))
    assert cache.stack_activation("resid_post", -2).shape[0] == n - 1


def test_a_hooks_own_exception_keeps_its_type() -> None:
    model = _model("gpt2")

    class Mine(Exception):
        pass

    def bad(t: torch.Tensor, hook) -> None:
        raise Mine("stop here")

    with pytest.raises(Mine) as info:
        model.run_with_hooks(random_tokens(1, 3), fwd_hooks=[("blocks.1.hook_resid_pre", bad)])
    assert any("blocks.1.hook_resid_pre" in note for note in info.value.__notes__)
    assert model.active_hooks() == {}
