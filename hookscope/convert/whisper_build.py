"""Build a native :class:`Whisper` from a source, and export one back to transformers (``to_hf``)."""

from __future__ import annotations

from typing import Any

import torch

from hookscope.convert.build import build_model
from hookscope.convert.engine import ConversionError, RuleSet, convert_state_dict
from hookscope.convert.whisper_hf import hf_config_values, whisper_config_from_hf, whisper_rules
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


def to_hf(model: Whisper) -> Any:
    """A transformers ``WhisperForConditionalGeneration`` with this model's weights."""
    import transformers

    hf_config = transformers.WhisperConfig(**hf_config_values(model.cfg))
    hf_model = transformers.WhisperForConditionalGeneration(hf_config)
    ruleset = RuleSet(whisper_rules(model.cfg).inverted().rules, ignore_sources=(r"^unembed\.weight$",))
    state = {k: v.detach() for k, v in model.state_dict().items()}
    expected = [k for k in hf_model.state_dict() if k != "proj_out.weight"]
    hf_model.load_state_dict(convert_state_dict(state, ruleset, 0, expected), strict=False)
    hf_model.tie_weights()
    return hf_model.to(next(model.parameters()).dtype).eval()
