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
    (tmp_path / "cfg.json").write_text(json.dumps({"architecture": "standard", "d_in": 8, "d_sae": 16,
                                                  "metadata": {"sae_lens_version": "6.1.0", "hook_head_index": -3}}))
    with pytest.raises(ValueError, match="hook_head_index=-3 is not a head number"):
        load_sae(tmp_path)
    (tmp_path / "cfg.json").write_text(json.dumps({"architecture": "standard", "d_in": 8, "d_sae": 16}))
    save_file({"W_enc": torch.zeros(8, 16), "W_dec": torch.zeros(16, 8), "b_enc": torch.zeros(16),
               "b_dec": torch.zeros(8), "scaling_factor": torch.full((16,), 2.0)},
              str(tmp_path / "sae_weights.safetensors"))
    with pytest.raises(ValueError, match="fine-tuning 'scaling_factor'"):
        load_sae(tmp_path)


# ---------------------------------------------------------------------------------------------------------
# SAELens 6 exactness: folders written by hand exactly as SAELens 6.x writes them, and SAELens's inference
# computation re-derived here from its definitions (SAE.process_sae_in, each architecture's encode / decode).
_SAELENS_FIELDS = {  # the dataclass fields SAELens 6's inference configs accept (besides "architecture")
    "standard": {"d_in", "d_sae", "dtype", "device", "apply_b_dec_to_input", "normalize_activations",
                 "reshape_activations", "metadata"},
    "jumprelu": {"d_in", "d_sae", "dtype", "device", "apply_b_dec_to_input", "normalize_activations",
                 "reshape_activations", "metadata"},
}
_SAELENS_FIELDS["topk"] = _SAELENS_FIELDS["standard"] | {"k", "rescale_acts_by_decoder_norm"}
_SAELENS_TENSORS = {"standard": {"W_enc", "b_enc", "W_dec", "b_dec"}, "topk": {"W_enc", "b_enc", "W_dec", "b_dec"},
                    "jumprelu": {"W_enc", "b_enc", "W_dec", "b_dec", "threshold"}}
_DTYPES = ("float32", "float64", "float16", "bfloat16", "torch.float32", "torch.float64", "torch.float16",
           "torch.bfloat16")


def _saelens_forward(cfg: dict, w: dict, x: torch.Tensor) -> torch.Tensor:
    """SAELens 6's inference forward (no error term), written from its definitions."""
    arch, norm = cfg["architecture"], cfg.get("normalize_activations", "none")
    if norm == "layer_norm":
        mu = x.mean(-1, keepdim=True)
        std = (x - mu).std(-1, keepdim=True)
        sae_in = (x - mu) / (std + 1e-5)
    elif norm == "constant_norm_rescale":
        coeff = cfg["d_in"] ** 0.5 / x.norm(dim=-1, keepdim=True)
        sae_in = x * coeff
    else:  # "none", and "expected_average_only_in" (identity inside SAELens's SAE)
        sae_in = x
    pre = (sae_in - w["b_dec"] * cfg["apply_b_dec_to_input"]) @ w["W_enc"] + w["b_enc"]
    dec_norm = w["W_dec"].norm(dim=-1)
    if arch == "topk":
        if cfg.get("rescale_acts_by_decoder_norm", False):
            pre = pre * dec_norm
        vals, idx = pre.topk(cfg["k"], dim=-1, sorted=False)
        acts = torch.zeros_like(pre).scatter(-1, idx, vals.relu())
        if cfg.get("rescale_acts_by_decoder_norm", False):
            acts = acts / dec_norm
    elif arch == "jumprelu":
        acts = pre.relu() * (pre > w["threshold"])
    else:
        acts = pre.relu()
    out = acts @ w["W_dec"] + w["b_dec"]
    if norm == "layer_norm":
        out = out * std + mu
    elif norm == "constant_norm_rescale":
        out = out / coeff
    return out


