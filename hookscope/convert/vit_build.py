"""Build a native :class:`ViT` (ViT, DeiT, CLIP vision tower) from a source, with its image settings."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import torch

from hookscope.convert.build import build_model
from hookscope.convert.vit_hf import rules_for, vit_config_from_hf
from hookscope.models.vit import ViT
from hookscope.models.vit_images import ImageSettings, default_image_settings, settings_from_preprocessor

logger = logging.getLogger(__name__)


def image_settings_for(source: Any, model_type: str, image_size: tuple[int, int]) -> ImageSettings:
    """The source folder's ``preprocessor_config.json`` when it has one, else the HF processor defaults."""
    folder = Path(source.describe())
    path = folder / "preprocessor_config.json"
    if folder.is_dir() and path.is_file():
        try:
            return settings_from_preprocessor(json.loads(path.read_text()))
        except (json.JSONDecodeError, TypeError, ValueError) as err:
            logger.warning("ignoring unreadable %s (%s); using default image settings", path, err)
    return default_image_settings(model_type, image_size)


def build(source: Any, *, dtype: torch.dtype, device: torch.device, progress: bool) -> ViT:
    cfg = vit_config_from_hf(source.hf_config, source.keys)
    if source.n_layers is not None:
        cfg = dataclasses.replace(cfg, n_layers=min(source.n_layers, cfg.n_layers))
    settings = image_settings_for(source, source.hf_config.model_type, cfg.image_size)
    return build_model(  # type: ignore[return-value]
        lambda: ViT(cfg, settings), source.keys, source.get, rules_for(cfg), cfg.n_layers,
        dtype=dtype, device=device,
    )
