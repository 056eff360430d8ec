"""TransformerLens's SoLU MLP (``act_fn="solu_ln"``): a native ``DecoderConfig.mlp_norm``, checked against the
MLP written out by hand, kept through TL's weight processing, and named as TL names its hooks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from hookscope.compat import HookedTransformer, HookedTransformerConfig
from hookscope.errors import ConfigError
from hookscope.models.decoder_config import DecoderConfig


def _solu_model(normalization_type: str = "LN") -> HookedTransformer:
    cfg = HookedTransformerConfig(d_model=16, d_head=4, n_layers=2, n_ctx=8, d_vocab=30, act_fn="solu_ln",
                                  normalization_type=normalization_type, seed=0, dtype=torch.float64)
    model = HookedTransformer(cfg)
    with torch.no_grad():  # non-trivial norm weights and biases, so folding them has something to do
        for param in model.parameters():
            if param.ndim == 1:
                param.add_(0.3 * torch.randn_like(param))
    return model


@pytest.mark.parametrize("normalization_type", ["LN", "LNPre"])
def test_solu_mlp_equals_the_formula(normalization_type: str) -> None:
    model = _solu_model(normalization_type)
    mlp = model.blocks[0].mlp
    x = torch.randn(2, 5, 16, dtype=torch.float64)
    pre = x @ mlp.W_in + mlp.b_in
    mid = pre * torch.softmax(pre, dim=-1)
    if normalization_type == "LN":
        post = F.layer_norm(mid, (mid.shape[-1],), mlp.ln.weight, mlp.ln.bias, eps=1e-5)
    else:  # TL: any other normalisation type gets a weightless LayerNorm (LNPre) inside the MLP
        assert not list(mlp.ln.parameters())
        post = F.layer_norm(mid, (mid.shape[-1],), eps=1e-5)
    torch.testing.assert_close(mlp(x), post @ mlp.W_out + mlp.b_out, rtol=0, atol=1e-12)


def test_solu_hook_names_are_tls() -> None:
    model = _solu_model()
    _, cache = model.run_with_cache(torch.randint(0, 30, (1, 4)))
    mlp_names = [n for n in cache.keys() if n.startswith("blocks.0.mlp")]
    assert mlp_names == ["blocks.0.mlp.hook_pre", "blocks.0.mlp.hook_mid", "blocks.0.mlp.ln.hook_scale",
                         "blocks.0.mlp.ln.hook_normalized", "blocks.0.mlp.hook_post"]
    assert model.cfg.act_fn == "solu_ln" and model.cfg.to_native().mlp_norm == "layernorm"


def test_weight_processing_folds_the_solu_norm_and_keeps_the_log_probs() -> None:
    model = _solu_model()
    tokens = torch.randint(0, 30, (2, 6))
    with torch.no_grad():
        before = model(tokens).log_softmax(-1)
        model.process_weights_()
        after = model(tokens).log_softmax(-1)
    ln = model.blocks[1].mlp.ln
    assert torch.all(ln.weight == 1) and torch.all(ln.bias == 0)
    torch.testing.assert_close(after, before, rtol=0, atol=1e-6)  # the attention softmax runs in float32


def test_mlp_norm_needs_a_plain_mlp() -> None:
    sizes = dict(d_model=8, n_layers=1, n_heads=2, d_head=4, d_mlp=16, d_vocab=10, n_ctx=4)
    with pytest.raises(ConfigError, match="mlp_norm"):
        DecoderConfig(**sizes, mlp="gated", mlp_norm="layernorm")
    with pytest.raises(NotImplementedError, match="gated_mlp"):
        HookedTransformer(HookedTransformerConfig(d_model=8, d_head=4, n_layers=1, n_ctx=4, d_vocab=10,
                                                  act_fn="solu_ln", gated_mlp=True))
