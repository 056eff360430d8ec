"""Decoder.process_weights keeps log-probabilities on every decoder family, and says when an option cannot apply."""

from __future__ import annotations

import logging

import pytest
import torch

import hookscope
from hookscope.models.weight_processing import WeightProcessingError
from tests.circuits.fp64 import pure_float64
from tests.equivalence.decoder_configs import ARCHS, random_hf_model, random_tokens
from tests.helpers import TOLERANCES

NON_ROTARY_MHA = ["gpt2", "gpt2_untied"]


def log_probs(model, tokens: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.log_softmax(model(tokens).double(), dim=-1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", ARCHS)
def test_default_processing_keeps_log_probs(name: str, dtype: torch.dtype) -> None:
    model = hookscope.load(random_hf_model(name, dtype), dtype=dtype)
    if dtype == torch.float64:
        pure_float64(model)
    tokens = random_tokens(3, 7)
    before = log_probs(model, tokens)
    model.process_weights()
    atol, rtol = TOLERANCES[dtype]
    torch.testing.assert_close(log_probs(model, tokens), before, atol=atol, rtol=rtol)
    # the norms hold no affine part any more: their effective weight is the identity
    for block in (b for b in model.blocks if hasattr(b.ln1, "weight")):  # OPT can be weightless from the start
        scale = block.ln1.weight + (1.0 if name.startswith("gemma") else 0.0)
        assert torch.equal(scale, torch.ones_like(scale))
    assert model.processed_weights[-1].fold_ln


@pytest.mark.parametrize("name", NON_ROTARY_MHA)
def test_refactor_keeps_log_probs_and_evens_the_qk_factors(name: str) -> None:
    model = hookscope.load(random_hf_model(name, torch.float64), dtype=torch.float64)
    tokens = random_tokens(2, 6)
    before = log_probs(model, tokens)
    qk_before = model.QK.AB
    model.process_weights(refactor_factored_attn_matrices=True)
    atol, rtol = TOLERANCES[torch.float64]
    torch.testing.assert_close(log_probs(model, tokens), before, atol=atol, rtol=rtol)
    # even split: [W_Q; b_Q] and [W_K; b_K] have the same orthogonal columns (each sqrt of the singular values)
    q = torch.cat([model.W_Q, model.b_Q[:, :, None]], dim=2)  # [layer, head, d_model + 1, d_head]
    k = torch.cat([model.W_K, model.b_K[:, :, None]], dim=2)
    gram_q, gram_k = q.transpose(-2, -1) @ q, k.transpose(-2, -1) @ k
    torch.testing.assert_close(gram_q, gram_k, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(gram_q, torch.diag_embed(torch.diagonal(gram_q, dim1=-2, dim2=-1)), atol=1e-10,
                               rtol=1e-10)
    # OV: W_O rows are orthonormal
    w_o = model.W_O  # [layer, head, d_head, d_model]
    eye = torch.eye(w_o.shape[-2], dtype=torch.float64).expand(*w_o.shape[:2], -1, -1)
    torch.testing.assert_close(w_o @ w_o.transpose(-2, -1), eye, atol=1e-10, rtol=1e-10)
    assert not torch.allclose(model.QK.AB, qk_before)  # the LN weight was folded into W_Q and W_K


def test_centring_makes_residual_writes_mean_free_on_layernorm_models() -> None:
    model = hookscope.load(random_hf_model("gpt2", torch.float64), dtype=torch.float64)
    model.process_weights()
    _, cache = model.run_with_cache(random_tokens(2, 5), names_filter=lambda n: "resid" in n or "_out" in n)
    assert len(cache) > 10
    for act in cache.values():
        torch.testing.assert_close(act.mean(-1), torch.zeros_like(act.mean(-1)), atol=1e-12, rtol=0)
    torch.testing.assert_close(model.W_U.mean(-1), torch.zeros(model.cfg.d_model, dtype=torch.float64),
                               atol=1e-12, rtol=0)
    assert model.unembed.weight is not model.embed.weight  # the tied embedding was untied


def test_options_that_do_not_apply_are_skipped_with_a_warning_or_raise_when_strict(caplog) -> None:
    gemma = hookscope.load(random_hf_model("gemma2", torch.float32))
    with caplog.at_level(logging.WARNING):
        gemma.process_weights()
    done = gemma.processed_weights[-1]
    assert not done.center_writing_weights and not done.center_unembed
    assert "soft-cap" in caplog.text and "rmsnorm" in caplog.text
    llama = hookscope.load(random_hf_model("llama", torch.float32))
    with pytest.raises(WeightProcessingError, match="rmsnorm"):
        llama.process_weights(strict=True)
    with pytest.raises(WeightProcessingError, match="rotary"):
        llama.process_weights(center_writing_weights=False, refactor_factored_attn_matrices=True)


def test_processed_model_refuses_to_export_to_hf() -> None:
    model = hookscope.load(random_hf_model("gpt2", torch.float32))
    model.process_weights(fold_ln=True, center_writing_weights=False, center_unembed=False)
    with pytest.raises(ValueError, match="processed"):
        model.to_hf()


@pytest.mark.parametrize("norm", ["layernorm", "layernorm_pre", "rmsnorm_pre", "none"])
def test_from_scratch_configs_keep_log_probs(norm: str) -> None:
    """Attention-only and weightless-norm models (TransformerLens's from-scratch configs)."""
    from hookscope.models.decoder import Decoder
    from hookscope.models.decoder_config import DecoderConfig
    from tests.helpers import redraw_parameters

    for attn_only in (True, False):
        cfg = DecoderConfig(d_model=24, n_layers=2, n_heads=3, d_head=5, d_mlp=0 if attn_only else 19, d_vocab=31,
                            n_ctx=16, norm=norm, attn_only=attn_only, qkv_bias=True, attn_out_bias=True,
                            mlp_bias=True)
        model = pure_float64(Decoder.from_config(cfg, seed=0).double())  # softmax in float64 too
        redraw_parameters(model, seed=1)
        tokens = torch.randint(0, 31, (2, 6), generator=torch.Generator().manual_seed(0))
        before = log_probs(model, tokens)
        model.process_weights()
        torch.testing.assert_close(log_probs(model, tokens), before, atol=1e-10, rtol=1e-10)
        done = model.processed_weights[-1]
        assert done.center_writing_weights == norm.startswith("layernorm")
