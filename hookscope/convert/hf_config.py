"""Strict reading of Hugging Face configs: every attribute is handled, ignored on purpose, or an error.

An attribute nobody declared is accepted only while it keeps its class default; a non-default value
we do not model raises, naming it, instead of silently giving different numbers.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from hookscope.convert.engine import ConversionError
from hookscope.errors import UnsupportedConfigError

# Attributes of every transformers config that do not change the forward computation.
GENERIC_IGNORED = frozenset({
    "transformers_version", "architectures", "output_hidden_states", "output_attentions", "return_dict",
    "dtype", "torch_dtype", "chunk_size_feed_forward", "is_encoder_decoder", "problem_type", "id2label",
    "label2id", "_name_or_path", "model_type", "use_cache", "initializer_range", "bos_token_id",
    "eos_token_id", "pad_token_id", "sep_token_id", "decoder_start_token_id", "tokenizer_class",
    "prefix", "task_specific_params", "finetuning_task", "_attn_implementation_autoset",
    "use_return_dict", "pruned_heads", "tf_legacy_loss", "torchscript", "is_decoder",
    "add_cross_attention", "cross_attention_hidden_size", "tie_encoder_decoder", "_commit_hash",
    "max_length", "min_length", "num_beams", "do_sample", "temperature", "top_k", "top_p",
    "repetition_penalty", "length_penalty", "early_stopping", "num_return_sequences",
    "no_repeat_ngram_size", "bad_words_ids", "output_scores", "return_dict_in_generate",
    "forced_bos_token_id", "forced_eos_token_id", "remove_invalid_values", "typical_p",
    "diversity_penalty", "num_beam_groups", "encoder_no_repeat_ngram_size", "exponential_decay_length_penalty",
    "suppress_tokens", "begin_suppress_tokens", "quantization_config", "_experts_implementation",
    "transformers.js_config", "attention_dropout", "hidden_dropout", "resid_pdrop", "embd_pdrop",
    "attn_pdrop", "classifier_dropout", "summary_type", "summary_use_proj", "summary_activation",
    "summary_proj_to_labels", "summary_first_dropout", "pretraining_tp",
})


def check_attributes(
    hf_config: Any, handled: Iterable[str], ignored: Iterable[str] = (), family: str = ""
) -> dict[str, Any]:
    """Return ``hf_config`` as a dict after checking no unmodelled attribute has a non-default value."""
    values = hf_config.to_dict()
    try:
        defaults = type(hf_config)().to_dict()
    except Exception:  # some configs cannot be built without arguments
        defaults = {}
    known = set(handled) | set(ignored) | GENERIC_IGNORED
    surprising = {
        k: v for k, v in values.items()
        if k not in known and not k.startswith("_") and (k not in defaults or defaults[k] != v)
    }
    if surprising:
        listed = ", ".join(f"{k}={v!r}" for k, v in sorted(surprising.items()))
        raise ConversionError(
            f"{family or type(hf_config).__name__} config has attributes hookscope does not model: {listed}. "
            "Converting would silently change the numbers; use hookscope.wrap(hf_model) for this model."
        )
    return values


def rope_parameters(values: dict[str, Any]) -> dict[str, Any]:
    """The RoPE dict of a transformers 5 config (``rope_parameters``), or a 4.x one rebuilt."""
    params = values.get("rope_parameters")
    if params:
        return dict(params)
    params = dict(values.get("rope_scaling") or {})
    params.setdefault("rope_type", params.pop("type", "default"))
    params.setdefault("rope_theta", values.get("rope_theta", 10000.0))
    if "partial_rotary_factor" in values:
        params.setdefault("partial_rotary_factor", values["partial_rotary_factor"])
    if "rotary_pct" in values:
        params.setdefault("partial_rotary_factor", values["rotary_pct"])
    return params


def check_architecture(values: dict[str, Any], supported: Iterable[str], family: str) -> str | None:
    """The HF class the config declares (``architectures[0]``), refused clearly when not modelled natively.

    Without this, a task head the family lacks (e.g. ``T5ForSequenceClassification``) fails later as an
    unreadable list of unconverted tensors. Returns None when the config names no class.
    """
    declared = (values.get("architectures") or [None])[0]
    if declared is not None and declared not in supported:
        raise ConversionError(
            f"{declared} is not supported natively; supported {family} classes: "
            f"{', '.join(sorted(supported))}. Use hookscope.wrap(hf_model) to hook any model."
        )
    return declared


def require(condition: bool, message: str) -> None:
    """Refuse a config value that cannot be converted exactly (a ConversionError and a ConfigError)."""
    if not condition:
        raise UnsupportedConfigError(message)


def embedding_padding_idx(values: dict[str, Any]) -> int | None:
    """The ``padding_idx`` of HF models that build ``nn.Embedding(..., padding_idx=pad_token_id)`` (Llama-style
    models, Phi; GPT-2, NeoX and GPT-J do not): the pad id when it is a valid token id, else None."""
    pad = values.get("pad_token_id")
    return pad if isinstance(pad, int) and 0 <= pad < values["vocab_size"] else None
