"""SAELens's on-disk format (version 6): a folder with ``cfg.json`` and ``sae_weights.safetensors``.

``cfg.json`` holds ``architecture`` ("standard", "topk", "jumprelu"; "batchtopk" only in SAELens's training
checkpoints), ``d_in``, ``d_sae``, ``dtype``, ``device``, ``apply_b_dec_to_input``, ``normalize_activations``
("none", "expected_average_only_in", "constant_norm_rescale", "layer_norm"), ``reshape_activations``
("none" or "hook_z"), for TopK ``k`` and ``rescale_acts_by_decoder_norm``, and a ``metadata`` dict
(``sae_lens_version``, ``hook_name``, ``model_name``, ``hook_head_index``, ``context_size``, ``prepend_bos``...).
SAELens treats a folder whose ``metadata.sae_lens_version`` is missing or below 6 as a pre-6 config (top-level
``hook_name`` / ``hook_point``, boolean ``normalize_activations``, ``activation_fn: "topk"``), which is read too.
The weights are ``W_enc [d_in, d_sae]``, ``W_dec [d_sae, d_in]``, ``b_enc [d_sae]``, ``b_dec [d_in]`` and, for
JumpReLU, ``threshold [d_sae]`` (a BatchTopK checkpoint has the scalar ``topk_threshold`` instead).

SAELens keeps the "expected_average_only_in" scale outside the folder (``activation_scaler.json`` beside a
training checkpoint) and applies none when loading from disk; we read that file when it is there. A TopK
SAE with ``rescale_acts_by_decoder_norm`` is loaded with its decoder norms folded into the encoder (the same
function). Saving writes inference weights: a fitted scalar scale is folded in (written as "none"), and a
BatchTopK SAE is written as the JumpReLU it is at inference, as SAELens does.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from hookscope.sae.config import NORMALIZATIONS, SAEConfig
from hookscope.sae.sae import SAE

logger = logging.getLogger(__name__)

CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae_weights.safetensors"
SCALER_FILE = "activation_scaler.json"
FORMAT_VERSION = "6.0.0"  # the SAELens version whose cfg.json layout we write (its loader checks it)
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
    folded = c.normalize_activations in ("none", "expected_average_only_in")
    metadata = {"sae_lens_version": FORMAT_VERSION, "trained_with": "hookscope",
                "trained_architecture": c.architecture, **c.metadata,
                "hook_name": c.hook_name, "model_name": c.model_name, "hook_head_index": c.hook_head_index}
    if _is_pre_6(metadata):  # a version carried over from an old folder would make SAELens misread this one
        metadata["sae_lens_version"] = FORMAT_VERSION
    cfg: dict[str, Any] = {
        "architecture": architecture,
        "d_in": c.d_in,
        "d_sae": c.d_sae,
        "dtype": c.dtype,
        "device": "cpu",
        "apply_b_dec_to_input": c.apply_b_dec_to_input,
        "normalize_activations": "none" if folded else c.normalize_activations,
        # a single-head SAE reads [..., d_head] rows, not the heads flattened
        "reshape_activations": "hook_z" if (c.hook_name or "").endswith("hook_z") and c.hook_head_index is None
        else "none",
        "metadata": metadata,
    }
    if architecture == "topk":
        cfg["k"] = c.k
        cfg["rescale_acts_by_decoder_norm"] = False  # our TopK picks the top k of the raw pre-activations
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


def _pre_6_config(raw: dict[str, Any]) -> dict[str, Any]:
    """A config SAELens < 6 wrote, in version 6's layout (hook_point renamed, bool normalisation, topk fn)."""
    raw = {{"hook_point": "hook_name"}.get(k, k): v for k, v in raw.items()}
    meta = {k: raw[k] for k in ("hook_name", "model_name", "hook_head_index", "context_size", "prepend_bos",
                                "dataset_path") if k in raw}
    raw["metadata"] = {**meta, **dict(raw.get("metadata") or {})}
    if raw.get("activation_fn") == "topk" and (raw.get("activation_fn_kwargs") or {}).get("k") is not None:
        raw["architecture"], raw["k"] = "topk", raw["activation_fn_kwargs"]["k"]
    norm = raw.get("normalize_activations")
    raw["normalize_activations"] = ("expected_average_only_in" if norm else "none") if isinstance(
        norm, bool) or norm is None else norm
    return raw


def _is_pre_6(raw: dict[str, Any]) -> bool:
    version = raw.get("sae_lens_version") or (raw.get("metadata") or {}).get("sae_lens_version")
    try:
        return not version or int(str(version).split(".")[0]) < 6
    except ValueError:
        return False


def read_raw_config(folder: Path) -> dict[str, Any]:
    """``cfg.json`` as a dict in SAELens 6's layout (older layouts converted)."""
    path = folder / CFG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{folder} has no {CFG_FILE}: not an SAE folder in SAELens's format")
    raw = json.loads(path.read_text())
    if not isinstance(raw, dict):
        raise ValueError(f"{path} does not hold a JSON object")
    return _pre_6_config(raw) if _is_pre_6(raw) else raw


