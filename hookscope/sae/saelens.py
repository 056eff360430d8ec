"""SAELens's on-disk format: a folder with ``cfg.json`` and ``sae_weights.safetensors``.

``cfg.json`` holds ``architecture`` ("standard", "topk", "jumprelu"), ``d_in``, ``d_sae``, ``dtype``, ``k``
(topk), ``apply_b_dec_to_input``, ``normalize_activations`` and a ``metadata`` dict (``hook_name``,
``model_name``...); older SAELens versions put ``hook_name`` and ``model_name`` at the top level, which is
read too. The weights are ``W_enc [d_in, d_sae]``, ``W_dec [d_sae, d_in]``, ``b_enc [d_sae]``, ``b_dec [d_in]``
and, for JumpReLU, ``threshold [d_sae]``.

Saving writes inference weights: a fitted activation scale is folded into the weights (written as
``normalize_activations: "none"``), and a BatchTopK SAE is written as the JumpReLU it is at inference
(its estimated threshold per latent), which is how SAELens stores it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from hookscope.sae.config import SAEConfig
from hookscope.sae.sae import SAE

CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae_weights.safetensors"
_SAELENS_ARCHITECTURES = ("standard", "topk", "jumprelu", "batchtopk")


def save_sae(sae: SAE, folder: str | Path) -> Path:
    """Write ``sae`` to ``folder`` (created if needed) in SAELens's format; returns the folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    c = sae.cfg
    s = sae.norm_scaling_factor.detach()
    tensors = {
        "W_enc": sae.W_enc.detach() * s,
        "W_dec": sae.W_dec.detach() / s,
        "b_enc": sae.b_enc.detach().clone(),
        "b_dec": sae.b_dec.detach() / s,
    }
    architecture = "jumprelu" if c.architecture == "batchtopk" else c.architecture
    if architecture == "jumprelu":
        tensors["threshold"] = sae.threshold.detach().clone()
    tensors = {k: v.contiguous().cpu() for k, v in tensors.items()}
    cfg: dict[str, Any] = {
        "architecture": architecture,
        "d_in": c.d_in,
        "d_sae": c.d_sae,
        "dtype": c.dtype,
        "device": "cpu",
        "apply_b_dec_to_input": c.apply_b_dec_to_input,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": {**c.metadata, "hook_name": c.hook_name, "model_name": c.model_name,
                     "trained_with": "hookscope", "trained_architecture": c.architecture},
    }
    if architecture == "topk":
        cfg["k"] = c.k
    save_file(tensors, str(folder / WEIGHTS_FILE), metadata={"format": "pt"})
    (folder / CFG_FILE).write_text(json.dumps(cfg, indent=2))
    return folder


def _resolve_folder(source: str | Path, subfolder: str | None) -> Path:
    path = Path(source)
    if path.is_dir():
        return path / subfolder if subfolder else path
    if isinstance(source, str) and source.count("/") == 1 and not path.exists():
        try:  # a hub repo id: download just this SAE's folder (needs the network)
            from huggingface_hub import snapshot_download

            pattern = f"{subfolder}/*" if subfolder else None
            local = Path(snapshot_download(source, allow_patterns=pattern))
        except Exception as err:
            raise FileNotFoundError(
                f"{source!r} is not a local folder and could not be fetched from the Hugging Face hub: {err}"
            ) from err
        return local / subfolder if subfolder else local
    raise FileNotFoundError(f"no SAE folder at {str(source)!r} (expected {CFG_FILE} and {WEIGHTS_FILE} inside)")


def read_config(folder: Path, dtype: str | None = None) -> SAEConfig:
    """An :class:`SAEConfig` from a ``cfg.json``; a clear error for a missing field or an unknown architecture."""
    path = folder / CFG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{folder} has no {CFG_FILE}: not an SAE folder in SAELens's format")
    raw = json.loads(path.read_text())
    missing = [k for k in ("d_in", "d_sae") if k not in raw]
    if missing:
        raise ValueError(f"{path} lacks the required field(s) {missing}")
    arch = raw.get("architecture", "standard")
    if arch not in _SAELENS_ARCHITECTURES:
        raise ValueError(
            f"{path}: SAE architecture {arch!r} is not supported; hookscope reads {list(_SAELENS_ARCHITECTURES)}"
        )
    norm = raw.get("normalize_activations") or "none"
    if norm not in ("none", "expected_average_only_in"):
        raise ValueError(f"{path}: normalize_activations={norm!r} is not supported (only 'none' and folded scales)")
    meta = dict(raw.get("metadata") or {})
    return SAEConfig(
        d_in=int(raw["d_in"]), d_sae=int(raw["d_sae"]), architecture=arch, k=raw.get("k"),
        apply_b_dec_to_input=bool(raw.get("apply_b_dec_to_input", True)),
        normalize_activations="none", dtype=dtype or str(raw.get("dtype", "float32")).replace("torch.", ""),
        hook_name=meta.pop("hook_name", None) or raw.get("hook_name"),
        model_name=meta.pop("model_name", None) or raw.get("model_name"),
        metadata=meta,
    )


def load_sae(
    source: str | Path, device: torch.device | str | None = None, dtype: str | None = None,
    subfolder: str | None = None,
) -> SAE:
    """Read an SAE written by :func:`save_sae` or by SAELens (a folder, or a hub repo id + ``subfolder``)."""
    folder = _resolve_folder(source, subfolder)
    cfg = read_config(folder, dtype)
    weights_path = folder / WEIGHTS_FILE
    if not weights_path.is_file():
        raise FileNotFoundError(f"{folder} has {CFG_FILE} but no {WEIGHTS_FILE}")
    tensors = load_file(str(weights_path))
    sae = SAE(cfg, device=device)
    expected = {"W_enc": (cfg.d_in, cfg.d_sae), "W_dec": (cfg.d_sae, cfg.d_in), "b_enc": (cfg.d_sae,),
                "b_dec": (cfg.d_in,)}
    if cfg.architecture in ("jumprelu", "batchtopk"):
        expected["threshold"] = (cfg.d_sae,)
    missing = [k for k in expected if k not in tensors]
    if missing:
        raise ValueError(f"{weights_path} lacks {missing} (has {sorted(tensors)})")
    with torch.no_grad():
        for name, shape in expected.items():
            t = tensors[name]
            if tuple(t.shape) != shape:
                raise ValueError(f"{weights_path}: {name} has shape {tuple(t.shape)}, cfg.json implies {shape}")
            getattr(sae, name).copy_(t.to(getattr(sae, name).dtype))
    return sae.eval()
