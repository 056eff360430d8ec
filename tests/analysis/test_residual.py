"""Residual decomposition and direct logit attribution (hookscope.analysis.residual) on float64 random models.

The identities checked are independent of the code under test: cached hook tensors summed by hand, the
model's own logits, a by-hand norm + unembedding of the cached final residual, and hookscope.logit_lens.
"""

from __future__ import annotations

import types

import pytest
import torch

import hookscope
from hookscope.analysis import residual as R
from hookscope.components.attention import soft_cap
from hookscope.components.norm import LayerNorm, OffsetRMSNorm
from tests.equivalence.decoder_configs import random_hf_model, random_tokens

EXACT = dict(atol=1e-10, rtol=1e-10)
# HF (and hookscope, to match it) normalises RMSNorm in float32 even in a float64 model, so the model's
# own outputs after an RMSNorm carry float32 rounding; compared to them, the float64 sums agree to this.
FP32_NORM = dict(atol=1e-5, rtol=1e-5)
ARCHS = ["gpt2", "llama", "neox", "gemma2"]
_MODELS: dict[str, tuple] = {}


def run(name: str) -> tuple:
    """(model, tokens, logits, cache) for a float64 random model, every non-opt-in hook cached."""
    if name not in _MODELS:
        model = hookscope.load(random_hf_model(name, torch.float64), dtype=torch.float64)
        tokens = random_tokens(3, 6)
        with torch.no_grad():
            logits, cache = model.run_with_cache(tokens)
        _MODELS[name] = (model, tokens, logits, cache)
    return _MODELS[name]


