"""Build a native :class:`T5` or :class:`T5Encoder` from a source (for ``model_type "t5"``)."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from hookscope.convert.build import build_model
from hookscope.convert.t5_hf import lm_head_is_tied, t5_config_from_hf, t5_rules
from hookscope.models.t5 import T5, T5Encoder
from hookscope.models.t5_config import T5Config


def config_from_source(source: Any) -> T5Config:
    cfg = t5_config_from_hf(source.hf_config, source.keys, lm_head_is_tied(source.keys, source.get))
    if source.n_layers is not None:  # first-n-layers loading: both stacks are cut
        cfg = dataclasses.replace(
            cfg,
            n_encoder_layers=min(source.n_layers, cfg.n_encoder_layers),
            n_decoder_layers=min(source.n_layers, cfg.n_decoder_layers),
        )
    return cfg


def build(source: Any, *, dtype: torch.dtype, device: torch.device, progress: bool) -> T5Encoder:
    """The hooked T5 (or T5 encoder) with the source's weights, in ``dtype`` on ``device``."""
    cfg = config_from_source(source)
    cls = T5Encoder if cfg.encoder_only else T5
    ties = [("unembed.weight", "embed.weight")] if cfg.tie_embeddings and not cfg.encoder_only else []
    n_layers = max(cfg.n_encoder_layers, cfg.n_decoder_layers)  # unused: the rules name every layer
    model = build_model(
        lambda: cls(cfg),
        source.keys,
        source.get,
        t5_rules(cfg),
        n_layers,
        dtype=dtype,
        device=device,
        ties=ties,
    )
    model.tokenizer = source.tokenizer()
    return model  # type: ignore[return-value]


def from_hf(hf_model: Any, dtype: torch.dtype | None = None) -> T5Encoder:
    """Convert an instantiated transformers T5 model (convenience for tests and notebooks)."""
    from hookscope.convert.sources import hf_model_source

    source = hf_model_source(hf_model)
    param = next(hf_model.parameters())
    return build(source, dtype=dtype or param.dtype, device=param.device, progress=False)
