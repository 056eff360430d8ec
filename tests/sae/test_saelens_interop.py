"""SAELens interop for real: our folders load in SAELens and compute the same; SAELens's load in hookscope.

SAELens lives in another environment: set ``HOOKSCOPE_SAELENS_PYTHON`` to an interpreter with sae-lens
installed (the test runs ``saelens_interop_script.py`` with it); without it the test is skipped.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from hookscope.sae import SAE, SAEConfig, load_sae

PYTHON = os.environ.get("HOOKSCOPE_SAELENS_PYTHON")
SCRIPT = Path(__file__).with_name("saelens_interop_script.py")
pytestmark = pytest.mark.skipif(
    not PYTHON, reason="set HOOKSCOPE_SAELENS_PYTHON to a Python with sae-lens installed to run SAELens itself"
)


def _run(*args: str) -> dict[str, torch.Tensor]:
    out = Path(args[-1])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    done = subprocess.run([str(PYTHON), str(SCRIPT), *args], capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        pytest.fail(f"the SAELens side failed:\n{done.stderr[-4000:]}", pytrace=False)
    return load_file(str(out))


def _ours(arch: str, k: int | None, norm: str, seed: int) -> SAE:
    sae = SAE(SAEConfig(d_in=24, d_sae=40, architecture=arch, k=k, normalize_activations=norm,
                        hook_name="blocks.1.hook_resid_post", model_name="random"), seed=seed)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        sae.W_dec.mul_(torch.rand(40, 1, generator=gen) + 0.5)  # rows of unequal norms
        sae.b_enc.copy_(torch.randn(40, generator=gen) * 0.1)
        sae.b_dec.copy_(torch.randn(24, generator=gen) * 0.1)
        if hasattr(sae, "threshold"):
            sae.threshold.copy_(torch.rand(40, generator=gen) * 0.05)
        if norm == "expected_average_only_in":
            sae.norm_scaling_factor.fill_(1.7)
    return sae.eval()


CASES = {
    "standard": ("standard", None, "none"),
    "topk": ("topk", 6, "none"),
    "jumprelu": ("jumprelu", None, "none"),
    "batchtopk": ("batchtopk", 6, "none"),
    "topk_scaled": ("topk", 6, "expected_average_only_in"),
    "standard_layer_norm": ("standard", None, "layer_norm"),
    "standard_constant_norm": ("standard", None, "constant_norm_rescale"),
}


def test_our_folders_load_in_saelens_and_compute_the_same(tmp_path) -> None:
    x = torch.randn(13, 24, generator=torch.Generator().manual_seed(0)) * 2
    save_file({"x": x}, str(tmp_path / "x.safetensors"))
    ours = {name: _ours(*case, seed=i) for i, (name, case) in enumerate(CASES.items())}
    for name, sae in ours.items():
        sae.save(tmp_path / name)
    theirs = _run("read", *(str(tmp_path / n) for n in ours), "--x", str(tmp_path / "x.safetensors"),
                  "--out", str(tmp_path / "theirs.safetensors"))
    for name, sae in ours.items():
        with torch.no_grad():
            acts = sae.encode(x)
            recons, forward = sae.decode(acts), sae(x)
        # the scalar scale is folded into the saved weights, so SAELens's latents are ours (unscaled ones too)
        torch.testing.assert_close(theirs[f"{name}/acts"], acts, atol=1e-5, rtol=1e-5, msg=name)
        torch.testing.assert_close(theirs[f"{name}/recons"], recons, atol=1e-5, rtol=1e-5, msg=name)
        torch.testing.assert_close(theirs[f"{name}/forward"], forward, atol=1e-5, rtol=1e-5, msg=name)


def test_folders_saelens_saved_load_here_and_compute_the_same(tmp_path) -> None:
    x = torch.randn(13, 24, generator=torch.Generator().manual_seed(1)) * 2
    save_file({"x": x}, str(tmp_path / "x.safetensors"))
    theirs = _run("write", str(tmp_path), "--x", str(tmp_path / "x.safetensors"),
                  "--out", str(tmp_path / "theirs.safetensors"))
    for name in ("standard", "topk_rescaled", "topk_plain", "jumprelu"):
        sae = load_sae(tmp_path / name)
        assert sae.hook_name == "blocks.1.hook_resid_post" and sae.cfg.model_name == "random"
        with torch.no_grad():
            acts = sae.encode(x)
            recons = sae.decode(acts)
        # a rescaled TopK loads with its decoder norms folded into the encoder: SAELens's latents exactly
        torch.testing.assert_close(acts, theirs[f"{name}/acts"], atol=1e-5, rtol=1e-5, msg=name)
        torch.testing.assert_close(recons, theirs[f"{name}/recons"], atol=1e-5, rtol=1e-5, msg=name)
        torch.testing.assert_close(sae(x), theirs[f"{name}/forward"], atol=1e-5, rtol=1e-5, msg=name)

