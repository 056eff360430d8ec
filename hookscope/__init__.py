"""hookscope: every activation of a transformer, named, cached, edited and ablated.

Importing the package is light: torch, transformers and matplotlib load only when a name that needs
them is first used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from hookscope import extensions as _extensions

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS: dict[str, str] = {
    "HookPoint": "hookscope.hooks",
    "HookedModule": "hookscope.hooks",
    "StopForward": "hookscope.hooks",
    "ActivationCache": "hookscope.cache",
    "get_act_name": "hookscope.names",
    "load": "hookscope.loading",
    "DecoderConfig": "hookscope.models.decoder_config",
    "Decoder": "hookscope.models.decoder",
    "Bert": "hookscope.models.bert",
    "BertConfig": "hookscope.models.bert_config",
    "T5Config": "hookscope.models.t5_config",
    "ViTConfig": "hookscope.models.vit_config",
    "WhisperConfig": "hookscope.models.whisper_config",
    "T5": "hookscope.models.t5",
    "T5Encoder": "hookscope.models.t5",
    "ViT": "hookscope.models.vit",
    "Whisper": "hookscope.models.whisper",
    "wrap": "hookscope.bridge",
    "WrappedModel": "hookscope.bridge",
    "generate": "hookscope.generation.api",
    "generate_stream": "hookscope.generation.api",
    "to_hf": "hookscope.convert.export",
    "class_lens": "hookscope.analysis.vision",
    "attention_rollout": "hookscope.analysis.vision",
    "save_attention_overlay": "hookscope.viz.vision_plot",
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
    "get_full_resid_decomposition": "hookscope.analysis.neurons",
    "stack_neuron_results": "hookscope.analysis.neurons",
    "get_neuron_results": "hookscope.analysis.neurons",
    "HookscopeError": "hookscope.errors",
    "LoadError": "hookscope.errors",
    "SourceNotFoundError": "hookscope.errors",
    "SourceTypeError": "hookscope.errors",
    "ConversionError": "hookscope.errors",
    "ConfigError": "hookscope.errors",
    "HookError": "hookscope.errors",
    "HookNameError": "hookscope.errors",
    "WeightProcessingError": "hookscope.errors",
    "InputCheckError": "hookscope.errors",
    "ShapeMismatchError": "hookscope.errors",
    "FactoredMatrix": "hookscope.factored_matrix",
    "all_composition_scores": "hookscope.analysis.composition",
    "generic_activation_patch": "hookscope.analysis.patching",
    "path_patch": "hookscope.analysis.path_patching",
    "attribution_patch": "hookscope.analysis.attribution",
    "detect_head": "hookscope.analysis.head_detection",
    "induction_scores": "hookscope.analysis.head_detection",
    "logit_diff": "hookscope.analysis.dla",
    "residual_stack_to_logit_diff": "hookscope.analysis.dla",
    "head_logit_diff_attribution": "hookscope.analysis.dla",
    "neuron_logit_diff_attribution": "hookscope.analysis.dla",
    "SVDInterpreter": "hookscope.analysis.svd_interpreter",
    "test_prompt": "hookscope.analysis.prompt_report",
    "DiT": "hookscope.models.dit",
    "SAE": "hookscope.sae.sae",
    "SAEConfig": "hookscope.sae.config",
    "SAETrainingConfig": "hookscope.sae.train",
    "train_sae": "hookscope.sae.train",
    "DiTConfig": "hookscope.models.dit_config",
    "at_calls": "hookscope.hooks",
    "at_steps": "hookscope.hooks",
    "MultipleCallsError": "hookscope.cache",
    "TrainingConfig": "hookscope.training",
    "train": "hookscope.training",
    "tokenize_and_concatenate": "hookscope.training",
    "ByteLevelBPE": "hookscope.tokenizers",
    "WordPiece": "hookscope.tokenizers",
}

__all__ = ["__version__", *_EXPORTS]

# Methods of a lower layer that an upper layer implements (see hookscope/extensions.py): name ->
# "module:function", imported on first call, so that models never import convert or generation and
# analysis results never import viz.
_IMPLEMENTATIONS: dict[str, str] = {
    "to_hf": "hookscope.convert.export:to_hf",
    "generate": "hookscope.generation.api:generate",
    "generate_stream": "hookscope.generation.api:generate_stream",
    "generate_seq2seq": "hookscope.generation.seq2seq:generate_seq2seq",
    "whisper_generate": "hookscope.generation.whisper_decode:generate",
    "whisper_transcribe": "hookscope.generation.whisper_decode:transcribe",
    "plot_lens": "hookscope.viz.lens_plot:plot_lens",
    "lens_html": "hookscope.viz.lens_plot:lens_html",
    "lens_table": "hookscope.viz.lens_plot:lens_table",
    "plot_loss_curve": "hookscope.viz.training_plot:plot_loss_curve",
}
_extensions.provide(_IMPLEMENTATIONS)


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
    from hookscope.analysis.attribution import attribution_patch
    from hookscope.analysis.composition import all_composition_scores
    from hookscope.analysis.dla import (
        head_logit_diff_attribution,
        logit_diff,
        neuron_logit_diff_attribution,
        residual_stack_to_logit_diff,
    )
    from hookscope.analysis.head_detection import detect_head, induction_scores
    from hookscope.analysis.lens import LensResult, logit_lens
    from hookscope.analysis.neurons import get_full_resid_decomposition, get_neuron_results, stack_neuron_results
    from hookscope.analysis.partial import partial_forward
    from hookscope.analysis.patching import generic_activation_patch
    from hookscope.analysis.path_patching import path_patch
    from hookscope.analysis.prompt_report import test_prompt
    from hookscope.analysis.residual import (
        accumulated_resid,
        apply_ln_to_stack,
        decompose_resid,
        logit_attrs,
        stack_head_results,
        tokens_to_residual_directions,
    )
    from hookscope.analysis.svd_interpreter import SVDInterpreter
    from hookscope.analysis.vision import attention_rollout, class_lens
    from hookscope.audio import load_audio
    from hookscope.bridge import WrappedModel, wrap
    from hookscope.cache import ActivationCache, MultipleCallsError
    from hookscope.convert.export import to_hf
    from hookscope.errors import (
        ConfigError,
        ConversionError,
        HookError,
        HookNameError,
        HookscopeError,
        InputCheckError,
        LoadError,
        ShapeMismatchError,
        SourceNotFoundError,
        SourceTypeError,
        WeightProcessingError,
    )
    from hookscope.factored_matrix import FactoredMatrix
    from hookscope.generation.api import generate, generate_stream
    from hookscope.hooks import HookedModule, HookPoint, StopForward, at_calls, at_steps
    from hookscope.loading import load
    from hookscope.models.bert import Bert
    from hookscope.models.bert_config import BertConfig
    from hookscope.models.decoder import Decoder
    from hookscope.models.decoder_config import DecoderConfig
    from hookscope.models.dit import DiT
    from hookscope.models.dit_config import DiTConfig
    from hookscope.models.t5 import T5, T5Encoder
    from hookscope.models.t5_config import T5Config
    from hookscope.models.vit import ViT
    from hookscope.models.vit_config import ViTConfig
    from hookscope.models.whisper import Whisper
    from hookscope.models.whisper_config import WhisperConfig
    from hookscope.names import get_act_name
    from hookscope.sae.config import SAEConfig
    from hookscope.sae.sae import SAE
    from hookscope.sae.train import SAETrainingConfig, train_sae
    from hookscope.tokenizers import ByteLevelBPE, WordPiece
    from hookscope.training import TrainingConfig, tokenize_and_concatenate, train
    from hookscope.viz.vision_plot import save_attention_overlay
