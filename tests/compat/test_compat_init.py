"""``HookedTransformer(cfg)`` with each of TransformerLens's ``init_mode``s: every weight matrix's spread equals the
one TL's formula gives for that matrix's TL shape (fans worked out by hand below), biases 0, norms 1."""

from __future__ import annotations

import math

import pytest
import torch

from hookscope.compat import HookedTransformer, HookedTransformerConfig

D_MODEL, D_HEAD, N_HEADS, D_MLP, D_VOCAB, N_CTX = 64, 16, 4, 256, 300, 128
# TL shape -> (fan_in, fan_out): W_E [300, 64], W_pos [128, 64], W_Q/K/V [4, 64, 16] -> (64, 64),
# W_O [4, 16, 64] -> (16, 256), W_in [64, 256], W_out [256, 64], W_U [64, 300]
FANS = {"pos_embed.weight": (128, 64), "unembed.weight": (64, 300), "embed.weight": (300, 64), "q_proj": (64, 64),
        "k_proj": (64, 64), "v_proj": (64, 64), "o_proj": (16, 256), "up_proj": (64, 256), "down_proj": (256, 64)}


def _fans(name: str) -> tuple[int, int]:
    return next(fans for key, fans in FANS.items() if key in name)  # the first match: pos_embed before embed


def _expected_std(mode: str, name: str, gain: float) -> float:
    fan_in, fan_out = _fans(name)
    if mode.startswith("xavier"):
        return gain * math.sqrt(2 / (fan_in + fan_out))
    if mode.startswith("kaiming"):
        return gain * math.sqrt(2 / fan_in)
    return 1.0 if "embed" in name else 1 / math.sqrt(fan_in)  # muP: W_E, W_pos and W_U ("unembed") at 1


@pytest.mark.parametrize("mode", ["xavier_uniform", "xavier_normal", "kaiming_uniform", "kaiming_normal", "muP"])
def test_init_mode_draws_each_matrix_with_tls_scale(mode: str) -> None:
    gain = 0.7
    cfg = HookedTransformerConfig(d_model=D_MODEL, d_head=D_HEAD, n_layers=1, n_ctx=N_CTX, d_vocab=D_VOCAB,
                                  d_mlp=D_MLP, act_fn="gelu", init_mode=mode, initializer_range=gain, seed=5)
    model = HookedTransformer(cfg)
    for name, param in model.named_parameters():
        values = param.detach().flatten()
        if param.ndim == 1:
            is_norm_weight = name.endswith("weight") and ("ln" in name.split(".")[-2])
            assert torch.all(values == (1.0 if is_norm_weight else 0.0)), name
            continue
        want = _expected_std(mode, name, gain)
        assert abs(values.std().item() / want - 1) < 0.06, (name, values.std().item(), want)
        if mode.endswith("uniform"):
            assert values.abs().max().item() <= math.sqrt(3) * want * (1 + 1e-6)
            assert values.abs().max().item() > 0.95 * math.sqrt(3) * want


def test_init_is_reproducible_from_the_seed_and_gpt2_is_the_default() -> None:
    sizes = dict(d_model=16, d_head=4, n_layers=1, n_ctx=8, d_vocab=20, init_mode="kaiming_normal")
    a, b = (HookedTransformer(HookedTransformerConfig(**sizes, seed=1)) for _ in range(2))
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    gpt2 = HookedTransformer(HookedTransformerConfig(d_model=256, d_head=4, n_layers=1, n_ctx=8, d_vocab=300, seed=1))
    assert abs(gpt2.embed.weight.std().item() / (0.8 / math.sqrt(256)) - 1) < 0.05


def test_unknown_init_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="init_mode must be one of"):
        HookedTransformer(HookedTransformerConfig(d_model=8, d_head=4, n_layers=1, n_ctx=4, d_vocab=10,
                                                  init_mode="orthogonal"))
