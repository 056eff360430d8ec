"""Run by an interpreter with sae-lens installed (never imports hookscope), for test_saelens_interop.py.

``read FOLDER... --x X --out OUT``: load each folder with SAELens's ``SAE.load_from_disk`` and write its
``encode`` / ``decode`` / ``forward`` of the rows in X. ``write FOLDER --x X --out OUT``: build SAELens
SAEs (standard, TopK with and without decoder-norm rescaling, JumpReLU) with random weights and non-unit
decoder rows, save each with ``save_model`` under FOLDER/<name>, and write their outputs on X.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


def _outputs(sae, x: torch.Tensor, name: str) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        acts = sae.encode(x)
        return {f"{name}/acts": acts, f"{name}/recons": sae.decode(acts), f"{name}/forward": sae(x)}


def read(folders: list[str], x: torch.Tensor) -> dict[str, torch.Tensor]:
    from sae_lens import SAE

    out: dict[str, torch.Tensor] = {}
    for folder in folders:
        out.update(_outputs(SAE.load_from_disk(folder).eval(), x, Path(folder).name))
    return out


def write(folder: Path, x: torch.Tensor) -> dict[str, torch.Tensor]:
    from sae_lens import JumpReLUSAE, JumpReLUSAEConfig, StandardSAE, StandardSAEConfig, TopKSAE, TopKSAEConfig

    d_in, d_sae = x.shape[1], 40
    meta = {"hook_name": "blocks.1.hook_resid_post", "model_name": "random"}
    saes = {
        "standard": StandardSAE(StandardSAEConfig(d_in=d_in, d_sae=d_sae)),
        "topk_rescaled": TopKSAE(TopKSAEConfig(d_in=d_in, d_sae=d_sae, k=6, rescale_acts_by_decoder_norm=True)),
        "topk_plain": TopKSAE(TopKSAEConfig(d_in=d_in, d_sae=d_sae, k=6, rescale_acts_by_decoder_norm=False)),
        "jumprelu": JumpReLUSAE(JumpReLUSAEConfig(d_in=d_in, d_sae=d_sae)),
    }
    gen = torch.Generator().manual_seed(7)
    out: dict[str, torch.Tensor] = {}
    for name, sae in saes.items():
        for key, value in meta.items():
            sae.cfg.metadata[key] = value
        with torch.no_grad():
            for pname, p in sae.named_parameters():
                scale = 0.3 if pname.startswith("W_") else 0.1
                p.copy_(torch.randn(p.shape, generator=gen) * scale)
                if pname == "threshold":
                    p.copy_(torch.rand(p.shape, generator=gen) * 0.2)
        sae.save_model(folder / name)
        out.update(_outputs(sae.eval(), x, name))
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["read", "write"])
    p.add_argument("folders", nargs="+")
    p.add_argument("--x", required=True)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    torch.set_num_threads(1)
    x = load_file(args.x)["x"]
    out = read(args.folders, x) if args.mode == "read" else write(Path(args.folders[0]), x)
    save_file({k: v.contiguous() for k, v in out.items()}, args.out)


if __name__ == "__main__":
    main()
