"""hookscope: every activation of a transformer, named, cached, edited and ablated.

Importing the package is light: torch, transformers and matplotlib load only when a name that needs
them is first used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS: dict[str, str] = {
    "HookPoint": "hookscope.hooks",
    "HookedModule": "hookscope.hooks",
    "HookError": "hookscope.hooks",
    "StopForward": "hookscope.hooks",
    "ActivationCache": "hookscope.cache",
    "get_act_name": "hookscope.names",
    "load": "hookscope.loading",
    "LoadError": "hookscope.loading",
    "DecoderConfig": "hookscope.models.decoder_config",
    "Decoder": "hookscope.models.decoder",
    "Bert": "hookscope.models.bert",
    "T5": "hookscope.models.t5",
    "T5Encoder": "hookscope.models.t5",
    "ViT": "hookscope.models.vit",
    "Whisper": "hookscope.models.whisper",
    "wrap": "hookscope.bridge",
    "WrappedModel": "hookscope.bridge",
    "generate": "hookscope.generation.api",
    "class_lens": "hookscope.analysis.vision",
    "attention_rollout": "hookscope.analysis.vision",
    "save_attention_overlay": "hookscope.analysis.vision",
    "load_audio": "hookscope.audio",
    "logit_lens": "hookscope.analysis.lens",
    "LensResult": "hookscope.analysis.lens",
    "partial_forward": "hookscope.analysis.partial",
    "accumulated_resid": "hookscope.analysis.residual",
    "decompose_resid": "hookscope.analysis.residual",
    "stack_head_results": "hookscope.analysis.residual",
    "apply_ln_to_stack": "hookscope.analysis.residual",
    "logit_attrs": "hookscope.analysis.residual",
    "tokens_to_residual_directions": "hookscope.analysis.residual",
    "DiT": "hookscope.models.dit",
    "DiTConfig": "hookscope.models.dit_config",
    "at_calls": "hookscope.hooks",
    "at_steps": "hookscope.hooks",
    "MultipleCallsError": "hookscope.cache",
    "keep_freed_memory": "hookscope.memory",
    "release_freed_memory": "hookscope.memory",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'hookscope' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:  # pragma: no cover
    from hookscope.analysis.lens import LensResult, logit_lens
    from hookscope.analysis.partial import partial_forward
    from hookscope.analysis.residual import (
        accumulated_resid,
        apply_ln_to_stack,
        decompose_resid,
        logit_attrs,
        stack_head_results,
        tokens_to_residual_directions,
    )
    from hookscope.analysis.vision import attention_rollout, class_lens, save_attention_overlay
    from hookscope.audio import load_audio
    from hookscope.bridge import WrappedModel, wrap
    from hookscope.cache import ActivationCache, MultipleCallsError
    from hookscope.generation.api import generate
    from hookscope.hooks import HookedModule, HookError, HookPoint, StopForward, at_calls, at_steps
    from hookscope.loading import LoadError, load
    from hookscope.memory import keep_freed_memory, release_freed_memory
    from hookscope.models.bert import Bert
    from hookscope.models.decoder import Decoder
    from hookscope.models.decoder_config import DecoderConfig
    from hookscope.models.dit import DiT
    from hookscope.models.dit_config import DiTConfig
    from hookscope.models.t5 import T5, T5Encoder
    from hookscope.models.vit import ViT
    from hookscope.models.whisper import Whisper
    from hookscope.names import get_act_name
