"""Build a native :class:`Decoder` from a source (export back to transformers: :mod:`hookscope.convert.export`)."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from hookscope.convert.build import build_model
from hookscope.convert.decoder_hf import decoder_config_from_hf
from hookscope.models.decoder import Decoder


def build(source: Any, *, dtype: torch.dtype, device: torch.device, progress: bool) -> Decoder:
    cfg, arch = decoder_config_from_hf(source.hf_config)
    if source.n_layers is not None:
        n = min(source.n_layers, cfg.n_layers)
        cfg = dataclasses.replace(cfg, n_layers=n, sliding_windows=cfg.sliding_windows[:n])
    ties = [("unembed.weight", "embed.weight")] if cfg.tie_embeddings else []
    bar = None
    if progress and cfg.n_layers >= 12:
        from tqdm.auto import tqdm

        bar = tqdm(desc=f"loading {source.describe()}", unit="tensor", leave=False)
    try:
        return build_model(  # type: ignore[return-value]
            lambda: Decoder(cfg), source.keys, source.get, arch.rules(cfg), cfg.n_layers,
            dtype=dtype, device=device, ties=ties, progress=bar,
        )
    finally:
        if bar is not None:
            bar.close()