def read_config(folder: Path, dtype: str | None = None) -> SAEConfig:
    """An :class:`SAEConfig` from a ``cfg.json``; a clear error for a missing field or an unknown architecture."""
    path = folder / CFG_FILE
    raw = read_raw_config(folder)
    missing = [k for k in ("d_in", "d_sae") if k not in raw]
    if missing:
        raise ValueError(f"{path} lacks the required field(s) {missing}")
    arch = raw.get("architecture", "standard")
    if arch not in _SAELENS_ARCHITECTURES:
        raise ValueError(
            f"{path}: SAE architecture {arch!r} is not supported; hookscope reads {list(_SAELENS_ARCHITECTURES)}"
        )
    norm = raw.get("normalize_activations") or "none"
    if norm not in NORMALIZATIONS:
        raise ValueError(f"{path}: normalize_activations={norm!r} is not supported; hookscope reads {NORMALIZATIONS}")
    k = raw.get("k")
    if arch == "topk" and k is None:
        raise ValueError(f"{path}: a topk SAE needs the field 'k'")
    meta = dict(raw.get("metadata") or {})
    head = meta.pop("hook_head_index", None)
    head = raw.get("hook_head_index") if head is None else head
    if head is not None and (isinstance(head, bool) or not isinstance(head, int) or head < 0):
        raise ValueError(f"{path}: hook_head_index={head!r} is not a head number")
    return SAEConfig(
        d_in=int(raw["d_in"]), d_sae=int(raw["d_sae"]), architecture=arch,
        k=max(1, round(float(k))) if arch in ("topk", "batchtopk") and k is not None else None,
        apply_b_dec_to_input=bool(raw.get("apply_b_dec_to_input", True)),
        normalize_activations=norm, dtype=dtype or str(raw.get("dtype", "float32")).replace("torch.", ""),
        hook_name=meta.pop("hook_name", None) or raw.get("hook_name"),
        model_name=meta.pop("model_name", None) or raw.get("model_name"),
        hook_head_index=head, metadata=meta,
    )


def _read_scale(folder: Path, override: float | None) -> float:
    """The "expected_average_only_in" scale: the override, else ``activation_scaler.json``, else 1 (warned)."""
    if override is not None:
        return float(override)
    path = folder / SCALER_FILE
    factor = json.loads(path.read_text()).get("scaling_factor") if path.is_file() else None
    if factor is None:
        logger.warning(
            "%s: normalize_activations='expected_average_only_in' but no scaling factor is known (no %s and no "
            "norm_scaling_factor given); inputs are not scaled, as SAELens does when loading from disk",
            folder, SCALER_FILE,
        )
        return 1.0
    return float(factor)


def _checked_tensors(weights_path: Path, cfg: SAEConfig) -> dict[str, torch.Tensor]:
    tensors = dict(load_file(str(weights_path)))
    scale = tensors.pop("scaling_factor", None)
    if scale is not None and not torch.all(scale == 1):
        raise ValueError(f"{weights_path} has a fine-tuning 'scaling_factor' (not 1), which hookscope does not read")
    if cfg.architecture == "batchtopk" and "topk_threshold" in tensors:  # SAELens's BatchTopK checkpoint
        tensors["threshold"] = tensors.pop("topk_threshold").reshape(()).expand(cfg.d_sae)
    expected = {"W_enc": (cfg.d_in, cfg.d_sae), "W_dec": (cfg.d_sae, cfg.d_in), "b_enc": (cfg.d_sae,),
                "b_dec": (cfg.d_in,)}
    if cfg.architecture in ("jumprelu", "batchtopk"):
        expected["threshold"] = (cfg.d_sae,)
    missing = [k for k in expected if k not in tensors]
    extra = sorted(set(tensors) - set(expected))
    if missing or extra:
        raise ValueError(f"{weights_path} lacks {missing} / has unexpected {extra} (has {sorted(tensors)})")
    for name, shape in expected.items():
        if tuple(tensors[name].shape) != shape:
            raise ValueError(
                f"{weights_path}: {name} has shape {tuple(tensors[name].shape)}, cfg.json implies {shape}"
            )
    return tensors


def load_sae(
    source: str | Path, device: torch.device | str | None = None, dtype: str | None = None,
    subfolder: str | None = None, norm_scaling_factor: float | None = None,
) -> SAE:
    """Read an SAE written by :func:`save_sae` or by SAELens (a folder, or a hub repo id + ``subfolder``).

    ``norm_scaling_factor`` gives the "expected_average_only_in" scale of a folder that does not carry it
    (SAELens's pretrained directory lists it per release).
    """
    folder = _resolve_folder(source, subfolder)
    cfg = read_config(folder, dtype)
    raw = read_raw_config(folder)
    weights_path = folder / WEIGHTS_FILE
    if not weights_path.is_file():
        raise FileNotFoundError(f"{folder} has {CFG_FILE} but no {WEIGHTS_FILE}")
    tensors = _checked_tensors(weights_path, cfg)
    sae = SAE(cfg, device=device)
    with torch.no_grad():
        for name, t in tensors.items():
            getattr(sae, name).copy_(t.to(getattr(sae, name).dtype))
        if cfg.normalize_activations == "expected_average_only_in":
            sae.norm_scaling_factor.fill_(_read_scale(folder, norm_scaling_factor))
        rescale = raw.get("rescale_acts_by_decoder_norm", cfg.architecture == "batchtopk")
        if cfg.architecture in ("topk", "batchtopk") and rescale:
            # pre-activations times |W_dec[i]|, latents divided by it before decoding == these folded weights
            norms = sae.W_dec.norm(dim=-1)  # [d_sae]
            sae.W_enc.mul_(norms)
            sae.b_enc.mul_(norms)
            sae.W_dec.div_(norms[:, None])
    return sae.eval()
