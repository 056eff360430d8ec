"""``HookedTransformer.from_pretrained``: TL's official names and aliases, loaded by hookscope's own loader.

The weights go through ``hookscope.load`` (HF checkpoints, or ``hf_model=`` already in memory: then
nothing is downloaded), the native model is adopted as a ``HookedTransformer`` (its modules, not a copy),
and TL's weight processing (fold_ln, centring...) is the native ``Decoder.process_weights``.
"""

from __future__ import annotations

import difflib
import logging
from typing import Any

import torch

from hookscope.compat.components import use_tl_signatures
from hookscope.compat.config import HookedTransformerConfig
from hookscope.loading import load

logger = logging.getLogger(__name__)


# TL official name (a hub id) -> its aliases, for the families the native decoder runs
OFFICIAL_NAMES: dict[str, list[str]] = {
    "gpt2": ["gpt2-small"], "gpt2-medium": [], "gpt2-large": [], "gpt2-xl": [],
    "distilgpt2": ["distill-gpt2", "distil-gpt2", "gpt2-xs"],
    **{f"EleutherAI/pythia-{s}": [f"pythia-{s}"] for s in ("14m", "31m", "70m", "160m", "410m", "1b", "1.4b",
                                                              "2.8b", "6.9b", "12b")},
    **{f"EleutherAI/pythia-{s}-deduped": [f"pythia-{s}-deduped"] for s in ("70m", "160m", "410m", "1b", "1.4b",
                                                                          "2.8b", "6.9b", "12b")},
    **{f"EleutherAI/pythia-{s}{kind}-v0": [f"pythia-{s}{kind}-v0"] for kind in ("", "-deduped")
       for s in ("70m", "160m", "410m", "1b", "1.4b", "2.8b", "6.9b", "12b")},
    "meta-llama/Llama-2-7b-hf": ["Llama-2-7b", "meta-llama/Llama-2-7b"],
    "meta-llama/Llama-2-7b-chat-hf": ["Llama-2-7b-chat", "meta-llama/Llama-2-7b-chat"],
    "meta-llama/Meta-Llama-3-8B": ["Meta-Llama-3-8B"],
    "meta-llama/Meta-Llama-3-8B-Instruct": ["Meta-Llama-3-8B-Instruct"],
    "meta-llama/Llama-3.1-8B": ["Llama-3.1-8B"], "meta-llama/Llama-3.1-8B-Instruct": ["Llama-3.1-8B-Instruct"],
    "meta-llama/Llama-3.2-1B": ["Llama-3.2-1B"], "meta-llama/Llama-3.2-3B": ["Llama-3.2-3B"],
    "meta-llama/Llama-3.2-1B-Instruct": ["Llama-3.2-1B-Instruct"],
    "meta-llama/Llama-3.2-3B-Instruct": ["Llama-3.2-3B-Instruct"],
    "mistralai/Mistral-7B-v0.1": ["mistral-7b"], "mistralai/Mistral-7B-Instruct-v0.1": ["mistral-7b-instruct"],
    "Qwen/Qwen2-0.5B": ["qwen2-0.5b"], "Qwen/Qwen2-1.5B": ["qwen2-1.5b"], "Qwen/Qwen2-7B": ["qwen2-7b"],
    "Qwen/Qwen2.5-0.5B": ["qwen2.5-0.5b"], "Qwen/Qwen2.5-1.5B": ["qwen2.5-1.5b"], "Qwen/Qwen2.5-3B": ["qwen2.5-3b"],
    "Qwen/Qwen2.5-7B": ["qwen2.5-7b"], "Qwen/Qwen2.5-0.5B-Instruct": ["qwen2.5-0.5b-instruct"],
    "Qwen/Qwen3-0.6B": ["qwen3-0.6b"], "Qwen/Qwen3-1.7B": ["qwen3-1.7b"], "Qwen/Qwen3-4B": ["qwen3-4b"],
    "Qwen/Qwen3-8B": ["qwen3-8b"],
    **{f"facebook/opt-{s}": [f"opt-{s}", *aliases] for s, aliases in (
        ("125m", ["opt-small", "opt"]), ("1.3b", ["opt-medium"]), ("2.7b", ["opt-large"]), ("6.7b", ["opt-xl"]),
        ("13b", ["opt-xxl"]), ("30b", ["opt-xxxl"]), ("66b", ["opt-xxxxl"]))},
    **{f"EleutherAI/gpt-neo-{s}": [f"gpt-neo-{s}", f"gpt-neo-{size}", f"neo-{size}", *extra] for s, size, extra in (
        ("125M", "small", ["neo"]), ("1.3B", "medium", []), ("2.7B", "large", []))},
    **{f"roneneldan/TinyStories-{kind}{s}": [f"tiny-stories-{kind.lower()}{s}"] for kind in ("", "Instruct-")
       for s in ("1M", "3M", "8M", "28M", "33M")},
    "roneneldan/TinyStories-1Layer-21M": ["tiny-stories-1L-21M"],
    "roneneldan/TinyStories-2Layers-33M": ["tiny-stories-2L-33M"],
    "roneneldan/TinyStories-Instuct-1Layer-21M": ["tiny-stories-instruct-1L-21M"],  # the hub id's spelling
    "roneneldan/TinyStories-Instruct-2Layers-33M": ["tiny-stories-instruct-2L-33M"],
    "EleutherAI/gpt-j-6B": ["gpt-j-6B", "gpt-j", "gptj"],
    **{f"microsoft/phi-{s}": [f"phi-{s}"] for s in ("1", "1_5", "2")},
    **{f"google/gemma-{s}": [f"gemma-{s}"] for s in ("2b", "7b", "2b-it", "7b-it")},
    "google/gemma-2-2b": ["gemma-2-2b"], "google/gemma-2-2b-it": ["gemma-2-2b-it"],
    "google/gemma-2-9b": ["gemma-2-9b"], "google/gemma-2-9b-it": ["gemma-2-9b-it"],
    **{f"stanford-crfm/{run}-gpt2-{size}-x{seed}": [f"stanford-gpt2-{size}-{letter}", f"{run}-gpt2-{size}-x{seed}"]
       for size, runs in (("small", ("alias", "battlestar", "caprica", "darkmatter", "expanse")),
                          ("medium", ("arwen", "beren", "celebrimbor", "durin", "eowyn")))
       for letter, run, seed in zip("abcde", runs, (21, 49, 81, 343, 777), strict=True)},
    "HuggingFaceTB/SmolLM2-135M": ["smollm2-135m", "SmolLM2-135M"],
    "HuggingFaceTB/SmolLM2-360M": ["smollm2-360m", "SmolLM2-360M"],
    "HuggingFaceTB/SmolLM2-1.7B": ["smollm2-1.7b", "SmolLM2-1.7B"],
}
_LOOKUP = {name.lower(): hub for hub, aliases in OFFICIAL_NAMES.items() for name in (hub, *aliases)}
_LOOKUP.update({hub.split("/")[-1].lower(): hub for hub in OFFICIAL_NAMES})


