"""SAE variants against by-hand formulas; TopK sparsity; JumpReLU's straight-through gradients; weight folds."""

from __future__ import annotations

import pytest
import torch

from hookscope.sae import SAE, SAEConfig
from hookscope.sae.jumprelu import jumprelu, step

D_IN, D_SAE = 13, 29


def _random_sae(arch: str, k: int | None = None, seed: int = 0, **kw) -> SAE:
    cfg = SAEConfig(d_in=D_IN, d_sae=D_SAE, architecture=arch, k=k, dtype="float64", **kw)
    sae = SAE(cfg, seed=seed)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in sae.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64) * 0.5)
        if hasattr(sae, "threshold"):
            sae.threshold.copy_(torch.rand(D_SAE, generator=gen, dtype=torch.float64) * 0.5)
    return sae.eval()


def _x(*shape: int, seed: int = 3) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _by_hand_pre(sae: SAE, x: torch.Tensor, scale: float = 1.0, b_dec_in: bool = True) -> torch.Tensor:
    W_enc, b_enc, b_dec = sae.W_enc.detach(), sae.b_enc.detach(), sae.b_dec.detach()
    out = torch.empty(x.shape[0], D_SAE, dtype=torch.float64)
    for r in range(x.shape[0]):
        v = x[r] * scale - (b_dec if b_dec_in else 0)
        for j in range(D_SAE):
            out[r, j] = (v * W_enc[:, j]).sum() + b_enc[j]
    return out