def _write_saelens_folder(folder, arch: str, norm: str = "none", **extra) -> tuple[dict, dict]:
    gen = torch.Generator().manual_seed(11)
    d_in, d_sae = 10, 24
    w = {"W_enc": torch.randn(d_in, d_sae, generator=gen, dtype=torch.float64) * 0.4,
         "b_enc": torch.randn(d_sae, generator=gen, dtype=torch.float64) * 0.2,
         "W_dec": torch.randn(d_sae, d_in, generator=gen, dtype=torch.float64) * 0.4,
         "b_dec": torch.randn(d_in, generator=gen, dtype=torch.float64) * 0.2}
    if arch == "jumprelu":  # some thresholds negative: SAELens applies ReLU before the threshold mask
        w["threshold"] = torch.rand(d_sae, generator=gen, dtype=torch.float64) * 0.6 - 0.2
    cfg = {"d_in": d_in, "d_sae": d_sae, "dtype": "float64", "device": "cuda", "apply_b_dec_to_input": True,
           "normalize_activations": norm, "reshape_activations": "none",
           "metadata": {"sae_lens_version": "6.18.0", "sae_lens_training_version": "6.18.0",
                        "model_name": "gpt2", "hook_name": "blocks.3.hook_resid_post", "hook_head_index": None,
                        "context_size": 128, "prepend_bos": True, "seqpos_slice": [None],
                        "model_from_pretrained_kwargs": {}},
           "architecture": arch, **extra}
    folder.mkdir(parents=True, exist_ok=True)
    save_file(w, str(folder / "sae_weights.safetensors"))
    (folder / "cfg.json").write_text(json.dumps(cfg))
    return cfg, w