def get_official_model_name(model_name: str) -> str:
    """The hub id of a TL name or alias (case-insensitive); a clear error naming close matches otherwise."""
    hub = _LOOKUP.get(model_name.lower())
    if hub is not None:
        return hub
    close = difflib.get_close_matches(model_name.lower(), list(_LOOKUP), n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(map(repr, close))}?" if close else "."
    raise ValueError(f"{model_name!r} is not in hookscope.compat's table of TL names{hint} from_pretrained also "
                     "takes any hub id or local folder whose architecture hookscope runs natively (GPT-2, GPT-Neo, "
                     "GPT-J, OPT, NeoX, Phi, Llama, Mistral, Qwen2, Qwen3, Gemma, Gemma 2); other architectures "
                     "are not supported")


def _resolve_source(model_name: str) -> str:
    if "/" in model_name and model_name.lower() not in _LOOKUP:
        return model_name  # a hub id or path the table does not list: hookscope.load decides
    return get_official_model_name(model_name)


# The training checkpoints published as hub revisions (TL's schedules): stanford-crfm's GPT-2s as
# "checkpoint-<step>", Pythia's as "step<step>" (v0 models have no log-spaced early ones)
STANFORD_CRFM_CHECKPOINTS = [*range(0, 100, 10), *range(100, 2000, 50), *range(2000, 20000, 100),
                             *range(20000, 400001, 1000)]
