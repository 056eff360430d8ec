"""SAEs of another precision than the model, the half-precision training step, and clear errors on bad input."""

from __future__ import annotations

import json

import pytest
import torch

import hookscope
import hookscope.sae.losses as losses
from hookscope.sae import SAE, SAEConfig
from hookscope.sae.losses import LossWeights, sae_loss
from hookscope.sae.steering import mean_difference, steered, steering_hook
from tests.equivalence.decoder_configs import random_hf_model, random_tokens
from tests.equivalence.vit_cases import make_hf, pixels_for


@pytest.mark.parametrize("sae_dtype", ["bfloat16", "float16", "float32"])
def test_the_error_term_returns_a_float64_activation_exactly_through_a_lower_precision_sae(sae_dtype: str) -> None:
    sae = SAE(SAEConfig(d_in=7, d_sae=13, architecture="topk", k=3, dtype=sae_dtype), seed=1).eval()
    x = torch.randn(2, 5, 7, generator=torch.Generator().manual_seed(0), dtype=torch.float64)  # [batch, pos, d]
    out = sae(x, use_error_term=True)
    assert out.dtype == torch.float64
    assert torch.equal(out, x)


def test_splicing_a_bfloat16_sae_into_a_float32_model_with_the_error_term_changes_nothing() -> None:
    model = hookscope.load(random_hf_model("llama", torch.float32), dtype=torch.float32)
    tokens = random_tokens(2, 6)
    clean = model(tokens)
    sae = SAE(SAEConfig(d_in=48, d_sae=37, hook_name="blocks.1.hook_resid_post", dtype="bfloat16"), seed=0).eval()
    with model.saes(sae, use_error_term=True):
        spliced, cache = model.run_with_cache(tokens)
    assert torch.equal(spliced, clean)
    assert cache["blocks.1.hook_resid_post.hook_sae_acts_post"].shape == (2, 6, 37)


def _topk_sae_with_unequal_rows() -> SAE:
    gen = torch.Generator().manual_seed(2)
    sae = SAE(SAEConfig(d_in=9, d_sae=23, architecture="topk", k=3, dtype="float64"), seed=1).train()
    with torch.no_grad():
        sae.b_enc.copy_(torch.randn(23, generator=gen, dtype=torch.float64) * 0.3)
        sae.W_dec.mul_(torch.rand(23, 1, generator=gen, dtype=torch.float64) * 20 + 0.5)
    return sae