def _by_hand_decode(sae: SAE, acts: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    W_dec, b_dec = sae.W_dec.detach(), sae.b_dec.detach()
    return torch.stack([(sum(a[j] * W_dec[j] for j in range(D_SAE)) + b_dec) / scale for a in acts])


def _by_hand_topk(pre: torch.Tensor, k: int) -> torch.Tensor:
    out = torch.zeros_like(pre)
    for r in range(pre.shape[0]):
        order = sorted(range(pre.shape[1]), key=lambda j: -float(pre[r, j]))[:k]
        for j in order:
            out[r, j] = max(float(pre[r, j]), 0.0)
    return out


@pytest.mark.parametrize("arch,k", [("standard", None), ("topk", 5), ("jumprelu", None), ("batchtopk", 4)])
def test_encode_decode_equal_the_formula_by_hand(arch: str, k: int | None) -> None:
    sae = _random_sae(arch, k)
    x = _x(6, D_IN)
    pre = _by_hand_pre(sae, x)
    if arch == "standard":
        acts = pre.clamp_min(0)
    elif arch == "topk":
        acts = _by_hand_topk(pre, k)
    else:  # jumprelu, and batchtopk at inference: a threshold per latent
        acts = torch.where(pre > sae.threshold.detach(), pre, torch.zeros_like(pre))
    torch.testing.assert_close(sae.encode(x), acts, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(sae.decode(acts), _by_hand_decode(sae, acts), atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(sae(x), _by_hand_decode(sae, acts), atol=1e-12, rtol=1e-12)


def test_activation_scale_and_no_decoder_bias_on_input_follow_the_formula() -> None:
    sae = _random_sae("standard", apply_b_dec_to_input=False, normalize_activations="expected_average_only_in")
    sae.norm_scaling_factor.fill_(2.5)
    x = _x(4, D_IN)
    acts = _by_hand_pre(sae, x, scale=2.5, b_dec_in=False).clamp_min(0)
    torch.testing.assert_close(sae.encode(x), acts, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(sae(x), _by_hand_decode(sae, acts, scale=2.5), atol=1e-12, rtol=1e-12)
    before = sae(x)
    sae.fold_activation_norm_scaling_factor()
    assert float(sae.norm_scaling_factor) == 1.0 and sae.cfg.normalize_activations == "none"
    torch.testing.assert_close(sae(x), before, atol=1e-12, rtol=1e-12)


def test_topk_keeps_exactly_k_latents_when_the_top_pre_activations_are_positive() -> None:
    sae = _random_sae("topk", k=7)
    with torch.no_grad():
        sae.b_enc.fill_(100.0)  # every pre-activation positive
    acts = sae.encode(_x(50, D_IN))
    assert ((acts != 0).sum(-1) == 7).all()
    sae_neg = _random_sae("topk", k=7)
    with torch.no_grad():
        sae_neg.b_enc.fill_(-100.0)  # ReLU after the top-k: nothing positive survives
    assert (sae_neg.encode(_x(5, D_IN)) == 0).all()


def test_batchtopk_training_keeps_k_times_batch_latents_over_the_batch() -> None:
    sae = _random_sae("batchtopk", k=3).train()
    with torch.no_grad():
        sae.b_enc.fill_(100.0)
    acts = sae.encode(_x(10, D_IN))
    per_row = (acts != 0).sum(-1)
    assert int(per_row.sum()) == 30 and per_row.max() > 0


def test_jumprelu_straight_through_gradients_match_the_rectangle_kernel() -> None:
    z = torch.tensor([[0.1000, 0.5004, 0.9]], dtype=torch.float64, requires_grad=True)
    t = torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64, requires_grad=True)
    jumprelu(z, t, bandwidth=0.01).sum().backward()
    # d/dz = H(z - t); d/dt = -(t / bw) * rect((z - t) / bw): only the latent within bw/2 of its threshold
    assert z.grad.tolist() == [[0.0, 1.0, 1.0]]
    torch.testing.assert_close(t.grad, torch.tensor([0.0, -0.5 / 0.01, 0.0], dtype=torch.float64))
    t.grad = None
    step(z, t, bandwidth=0.01).sum().backward()
    torch.testing.assert_close(t.grad, torch.tensor([0.0, -1 / 0.01, 0.0], dtype=torch.float64))


@pytest.mark.parametrize("arch", ["standard", "jumprelu"])
def test_folding_decoder_norms_keeps_the_function_and_gives_unit_rows(arch: str) -> None:
    sae = _random_sae(arch)
    x = _x(8, D_IN)
    before, l0 = sae(x), (sae.encode(x) != 0).sum()
    sae.fold_W_dec_norm()
    torch.testing.assert_close(sae.W_dec.norm(dim=-1), torch.ones(D_SAE, dtype=torch.float64))
    torch.testing.assert_close(sae(x), before, atol=1e-12, rtol=1e-12)
    assert (sae.encode(x) != 0).sum() == l0


def test_hook_z_shaped_input_is_flattened_over_heads_and_restored() -> None:
    sae = _random_sae("standard")
    x = _x(2, 5, D_IN)
    z = torch.randn(2, 5, 1, D_IN, dtype=torch.float64)
    assert sae(z).shape == z.shape
    torch.testing.assert_close(sae(x), sae(x.reshape(10, D_IN)).reshape(2, 5, D_IN))
    with pytest.raises(ValueError, match="d_in=13"):
        sae(torch.zeros(3, 7, dtype=torch.float64))


def test_error_term_returns_the_input_exactly_and_hooks_see_the_latents() -> None:
    sae = _random_sae("topk", k=4)
    x = _x(3, 5, D_IN)
    seen = {}
    out, cache = sae.run_with_cache(x, use_error_term=True)
    assert torch.equal(out, x)
    assert cache["hook_sae_acts_post"].shape == (3, 5, D_SAE)
    torch.testing.assert_close(cache["hook_sae_error"], x - sae(x), atol=1e-12, rtol=1e-12)

    j = int((sae.encode(x) != 0).sum((0, 1)).argmax())  # the most often active latent

    def ablate(acts, hook):
        seen["n"] = int((acts[..., j] != 0).sum())
        acts = acts.clone()
        acts[..., j] = 0
        return acts

    with sae.hooks(fwd_hooks=[("hook_sae_acts_post", ablate)]):
        edited = sae(x, use_error_term=True)
    expected = x - sae.encode(x)[..., j : j + 1] * sae.W_dec[j]
    torch.testing.assert_close(edited, expected.detach(), atol=1e-12, rtol=1e-12)
    assert seen["n"] > 0  # the ablated latent was active somewhere, so the edit is visible


def test_bad_configs_raise_clear_errors() -> None:
    with pytest.raises(ValueError, match="needs 1 <= k"):
        SAEConfig(d_in=4, d_sae=8, architecture="topk")
    with pytest.raises(ValueError, match="unknown SAE architecture"):
        SAEConfig(d_in=4, d_sae=8, architecture="gated")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown dtype"):
        SAE(SAEConfig(d_in=4, d_sae=8, dtype="float99"))


def test_unsupported_activation_normalisation_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown normalize_activations 'layer_norm'"):
        SAEConfig(d_in=4, d_sae=8, normalize_activations="layer_norm")  # type: ignore[arg-type]
