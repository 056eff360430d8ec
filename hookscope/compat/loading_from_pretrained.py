"""``transformer_lens.loading_from_pretrained``: official names and aliases, and a model's
``HookedTransformerConfig`` read from its Hugging Face config alone (no weights are loaded).

The config goes through the native converter (:func:`hookscope.convert.decoder_hf.decoder_config_from_hf`), the
same one :meth:`HookedTransformer.from_pretrained` uses, so ``get_pretrained_model_config(name)`` equals the
``cfg`` of the loaded model. Only the decoder families hookscope runs natively are accepted; any other
architecture is refused with the converter's error.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig  # a module attribute, as in TL (TL code patches it in tests)

from hookscope.compat.config import HookedTransformerConfig
from hookscope.compat.pretrained import (  # noqa: F401  (TL's names, re-exported)
    _LOOKUP,
    OFFICIAL_NAMES,
    PYTHIA_CHECKPOINTS,
    PYTHIA_V0_CHECKPOINTS,
    STANFORD_CRFM_CHECKPOINTS,
    _resolve_source,
    checkpoint_revision,
    get_checkpoint_labels,
    get_official_model_name,
)
from hookscope.convert.decoder_hf import decoder_config_from_hf

logger = logging.getLogger(__name__)

OFFICIAL_MODEL_NAMES: list[str] = list(OFFICIAL_NAMES)
MODEL_ALIASES: dict[str, list[str]] = {name: list(aliases) for name, aliases in OFFICIAL_NAMES.items()}
_HF_KWARGS = ("revision", "cache_dir", "local_files_only", "token", "subfolder")


def _hf_config(source: str, hf_cfg: dict | None, kwargs: dict[str, Any]) -> Any:
    """The transformers config: built from ``hf_cfg`` (a model's ``config.to_dict()``) when given, else read
    from the folder / hub id (transformers' cache; no remote code)."""
    if kwargs.get("trust_remote_code"):
        raise ValueError("trust_remote_code is not supported: hookscope runs only its own native code")
    if hf_cfg is not None:
        values = dict(hf_cfg)
        model_type = values.pop("model_type", None)
        if model_type is None:
            raise ValueError("hf_cfg must be a transformers config dict with its 'model_type'")
        return AutoConfig.for_model(model_type, **values)
    options = {k: v for k, v in kwargs.items() if k in _HF_KWARGS}
    return AutoConfig.from_pretrained(source, trust_remote_code=False, **options)


def get_pretrained_model_config(
    model_name: str, hf_cfg: dict | None = None, checkpoint_index: int | None = None,
    checkpoint_value: int | None = None, fold_ln: bool = False, device: str | torch.device | None = None,
    n_devices: int = 1, default_prepend_bos: bool | None = None, dtype: torch.dtype = torch.float32,
    first_n_layers: int | None = None, n_ctx: int | None = None, **kwargs: Any,
) -> HookedTransformerConfig:
    """TL's ``get_pretrained_model_config``: the ``HookedTransformerConfig`` of a TL name / alias, hub id or
    local folder, from its HF config only. ``fold_ln`` reports the folded norm (``LNPre`` / ``RMSPre``) as
    TL does; ``first_n_layers`` / ``n_ctx`` override the depth / context length."""
    if checkpoint_index is not None or checkpoint_value is not None:  # the config as of that checkpoint
        kwargs = {**kwargs, "revision": checkpoint_revision(model_name, checkpoint_index, checkpoint_value)}
    if n_devices != 1:
        raise NotImplementedError("n_devices > 1: use hookscope.load(..., device_map='auto')")
    if Path(model_name).exists() or (hf_cfg is not None and model_name.lower() not in _LOOKUP):
        source = model_name  # a folder, or a config given in full: the name only labels it
    else:
        source = _resolve_source(model_name)
    native, _ = decoder_config_from_hf(_hf_config(source, hf_cfg, kwargs))
    if first_n_layers is not None:
        if not 1 <= first_n_layers <= native.n_layers:
            raise ValueError(f"first_n_layers must be in 1..{native.n_layers}, got {first_n_layers}")
        native = dataclasses.replace(native, n_layers=first_n_layers,
                                     sliding_windows=native.sliding_windows[:first_n_layers])
    if n_ctx is not None:
        if n_ctx > native.n_ctx:
            logger.warning("n_ctx=%d is longer than the %d positions %s was trained on", n_ctx, native.n_ctx,
                           model_name)
        native = dataclasses.replace(native, n_ctx=n_ctx)
    cfg = HookedTransformerConfig.from_native(
        native, model_name=source.rstrip("/").split("/")[-1], tokenizer_name=source, dtype=dtype,
        device=None if device is None else str(device),
        default_prepend_bos=True if default_prepend_bos is None else default_prepend_bos, init_weights=False,
    )
    if fold_ln:
        if cfg.normalization_type in ("LN", "RMS"):
            cfg.normalization_type += "Pre"
        elif cfg.normalization_type not in ("LNPre", "RMSPre"):
            logger.warning("cannot fold the norm: normalization_type is %s", cfg.normalization_type)
    return cfg


def convert_hf_model_config(model_name: str, **kwargs: Any) -> dict[str, Any]:
    """The TL config of a model as a dict (TL's ``convert_hf_model_config``)."""
    return get_pretrained_model_config(model_name, **kwargs).to_dict()


def fill_missing_keys(model: torch.nn.Module, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Add every key of ``model.state_dict()`` that ``state_dict`` lacks, with the model's current value (in
    place; returned). A missing weight matrix (``W_*``) is logged as a warning."""
    defaults = model.state_dict()
    for key in sorted(set(defaults) - set(state_dict)):
        if "W_" in key:
            logger.warning("missing weight matrix %s in the state dict: filled with the model's own value", key)
        state_dict[key] = defaults[key]
    return state_dict


@dataclasses.dataclass
class Config:
    """TL's small ``Config`` of a model's basic sizes (what ``get_basic_config`` returns)."""

    d_model: int = 768
    debug: bool = True
    layer_norm_eps: float = 1e-5
    d_vocab: int = 50257
    init_range: float = 0.02
    n_ctx: int = 1024
    d_head: int = 64
    d_mlp: int = 3072
    n_heads: int = 12
    n_layers: int = 12


def get_basic_config(model_name: str, **kwargs: Any) -> Config:
    """The basic sizes of a pretrained model (``layer_norm_eps`` / ``init_range`` are the model's ``eps`` /
    ``initializer_range``)."""
    cfg = get_pretrained_model_config(model_name, **kwargs)
    return Config(d_model=cfg.d_model, layer_norm_eps=cfg.eps, d_vocab=cfg.d_vocab,
                  init_range=cfg.initializer_range, n_ctx=cfg.n_ctx, d_head=cfg.d_head, d_mlp=cfg.d_mlp or 0,
                  n_heads=cfg.n_heads, n_layers=cfg.n_layers)


__all__ = [
    "MODEL_ALIASES", "OFFICIAL_MODEL_NAMES", "Config", "convert_hf_model_config", "fill_missing_keys",
    "get_basic_config", "get_official_model_name", "get_pretrained_model_config",
]