def final_head(model, resid: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Pre-softcap logits by hand: the final norm of ``resid`` with a given scale, then ``W_U``, ``b_U``."""
    norm = model.ln_final
    if isinstance(norm, LayerNorm):
        normed = (resid - resid.mean(-1, keepdim=True)) / scale * norm.weight + norm.bias
    elif isinstance(norm, OffsetRMSNorm):
        normed = resid / scale * (1.0 + norm.weight.float()).double()
    else:
        normed = resid / scale * norm.weight
    return normed @ model.unembed.weight.T + model.b_U


def direct_logits(model, cache, tokens_ids: list[int]) -> torch.Tensor:
    """Summed direct logit attributions + final-norm bias and b_U, for each id: ``[batch, pos, len(ids)]``."""
    stack = R.decompose_resid(cache)  # logit_attrs applies the final norm itself, as TransformerLens
    bias = model.ln_final.bias if getattr(model.ln_final, "bias", None) is not None else 0.0
    cols = []
    for t in tokens_ids:
        attrs = R.logit_attrs(cache, stack, t)  # [component, batch, pos]
        const = (bias * model.W_U[:, t]).sum() if torch.is_tensor(bias) else 0.0
        cols.append(attrs.sum(0) + const + model.b_U[t])
    return torch.stack(cols, -1)


@pytest.mark.parametrize("arch", ARCHS)
def test_decompose_resid_sums_to_the_residual(arch: str) -> None:
    model, _, _, cache = run(arch)
    n = model.cfg.n_layers
    for layer in [*range(1, n), None]:
        stack, labels = R.decompose_resid(cache, layer, return_labels=True)
        name = f"blocks.{layer}.hook_resid_pre" if layer is not None else f"blocks.{n - 1}.hook_resid_post"
        target = cache[name]
        torch.testing.assert_close(stack.sum(0), target, **EXACT)
        assert len(labels) == stack.shape[0] and labels[-1] == f"{(layer or n) - 1}_mlp_out"
    assert labels[:2] == (["embed", "pos_embed"] if arch == "gpt2" else ["embed", "0_attn_out"])
    mid, mid_labels = R.decompose_resid(cache, 1, mlp_input=True, return_labels=True)
    sequential = arch != "neox"  # a parallel block's MLP reads hook_resid_pre
    expect = cache["blocks.1.hook_resid_mid"] if sequential else cache["blocks.1.hook_resid_pre"]
    torch.testing.assert_close(mid.sum(0), expect, **EXACT)
    assert (mid_labels[-1] == "1_attn_out") == sequential
    attn = R.decompose_resid(cache, mode="attn", incl_embeds=False)
    torch.testing.assert_close(attn.sum(0), sum(cache[f"blocks.{i}.hook_attn_out"] for i in range(n)), **EXACT)


@pytest.mark.parametrize("arch", ARCHS)
def test_head_results_sum_to_attn_out(arch: str) -> None:
    model, _, _, cache = run(arch)
    n, h = model.cfg.n_layers, model.cfg.n_heads
    heads, labels = R.stack_head_results(cache, return_labels=True)
    assert heads.shape == (n * h, *cache["blocks.0.hook_attn_out"].shape)
    assert labels[:2] == ["L0H0", "L0H1"] and labels[-1] == f"L{n - 1}H{h - 1}"
    # Gemma 2: heads pass through ln1_post linearly; the model normalises the summed heads in float32
    tol = FP32_NORM if arch == "gemma2" else EXACT
    for i in range(n):
        torch.testing.assert_close(heads[i * h:(i + 1) * h].sum(0) + model.blocks[i].attn.b_O,
                                   cache[f"blocks.{i}.hook_attn_out"], **tol)
    two, rest = R.stack_head_results(cache, layer=2, incl_remainder=True, return_labels=True)
    assert two.shape[0] == 2 * h + 1 and rest[-1] == "remainder"
    torch.testing.assert_close(two.sum(0), cache["blocks.2.hook_resid_pre"], **EXACT)


def test_head_results_read_hook_result_when_cached() -> None:
    model, tokens, _, cache = run("llama")
    with torch.no_grad():
        _, with_result = model.run_with_cache(tokens, names_filter=lambda name: name.endswith(("hook_result", "z")))
    assert "blocks.0.attn.hook_result" in with_result
    del with_result._store["blocks.0.attn.hook_z"]  # so layer 0 can only come from hook_result
    torch.testing.assert_close(R.stack_head_results(with_result), R.stack_head_results(cache), **EXACT)


@pytest.mark.parametrize("arch", ["gpt2", "neox"])
def test_direct_logit_attribution_is_the_logits_layernorm(arch: str) -> None:
    """LayerNorm models normalise in float64: the attributions sum to the model's logits exactly."""
    model, _, logits, cache = run(arch)
    ids = list(range(model.cfg.d_vocab))
    torch.testing.assert_close(direct_logits(model, cache, ids), logits, **EXACT)


@pytest.mark.parametrize("arch", ["llama", "gemma2"])
def test_direct_logit_attribution_is_the_logits_rmsnorm(arch: str) -> None:
    model, _, logits, cache = run(arch)
    ids = list(range(model.cfg.d_vocab))
    ours = direct_logits(model, cache, ids)  # [batch, pos, d_vocab], before any soft-cap
    n = model.cfg.n_layers
    by_hand = final_head(model, cache[f"blocks.{n - 1}.hook_resid_post"], cache["ln_final.hook_scale"])
    torch.testing.assert_close(ours, by_hand, **EXACT)
    pre_cap = cache["ln_final.hook_normalized"] @ model.unembed.weight.T + model.b_U  # the model's own
    torch.testing.assert_close(ours, pre_cap, **FP32_NORM)
    cap = model.cfg.final_softcap
    torch.testing.assert_close(soft_cap(ours, cap) if cap else ours, logits, **FP32_NORM)


def test_logit_attrs_token_forms() -> None:
    model, tokens, logits, cache = run("gpt2")
    stack = R.decompose_resid(cache)
    const = model.ln_final.bias @ model.W_U + model.b_U  # [d_vocab]
    answer, wrong = torch.tensor([5, 17, 99]), torch.tensor([3, 4, 50])
    per_seq = R.logit_attrs(cache, stack, answer, wrong)  # [component, batch] at the last position
    rows = torch.arange(3)
    expect = (logits[rows, -1, answer] - const[answer]) - (logits[rows, -1, wrong] - const[wrong])
    torch.testing.assert_close(per_seq.sum(0), expect, **EXACT)
    per_pos = R.logit_attrs(cache, stack, tokens)  # [component, batch, pos]: the input ids themselves
    expect = logits.gather(-1, tokens[..., None])[..., 0] - const[tokens]
    torch.testing.assert_close(per_pos.sum(0), expect, **EXACT)
    torch.testing.assert_close(R.logit_attrs(cache, stack[:, :, 2], [5, 17, 99], pos_slice=2).sum(0),
                               logits[rows, 2, answer] - const[answer], **EXACT)
    torch.testing.assert_close(R.tokens_to_residual_directions(model, 7), model.W_U[:, 7])
    assert R.tokens_to_residual_directions(model, answer).shape == (3, model.cfg.d_model)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_accumulated_resid_matches_logit_lens(arch: str) -> None:
    model, tokens, _, _ = run(arch)
    with torch.no_grad():
        logits, cache = model.run_with_cache(tokens[:1])
    stack, labels = R.accumulated_resid(cache, apply_ln=True, return_labels=True)
    n = model.cfg.n_layers
    assert labels == [f"{i}_pre" for i in range(n)] + ["final_post"]
    decoded = stack @ model.unembed.weight.T + model.b_U  # [row, 1, pos, d_vocab]: each row normalised by itself
    lens = hookscope.logit_lens(model, tokens[:1], top_k=4)
    assert lens.row_labels == ["embed", *map(str, range(n))]
    torch.testing.assert_close(decoded[-1], logits, **(EXACT if arch == "gpt2" else FP32_NORM))
    rows = decoded[:, 0].float().topk(4, -1)  # [row, pos, k]: every row is a logit-lens row
    assert torch.equal(rows.indices, lens.top_ids)
    torch.testing.assert_close(rows.values, lens.top_logits, **FP32_NORM)


def test_accumulated_resid_layers_and_mids() -> None:
    _, _, _, cache = run("llama")
    stack, labels = R.accumulated_resid(cache, layer=2, incl_mid=True, mlp_input=True, return_labels=True)
    assert labels == ["0_pre", "0_mid", "1_pre", "1_mid", "2_pre", "2_mid"]
    torch.testing.assert_close(stack[3], cache["blocks.1.hook_resid_mid"], **EXACT)
    _, neox_labels = R.accumulated_resid(run("neox")[3], incl_mid=True, return_labels=True)
    assert neox_labels == ["0_pre", "1_pre", "2_pre", "final_post"]  # parallel blocks have no resid_mid
    # apply_ln for layer 2's MLP: each row through blocks.2.ln2, linearly; the full resid_mid row is ln2's output
    normed = R.apply_ln_to_stack(cache, stack[-1:], layer=2, mlp_input=True)[0]
    torch.testing.assert_close(normed, cache["blocks.2.ln2.hook_normalized"], **FP32_NORM)


def test_pos_slice_and_sliced_caches() -> None:
    model, tokens, _, cache = run("gpt2")
    full = R.apply_ln_to_stack(cache, R.decompose_resid(cache))
    last = R.decompose_resid(cache, apply_ln=True, pos_slice=-1)  # an int drops the position axis
    torch.testing.assert_close(last, full[:, :, -1], **EXACT)
    some = R.stack_head_results(cache, pos_slice=[0, 3], apply_ln=True)
    torch.testing.assert_close(some, R.stack_head_results(cache, apply_ln=True)[:, :, [0, 3]], **EXACT)
    with torch.no_grad():
        _, sliced = model.run_with_cache(tokens, pos_slice=-1)  # the cache keeps a length-1 position axis
        _, single = model.run_with_cache(tokens[:1], remove_batch_dim=True)
    torch.testing.assert_close(R.decompose_resid(sliced, apply_ln=True), full[:, :, -1:], **EXACT)
    torch.testing.assert_close(R.stack_head_results(sliced), R.stack_head_results(cache)[:, :, -1:], **EXACT)
    nobatch = R.decompose_resid(single)  # [component, pos, d_model]
    torch.testing.assert_close(R.apply_ln_to_stack(single, nobatch), full[:, 0], **EXACT)
    raw = R.decompose_resid(cache)
    torch.testing.assert_close(R.logit_attrs(single, nobatch, tokens[0]), R.logit_attrs(cache, raw, tokens)[:, 0],
                               **EXACT)


def test_native_cache_is_a_store_pointing_to_the_functions() -> None:
    _, _, _, cache = run("llama")
    with pytest.raises(AttributeError, match=r"hookscope\.decompose_resid\(cache"):
        cache.decompose_resid()
    assert torch.equal(R.stack_head_results(cache, 1), hookscope.stack_head_results(cache, layer=1))


def test_errors_say_what_to_do() -> None:
    model, tokens, _, cache = run("gpt2")
    with torch.no_grad():
        _, thin = model.run_with_cache(tokens, names_filter=lambda n: "resid" in n)
    with pytest.raises(KeyError, match=r"needs 'hook_embed'.*names_filter including 'hook_embed'"):
        R.decompose_resid(thin)
    with pytest.raises(KeyError, match=r"ln_final\.hook_scale"):
        R.apply_ln_to_stack(thin, R.accumulated_resid(thin))
    with pytest.raises(KeyError, match=r"attn\.hook_z"):
        R.stack_head_results(thin)
    orphan = hookscope.ActivationCache(dict(cache))
    with pytest.raises(ValueError, match="does not know its model"):
        R.decompose_resid(orphan)
    with pytest.raises(ValueError, match="has no unembedding W_U"):
        R.tokens_to_residual_directions(types.SimpleNamespace(), 3)
    with pytest.raises(ValueError, match=r"layer must be in 0\.\.3"):
        R.accumulated_resid(cache, layer=7)
    stack = R.decompose_resid(cache)
    with pytest.raises(ValueError, match="pass the pos_slice"):
        R.apply_ln_to_stack(cache, stack[:, :, :2], pos_slice=[0, 1, 2])
    with pytest.raises(ValueError, match="pass the pos_slice"):
        R.logit_attrs(cache, stack[:, :, -1], 3)  # sliced stack, pos_slice not given
    with pytest.raises(ValueError, match="do not line up"):
        R.logit_attrs(cache, stack, torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="same shape"):
        R.logit_attrs(cache, stack, 1, [2, 3])
    with pytest.raises(ValueError, match="mode must be"):
        R.decompose_resid(cache, mode="heads")
