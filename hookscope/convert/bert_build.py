"""Build a native :class:`Bert` from a source (HF model instance, folder, hub id or packaged model)."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from hookscope.convert.bert_hf import bert_config_from_hf, bert_rules
from hookscope.convert.build import build_model
from hookscope.models.bert import Bert


def build(source: Any, *, dtype: torch.dtype, device: torch.device, progress: bool) -> Bert:
    """Convert the config strictly, then stream every weight into a model built on the meta device."""
    cfg = bert_config_from_hf(source.hf_config, source.keys, source.get)
    if source.n_layers is not None:
        cfg = dataclasses.replace(cfg, n_layers=min(source.n_layers, cfg.n_layers))
    ties = [("unembed.weight", "embed.embed.weight")] if cfg.mlm_head and cfg.tie_embeddings else []
    return build_model(  # type: ignore[return-value]
        lambda: Bert(cfg),
        source.keys,
        source.get,
        bert_rules(cfg, source.keys),
        cfg.n_layers,
        dtype=dtype,
        device=device,
        ties=ties,
    )