PYTHIA_CHECKPOINTS = [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, *range(1000, 143001, 1000)]
PYTHIA_V0_CHECKPOINTS = list(range(1000, 143001, 1000))


def get_checkpoint_labels(model_name: str) -> tuple[list[int], str]:
    """TL's ``(checkpoint steps, "step")`` of a checkpointed family; ValueError for any other model."""
    hub = _resolve_source(model_name)
    if hub.startswith("stanford-crfm/"):
        return STANFORD_CRFM_CHECKPOINTS, "step"
    if hub.startswith("EleutherAI/pythia"):
        return (PYTHIA_V0_CHECKPOINTS if "v0" in hub else PYTHIA_CHECKPOINTS), "step"
    raise ValueError(f"{model_name!r} has no published training checkpoints (Pythia and stanford-crfm have)")


def checkpoint_revision(model_name: str, index: int | None, value: int | None) -> str:
    """The hub revision of a training checkpoint given by its index in the schedule or by its step."""
    labels, _ = get_checkpoint_labels(model_name)
    if index is not None:
        if not -len(labels) <= index < len(labels):
            raise ValueError(f"checkpoint_index={index} is out of range: {model_name!r} has {len(labels)} checkpoints")
        value = labels[index]
    elif value not in labels:
        raise ValueError(f"checkpoint_value={value} is not a checkpoint of {model_name!r} "
                         f"(steps {labels[0]}..{labels[-1]}, see get_checkpoint_labels)")
    hub = _resolve_source(model_name)
    return f"checkpoint-{value}" if hub.startswith("stanford-crfm/") else f"step{value}"


# TL's dtype names (``HookedTransformer.DTYPE_FROM_STRING``), plus float64
DTYPE_FROM_STRING: dict[str, torch.dtype] = {
    "float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float64": torch.float64,
}


def _dtype(dtype: Any) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPE_FROM_STRING:
        raise ValueError(f"dtype {dtype!r} is not one of {sorted(DTYPE_FROM_STRING)}")
    return DTYPE_FROM_STRING[dtype]


