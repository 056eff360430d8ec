"""Build a native :class:`Whisper` from a source (export back to transformers: :mod:`hookscope.convert.export`)."""

from __future__ import annotations

from typing import Any

import torch

from hookscope.convert.build import build_model
from hookscope.convert.engine import ConversionError
from hookscope.convert.whisper_hf import whisper_config_from_hf, whisper_rules
from hookscope.models.whisper import Whisper


def build(source: Any, *, dtype: torch.dtype, device: torch.device, progress: bool) -> Whisper:
    """Whisper from any source whose HF config is a ``WhisperConfig`` (HF folder, hub, model, CTranslate2)."""
    if source.n_layers is not None:
        raise ConversionError(
            "n_layers is not supported for Whisper (encoder and decoder depths differ); load the whole model"
        )
    cfg = whisper_config_from_hf(source.hf_config)
    model = build_model(
        lambda: Whisper(cfg),
        source.keys,
        source.get,
        whisper_rules(cfg),
        0,
        dtype=dtype,
        device=device,
        ties=[("unembed.weight", "embed.weight")],
    )
    return model  # type: ignore[return-value]

