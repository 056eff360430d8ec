"""Splicing SAEs into native and wrapped models; SAELens's on-disk format."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

import hookscope
from hookscope.sae import SAE, SAEConfig, load_sae
from tests.equivalence.decoder_configs import random_hf_model, random_tokens

HOOK = "blocks.1.hook_resid_post"


def _sae(d_in: int, arch: str = "topk", k: int | None = 6, hook: str | None = HOOK, dtype: str = "float32") -> SAE:
    sae = SAE(SAEConfig(d_in=d_in, d_sae=37, architecture=arch, k=k, hook_name=hook, dtype=dtype), seed=0)
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        sae.b_enc.copy_(torch.randn(37, generator=gen).to(sae.b_enc.dtype) * 0.1)
        sae.b_dec.copy_(torch.randn(d_in, generator=gen).to(sae.b_dec.dtype) * 0.1)
        if hasattr(sae, "threshold"):
            sae.threshold.copy_(torch.rand(37, generator=gen).to(sae.b_dec.dtype) * 0.05)
    return sae.eval()


@pytest.fixture(scope="module")
def native() -> hookscope.Decoder:
    return hookscope.load(random_hf_model("llama", torch.float64), dtype=torch.float64)


@pytest.mark.parametrize("arch,k", [("standard", None), ("topk", 6), ("jumprelu", None)])
def test_splicing_with_the_error_term_leaves_the_output_unchanged_exactly(native, arch: str, k) -> None:
    tokens = random_tokens(3, 7)
    clean = native(tokens)
    sae = _sae(48, arch, k, dtype="float64")
    with native.saes(sae, use_error_term=True):
        spliced, cache = native.run_with_cache(tokens)
    assert torch.equal(spliced, clean)
    assert cache[f"{HOOK}.hook_sae_acts_post"].shape == (3, 7, 37)
    torch.testing.assert_close(cache[f"{HOOK}.hook_sae_acts_post"], sae.encode(cache[HOOK]))


def test_splicing_without_the_error_term_runs_the_reconstruction_downstream(native) -> None:
    tokens = random_tokens(2, 5)
    sae = _sae(48, dtype="float64")
    _, clean_cache = native.run_with_cache(tokens, names_filter=HOOK)
    recons = sae(clean_cache[HOOK])
    expected = native(recons, start_at_layer=2, tokens=tokens)
    with native.saes(sae):
        out, cache = native.run_with_cache(tokens)
    torch.testing.assert_close(out, expected, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(cache[HOOK], clean_cache[HOOK])  # the point's own cache: the model's activation
    assert not torch.equal(out, native(tokens))
    # the SAE's names leave the model when the block ends; the model is as before
    assert f"{HOOK}.hook_sae_acts_post" not in native.hook_dict
    assert torch.equal(native(tokens), native(tokens)) and not native.active_hooks()


def test_ablating_a_spliced_latent_changes_the_output_by_its_decoded_contribution(native) -> None:
    tokens = random_tokens(2, 5)
    sae = _sae(48, dtype="float64")
    acts = sae.encode(native.run_with_cache(tokens, names_filter=HOOK)[1][HOOK])
    j = int((acts != 0).sum((0, 1)).argmax())
    patched_resid = native.run_with_cache(tokens, names_filter=HOOK)[1][HOOK] - acts[..., j : j + 1] * sae.W_dec[j]
    expected = native(patched_resid.detach(), start_at_layer=2, tokens=tokens)

    def ablate(a, hook):
        a = a.clone()
        a[..., j] = 0
        return a

    with native.saes(sae, use_error_term=True):
        out = native.run_with_hooks(tokens, fwd_hooks=[(f"{HOOK}.hook_sae_acts_post", ablate)])
    torch.testing.assert_close(out, expected, atol=1e-10, rtol=1e-10)


def test_splicing_into_a_wrapped_hf_model_exposes_the_latents() -> None:
    hf = random_hf_model("gpt2")
    model = hookscope.wrap(hf)
    tokens = random_tokens(2, 6)
    clean = hf(tokens).logits
    sae = _sae(48, hook="blocks.0.hook_resid_post")
    with model.saes(sae, use_error_term=True):
        out, cache = model.run_with_cache(tokens)
    assert torch.equal(out.logits, clean)
    assert cache["blocks.0.hook_resid_post.hook_sae_acts_post"].shape == (2, 6, 37)
    with model.saes(sae):
        assert not torch.allclose(model(tokens).logits, clean)


def test_splicing_errors_name_the_problem(native) -> None:
    with pytest.raises(ValueError, match="no hook_name"):
        with native.saes(_sae(48, hook=None)):
            pass
    with pytest.raises(KeyError, match="unknown hook name"):
        with native.saes(_sae(48, hook="blocks.1.hook_resid_pots")):
            pass
    with native.saes(_sae(48)):
        with pytest.raises(ValueError, match="already spliced"):
            with native.saes({HOOK: _sae(48, hook=None)}):
                pass
    assert not native.active_hooks()


@pytest.mark.parametrize("arch,k", [("standard", None), ("topk", 6), ("jumprelu", None), ("batchtopk", 3)])
def test_saelens_folder_round_trip_keeps_outputs_and_documented_fields(tmp_path, arch: str, k) -> None:
    sae = _sae(19, arch, k)
    sae.norm_scaling_factor.fill_(1.7)  # folded into the weights on save
    x = torch.randn(4, 19)
    sae.save(tmp_path)
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    written = "jumprelu" if arch == "batchtopk" else arch
    assert cfg["architecture"] == written and cfg["d_in"] == 19 and cfg["d_sae"] == 37
    assert cfg["dtype"] == "float32" and cfg["apply_b_dec_to_input"] is True
    assert cfg["normalize_activations"] == "none" and cfg["metadata"]["hook_name"] == HOOK
    assert (cfg.get("k") == k) if arch == "topk" else "k" not in cfg
    tensors = load_file(tmp_path / "sae_weights.safetensors")
    shapes = {"W_enc": (19, 37), "W_dec": (37, 19), "b_enc": (37,), "b_dec": (19,)}
    if written == "jumprelu":
        shapes["threshold"] = (37,)
    assert {n: tuple(t.shape) for n, t in tensors.items()} == shapes
    loaded = SAE.load(tmp_path)
    assert loaded.cfg.architecture == written and loaded.hook_name == HOOK
    torch.testing.assert_close(loaded(x), sae(x), atol=1e-5, rtol=1e-5)


def test_a_folder_written_by_older_saelens_loads(tmp_path) -> None:
    gen = torch.Generator().manual_seed(0)
    w = {"W_enc": torch.randn(8, 16, generator=gen), "W_dec": torch.randn(16, 8, generator=gen),
         "b_enc": torch.randn(16, generator=gen), "b_dec": torch.randn(8, generator=gen)}
    save_file(w, str(tmp_path / "sae_weights.safetensors"))
    (tmp_path / "cfg.json").write_text(json.dumps({
        "architecture": "standard", "d_in": 8, "d_sae": 16, "dtype": "torch.float32", "device": "cuda",
        "hook_name": "blocks.8.hook_resid_pre", "model_name": "gpt2", "apply_b_dec_to_input": True,
        "normalize_activations": "none", "context_size": 128}))
    sae = load_sae(tmp_path)
    assert sae.hook_name == "blocks.8.hook_resid_pre" and sae.cfg.model_name == "gpt2"
    x = torch.randn(3, 8, generator=gen)
    expected = torch.relu((x - w["b_dec"]) @ w["W_enc"] + w["b_enc"]) @ w["W_dec"] + w["b_dec"]
    torch.testing.assert_close(sae(x), expected)


def test_unsupported_or_broken_folders_raise_clear_errors(tmp_path) -> None:
    (tmp_path / "cfg.json").write_text(json.dumps({"architecture": "gated", "d_in": 8, "d_sae": 16}))
    with pytest.raises(ValueError, match="'gated' is not supported"):
        load_sae(tmp_path)
    (tmp_path / "cfg.json").write_text(json.dumps({"architecture": "standard", "d_in": 8, "d_sae": 16}))
    save_file({"W_enc": torch.zeros(8, 15), "W_dec": torch.zeros(16, 8), "b_enc": torch.zeros(16),
               "b_dec": torch.zeros(8)}, str(tmp_path / "sae_weights.safetensors"))
    with pytest.raises(ValueError, match=r"W_enc has shape \(8, 15\)"):
        load_sae(tmp_path)
    with pytest.raises(FileNotFoundError, match="no SAE folder"):
        load_sae(tmp_path / "missing")