class PretrainedMixin:
    """``from_pretrained`` / ``from_pretrained_no_processing`` for :class:`HookedTransformer`."""

    @classmethod
    def from_pretrained(
        cls, model_name: str, fold_ln: bool = True, center_writing_weights: bool = True,
        center_unembed: bool = True, refactor_factored_attn_matrices: bool = False,
        checkpoint_index: int | None = None, checkpoint_value: int | None = None, hf_model: Any = None,
        device: str | torch.device | None = None, n_devices: int = 1, tokenizer: Any = None,
        move_to_device: bool = True, fold_value_biases: bool = True, default_prepend_bos: bool | None = None,
        default_padding_side: str | None = None, dtype: Any = "float32", first_n_layers: int | None = None,
        **from_pretrained_kwargs: Any,
    ) -> Any:
        """TL's ``from_pretrained``: a TL name / alias / hub id; with ``hf_model=`` (and ``tokenizer=``) the
        model in memory is converted and nothing is downloaded. Weight processing as TL's defaults."""
        revision = from_pretrained_kwargs.pop("revision", None)
        if checkpoint_index is not None or checkpoint_value is not None:
            revision = checkpoint_revision(model_name, checkpoint_index, checkpoint_value)
        if revision is not None and hf_model is not None:
            raise ValueError("a revision / training checkpoint selects hub weights, but hf_model= already gives "
                             "the weights: pass one or the other")
        if n_devices != 1:
            raise NotImplementedError("n_devices > 1: use hookscope.load(..., device_map='auto')")
        if from_pretrained_kwargs.get("trust_remote_code"):
            raise ValueError("trust_remote_code is not supported: hookscope runs only its own native code")
        unknown = set(from_pretrained_kwargs) - {"trust_remote_code", "torch_dtype"}
        if unknown:
            raise TypeError(f"from_pretrained got unexpected argument(s) {sorted(unknown)}")
        hub = _resolve_source(model_name)
        dt = _dtype(from_pretrained_kwargs.get("torch_dtype", dtype))
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        native = load(hf_model if hf_model is not None else hub, dtype=dt, device=device if move_to_device else None,
                      n_layers=first_n_layers, tokenizer=tokenizer, revision=revision)
        if not hasattr(native, "embed_tokens"):
            raise ValueError(f"{model_name!r} is not a decoder-only LM; use HookedEncoder / HookedEncoderDecoder")
        model = cls.__new__(cls)
        model.__dict__.update(native.__dict__)  # adopt the native modules and parameters (no copy)
        use_tl_signatures(model)
        model.cfg = HookedTransformerConfig.from_native(
            native.cfg, model_name=hub.split("/")[-1], tokenizer_name=hub, dtype=dt, device=str(device),
            default_prepend_bos=True if default_prepend_bos is None else default_prepend_bos,
        )
        model.default_padding_side = default_padding_side or "right"
        if model.tokenizer is None and hf_model is not None:
            model.tokenizer = _cached_tokenizer(hub)
        if model.tokenizer is not None:
            model.set_tokenizer(model.tokenizer, default_padding_side)  # type: ignore[attr-defined]
        options = dict(fold_ln=fold_ln, center_writing_weights=center_writing_weights, center_unembed=center_unembed,
                       fold_value_biases=fold_value_biases,
                       refactor_factored_attn_matrices=refactor_factored_attn_matrices)
        if any(options.values()):
            _process(model, options)
        logger.info("Loaded pretrained model %s into HookedTransformer", model_name)
        return model

    @classmethod
    def from_pretrained_no_processing(cls, model_name: str, fold_ln: bool = False, center_writing_weights: bool = False,
                                      center_unembed: bool = False, refactor_factored_attn_matrices: bool = False,
                                      fold_value_biases: bool = False, dtype: Any = torch.float32,
                                      default_prepend_bos: bool | None = None, default_padding_side: str | None = None,
                                      **kwargs: Any) -> Any:
        """``from_pretrained`` with every weight-processing option off (the weights as HF has them)."""
        return cls.from_pretrained(
            model_name, fold_ln=fold_ln, center_writing_weights=center_writing_weights, center_unembed=center_unembed,
            refactor_factored_attn_matrices=refactor_factored_attn_matrices, fold_value_biases=fold_value_biases,
            dtype=dtype, default_prepend_bos=default_prepend_bos, default_padding_side=default_padding_side, **kwargs,
        )


def _cached_tokenizer(hub: str) -> Any:
    """The hub tokenizer when it is already in the local HF cache (never downloads), else None."""
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(hub, local_files_only=True)
    except (OSError, ValueError) as err:
        logger.info("no tokenizer for %s in the local cache (%s); pass tokenizer= to tokenize text", hub, err)
        return None


def _process(model: Any, options: dict[str, bool]) -> None:
    """TL's weight processing through the native ``process_weights`` (options that do not apply are skipped)."""
    process = getattr(model, "process_weights", None)
    if process is None:
        raise NotImplementedError(
            "weight processing (fold_ln, centring) needs Decoder.process_weights, which this hookscope build "
            "lacks; use from_pretrained_no_processing"
        )
    process(**options)
    if options["fold_ln"] and model.cfg.normalization_type in ("LN", "RMS"):
        model.cfg.normalization_type += "Pre"