def test_the_dense_topk_step_of_half_precision_training_equals_the_sparse_one_with_the_aux_loss(
    monkeypatch,
) -> None:
    """The dense formula (taken in bfloat16 / float16) decodes aux latents along unit rows, as the sparse one."""
    sae = _topk_sae_with_unequal_rows()
    x = torch.randn(17, 9, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    dead = torch.zeros(23, dtype=torch.bool)
    dead[::2] = True
    weights = LossWeights(aux_k=0.5, aux_k_size=4)
    params = [sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec]
    sparse_loss, sparse_parts = sae_loss(sae, x, weights, dead)
    sparse_grads = torch.autograd.grad(sparse_loss, params)
    monkeypatch.setattr(losses, "_topk_forward", lambda sae, x: None)  # the path half precision takes
    dense_loss, dense_parts = sae_loss(sae, x, weights, dead)
    dense_grads = torch.autograd.grad(dense_loss, params)
    torch.testing.assert_close(dense_parts["aux_k"], sparse_parts["aux_k"], atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(dense_loss, sparse_loss, atol=1e-10, rtol=1e-10)
    for got, want in zip(dense_grads, sparse_grads, strict=True):
        torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-10)


def test_a_steering_direction_of_the_wrong_size_raises_a_clear_error() -> None:
    hook = steering_hook(torch.ones(5), strength=2.0)
    with pytest.raises(ValueError, match="does not fit the activation"):
        hook(torch.zeros(2, 3, 4), None)
    flat_heads = steering_hook(torch.ones(6))  # [n_heads * d_head] on a hook_z-shaped activation
    assert torch.equal(flat_heads(torch.zeros(1, 2, 3, 2), None), torch.ones(1, 2, 3, 2))


def test_a_cfg_json_that_is_not_json_names_the_file(tmp_path) -> None:
    SAE(SAEConfig(d_in=5, d_sae=7)).save(tmp_path)
    (tmp_path / "cfg.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"cfg\.json is not valid JSON"):
        SAE.load(tmp_path)


def test_a_residual_activation_whose_positions_times_width_equal_d_in_is_refused_not_flattened() -> None:
    sae = SAE(SAEConfig(d_in=12, d_sae=5, dtype="float64"), seed=0)
    with pytest.raises(ValueError, match="d_in=12"):
        sae(torch.zeros(2, 3, 4, dtype=torch.float64))  # [batch, pos=3, d=4]: not hook_z
    z = torch.randn(2, 3, 4, 3, dtype=torch.float64)  # [batch, pos, head_index, d_head]
    assert sae(z).shape == z.shape
    on_z = SAE(SAEConfig(d_in=12, d_sae=5, dtype="float64", hook_name="blocks.0.attn.hook_z"), seed=0)
    torch.testing.assert_close(on_z(z[0]), on_z(z)[0])  # [pos, head_index, d_head] of a hook_z SAE


def test_splicing_an_sae_whose_d_in_is_positions_times_d_model_raises() -> None:
    model = hookscope.load(random_hf_model("llama", torch.float32), dtype=torch.float32)
    sae = SAE(SAEConfig(d_in=96, d_sae=7, hook_name="blocks.1.hook_resid_post"), seed=0)  # d_model is 48
    with model.saes(sae), pytest.raises(ValueError, match="d_in=96"):
        model(random_tokens(1, 2))


@pytest.mark.parametrize("positions", [[0], [1, -1], slice(0, 2), [5], slice(3, None)])
def test_steering_at_positions_generates_the_same_with_and_without_the_kv_cache(positions) -> None:
    model = hookscope.load(random_hf_model("llama", torch.float64), dtype=torch.float64)
    tokens = random_tokens(2, 4)
    direction = torch.randn(48, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 5
    runs = []
    for use_cache in (True, False):
        with steered(model, "blocks.0.hook_resid_post", direction, strength=3.0, positions=positions):
            runs.append(model.generate(tokens, 6, use_cache=use_cache))
    assert torch.equal(runs[0], runs[1])
    with steered(model, "blocks.0.hook_resid_post", direction, positions=[9]):  # not reached: nothing to steer
        assert torch.equal(model(tokens), model.run_with_hooks(tokens))
    with steered(model, "blocks.0.hook_resid_post", direction, positions=[-5]):
        with pytest.raises(IndexError, match="past the start of a sequence of 4"):
            model(tokens)


def test_mean_difference_on_a_float64_vit_is_exact_and_steers_its_logits_by_strength() -> None:
    vit = hookscope.load(make_hf("vit_cls", torch.float64), dtype=torch.float64)
    pos, neg = pixels_for(torch.float64, batch=3, seed=1), pixels_for(torch.float64, batch=2, seed=2)
    hook = "blocks.1.hook_resid_post"
    direction = mean_difference(vit, hook, list(pos[:, None]), list(neg[:, None]))
    _, cache_pos = vit.run_with_cache(pos, names_filter=hook)
    _, cache_neg = vit.run_with_cache(neg, names_filter=hook)
    expected = cache_pos[hook].mean(1).mean(0) - cache_neg[hook].mean(1).mean(0)  # per image over patches
    assert direction.dtype == torch.float64
    torch.testing.assert_close(direction, expected, atol=1e-12, rtol=1e-12)
    with steered(vit, hook, direction, strength=2.5):
        logits = vit(pos)
    by_hand = vit.run_with_hooks(pos, fwd_hooks=[(hook, lambda x, hook: x + 2.5 * expected)])
    torch.testing.assert_close(logits, by_hand, atol=1e-12, rtol=1e-12)
    assert not torch.allclose(logits, vit(pos))


def test_folding_decoder_norms_of_a_topk_sae_with_unequal_rows_is_refused_and_changes_nothing() -> None:
    sae = _topk_sae_with_unequal_rows().eval()
    before = {k: v.clone() for k, v in sae.state_dict().items()}
    with pytest.raises(ValueError, match="would change which latents a TopK SAE picks"):
        sae.fold_W_dec_norm()
    assert all(torch.equal(v, before[k]) for k, v in sae.state_dict().items())
    x = torch.randn(6, 9, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with torch.no_grad():
        sae.W_dec.div_(sae.W_dec.norm(dim=-1, keepdim=True) / 3.0)  # equal rows: the ranking survives the fold
    out = sae(x)
    sae.fold_W_dec_norm()
    torch.testing.assert_close(sae(x), out, atol=1e-12, rtol=1e-12)


def test_steering_at_positions_a_wrapped_hf_model_generates_the_same_with_and_without_its_cache() -> None:
    from hookscope.bridge import wrap
    from tests.bridge import models as bridge_models

    wrapped = wrap(bridge_models.decoder("llama", attn="sdpa").double())
    ids = bridge_models.tokens(batch=2, pos=5)
    direction = torch.randn(bridge_models.D, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 24
    runs = []
    for use_cache in (True, False):
        with steered(wrapped, "blocks.1.hook_resid_post", direction, positions=[1, -1]):
            runs.append(wrapped.generate(ids, max_new_tokens=4, min_new_tokens=4, do_sample=False,
                                         use_cache=use_cache))
    assert torch.equal(runs[0], runs[1])


@pytest.mark.parametrize("fields,message", [
    ({"d_in": None}, "d_in must be a positive whole number"),
    ({"d_sae": "abc"}, "d_sae must be a positive whole number"),
    ({"d_in": 2.5}, "d_in must be a positive whole number"),
    ({"metadata": "oops"}, "'metadata' must be a JSON object"),
])
def test_malformed_cfg_fields_name_the_file_and_the_field(tmp_path, fields: dict, message: str) -> None:
    SAE(SAEConfig(d_in=5, d_sae=7)).save(tmp_path)
    raw = {"d_in": 5, "d_sae": 7, "metadata": {"sae_lens_version": "6.0.0"}, **fields}
    (tmp_path / "cfg.json").write_text(json.dumps(raw))
    with pytest.raises(ValueError, match=message) as err:
        SAE.load(tmp_path)
    assert "cfg.json" in str(err.value)


def test_steering_whisper_decoder_positions_is_the_same_with_and_without_the_kv_cache() -> None:
    from tests.equivalence.whisper_cases import random_hf_whisper

    whisper = hookscope.load(random_hf_whisper(torch.float64), dtype=torch.float64)
    features = torch.randn(2, 11, 26, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    direction = torch.randn(48, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 20
    runs = []
    for use_cache in (True, False):
        with steered(whisper, "decoder.0.hook_resid_post", direction, positions=[2]):
            runs.append(whisper.generate(features, 6, use_cache=use_cache))
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], whisper.generate(features, 6))  # the third token on was steered