@pytest.mark.parametrize("arch,norm,extra", [
    ("standard", "none", {}), ("standard", "layer_norm", {}), ("standard", "constant_norm_rescale", {}),
    ("topk", "none", {"k": 5, "rescale_acts_by_decoder_norm": False}),
    ("topk", "none", {"k": 5, "rescale_acts_by_decoder_norm": True}),
    ("jumprelu", "none", {}), ("jumprelu", "layer_norm", {}),
])
def test_folders_written_as_saelens_6_writes_them_load_and_compute_the_same(tmp_path, arch, norm, extra) -> None:
    cfg, w = _write_saelens_folder(tmp_path, arch, norm, **extra)
    sae = load_sae(tmp_path)
    assert sae.hook_name == "blocks.3.hook_resid_post" and sae.cfg.model_name == "gpt2"
    assert sae.cfg.normalize_activations == norm and sae.cfg.metadata["context_size"] == 128
    x = torch.randn(4, 6, 10, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 2 + 0.5
    torch.testing.assert_close(sae(x), _saelens_forward(cfg, w, x), atol=1e-10, rtol=1e-10)


def test_expected_average_only_in_reads_saelens_activation_scaler(tmp_path, caplog) -> None:
    cfg, w = _write_saelens_folder(tmp_path, "standard", "expected_average_only_in")
    x = torch.randn(5, 10, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    with caplog.at_level("WARNING"):  # no scale known: SAELens's own disk load applies none, and we say so
        torch.testing.assert_close(load_sae(tmp_path)(x), _saelens_forward(cfg, w, x), atol=1e-10, rtol=1e-10)
    assert "no scaling factor is known" in caplog.text
    (tmp_path / "activation_scaler.json").write_text(json.dumps({"scaling_factor": 0.37}))
    sae = load_sae(tmp_path)
    # SAELens's ActivationScaler: scale the input, run the SAE, unscale the output
    torch.testing.assert_close(sae(x), _saelens_forward(cfg, w, x * 0.37) / 0.37, atol=1e-10, rtol=1e-10)
    given = load_sae(tmp_path, norm_scaling_factor=2.0)
    torch.testing.assert_close(given(x), _saelens_forward(cfg, w, x * 2.0) / 2.0, atol=1e-10, rtol=1e-10)


def test_a_saelens_batchtopk_checkpoint_loads_as_its_jumprelu(tmp_path) -> None:
    cfg, w = _write_saelens_folder(tmp_path, "batchtopk", k=4.0, rescale_acts_by_decoder_norm=True)
    threshold = torch.tensor(0.3, dtype=torch.float64)  # BatchTopKTrainingSAE's scalar buffer
    save_file({**w, "topk_threshold": threshold}, str(tmp_path / "sae_weights.safetensors"))
    sae = load_sae(tmp_path)
    x = torch.randn(6, 10, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    # what SAELens saves for inference: decoder norms folded, a JumpReLU with threshold = topk_threshold
    n = w["W_dec"].norm(dim=-1)
    folded = {"W_enc": w["W_enc"] * n, "b_enc": w["b_enc"] * n, "W_dec": w["W_dec"] / n[:, None],
              "b_dec": w["b_dec"], "threshold": torch.full((24,), 0.3, dtype=torch.float64)}
    expected = _saelens_forward({**cfg, "architecture": "jumprelu"}, folded, x)
    torch.testing.assert_close(sae(x), expected, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("arch,k,norm,hook", [
    ("standard", None, "none", HOOK), ("topk", 6, "none", HOOK), ("jumprelu", None, "layer_norm", HOOK),
    ("batchtopk", 3, "none", HOOK), ("standard", None, "constant_norm_rescale", "blocks.0.attn.hook_z"),
])
def test_our_folder_satisfies_every_field_saelens_6_reads(tmp_path, arch, k, norm, hook) -> None:
    sae = SAE(SAEConfig(d_in=19, d_sae=37, architecture=arch, k=k, hook_name=hook, dtype="float64",
                        normalize_activations=norm, model_name="m"), seed=0).eval()
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.1)
        if hasattr(sae, "threshold"):
            sae.threshold.uniform_(0, 0.05)
    sae.save(tmp_path)
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    written = cfg["architecture"]
    assert written in _SAELENS_FIELDS  # an architecture SAELens's inference registry knows
    # SAELens takes a missing or < 6 sae_lens_version as a pre-6 config and rebuilds the metadata from top-level keys
    assert int(cfg["metadata"]["sae_lens_version"].split(".")[0]) >= 6
    assert {"hook_name", "model_name"} <= set(cfg["metadata"]) and cfg["metadata"]["hook_name"] == hook
    assert _SAELENS_FIELDS[written] <= set(cfg) and cfg["dtype"] in _DTYPES
    assert isinstance(cfg["d_in"], int) and isinstance(cfg["d_sae"], int)
    assert cfg["normalize_activations"] in ("none", "expected_average_only_in", "constant_norm_rescale", "layer_norm")
    assert cfg["reshape_activations"] == ("hook_z" if hook.endswith("hook_z") else "none")
    if written == "topk":
        assert isinstance(cfg["k"], int) and cfg["rescale_acts_by_decoder_norm"] is False
    tensors = load_file(tmp_path / "sae_weights.safetensors")
    assert set(tensors) == _SAELENS_TENSORS[written]  # SAELens's load_state_dict is strict
    assert all(t.dtype == torch.float64 for t in tensors.values())
    x = torch.randn(5, 19, dtype=torch.float64)
    reference = _saelens_forward(cfg, {n: t for n, t in tensors.items()}, x)
    torch.testing.assert_close(reference, sae(x), atol=1e-10, rtol=1e-10)


def test_a_pre_6_topk_folder_with_hook_point_and_bool_normalisation_loads(tmp_path) -> None:
    _, w = _write_saelens_folder(tmp_path, "standard")
    (tmp_path / "cfg.json").write_text(json.dumps({  # as SAELens 3-5 wrote it: no metadata, no version
        "d_in": 10, "d_sae": 24, "dtype": "torch.float64", "device": "cpu", "model_name": "gpt2",
        "hook_point": "blocks.2.hook_resid_pre", "hook_point_layer": 2, "activation_fn_str": "topk",
        "activation_fn": "topk", "activation_fn_kwargs": {"k": 3}, "normalize_activations": False,
        "apply_b_dec_to_input": False, "context_size": 64, "prepend_bos": True}))
    sae = load_sae(tmp_path)
    assert sae.cfg.architecture == "topk" and sae.cfg.k == 3 and sae.cfg.normalize_activations == "none"
    assert sae.hook_name == "blocks.2.hook_resid_pre" and sae.cfg.metadata["context_size"] == 64
    x = torch.randn(4, 10, dtype=torch.float64)
    cfg = {"architecture": "topk", "k": 3, "apply_b_dec_to_input": False, "d_in": 10}
    torch.testing.assert_close(sae(x), _saelens_forward(cfg, w, x), atol=1e-10, rtol=1e-10)
