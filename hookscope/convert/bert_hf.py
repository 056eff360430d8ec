"""Hugging Face BERT / RoBERTa (and MiniLM, which is BERT) <-> :class:`BertConfig` and weight rules.

Which heads to build is read from the weights themselves (a state dict without heads builds only the
encoder) and cross-checked against the HF class the config names, so a config that promises a head
the weights lack is an error instead of a silently random head.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch

from hookscope.convert.engine import ConversionError, Rule, RuleSet, aliased_keys, rename
from hookscope.convert.hf_config import check_attributes, require
from hookscope.models.bert_config import BertConfig

HANDLED = frozenset(
    {
        "vocab_size",
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "intermediate_size",
        "hidden_act",
        "max_position_embeddings",
        "type_vocab_size",
        "layer_norm_eps",
        "position_embedding_type",
        "tie_word_embeddings",
    }
)
# Dropout does not change an eval-mode forward; gradient_checkpointing is a training-memory switch.
IGNORED = frozenset({"hidden_dropout_prob", "attention_probs_dropout_prob", "gradient_checkpointing"})

# Applied to source names first: the base-model prefix of task models, and TF-era LayerNorm names.
ALIASES = (
    (r"^(bert|roberta)\.", ""),
    (r"LayerNorm\.gamma$", "LayerNorm.weight"),
    (r"LayerNorm\.beta$", "LayerNorm.bias"),
)

# HF class -> heads it must have: (mlm, nsp, classifier)
SUPPORTED_CLASSES: dict[str, tuple[bool, bool, bool]] = {
    "BertModel": (False, False, False),
    "RobertaModel": (False, False, False),
    "BertForMaskedLM": (True, False, False),
    "RobertaForMaskedLM": (True, False, False),
    "BertForPreTraining": (True, True, False),
    "BertForNextSentencePrediction": (False, True, False),
    "BertForSequenceClassification": (False, False, True),
    "RobertaForSequenceClassification": (False, False, True),
}


@dataclass(frozen=True)
class Heads:
    """The heads a checkpoint carries, found from its tensor names."""

    mlm: str | None  # "bert" (cls.predictions.*) or "roberta" (lm_head.*)
    # "bert" (pooler.dense) or "roberta_classifier": RobertaForSequenceClassification's classifier.dense +
    # tanh on <s>, the same function as BERT's pooler, so it becomes ours (and return_type="pooled" gives it).
    pooler: str | None
    nsp: bool
    classifier: str | None  # "bert" (classifier.weight) or "roberta" (classifier.out_proj)


def find_heads(keys: set[str]) -> Heads:
    mlm = (
        "bert"
        if "cls.predictions.transform.dense.weight" in keys
        else ("roberta" if "lm_head.dense.weight" in keys else None)
    )
    if "classifier.out_proj.weight" in keys:
        return Heads(mlm, "roberta_classifier", "cls.seq_relationship.weight" in keys, "roberta")
    pooler = "bert" if "pooler.dense.weight" in keys else None
    classifier = "bert" if "classifier.weight" in keys else None
    if classifier and not pooler:
        raise ConversionError(
            "this checkpoint has a per-token classifier (token classification) head, which hookscope "
            "does not model "
            "natively; supported heads: masked-LM, pooler, next-sentence, sequence classification. "
            "Use hookscope.wrap(hf_model) for it."
        )
    if any(k.startswith("qa_outputs.") for k in keys):
        raise ConversionError(
            "question-answering heads (qa_outputs.*) are not modelled; use hookscope.wrap(hf_model)"
        )
    return Heads(mlm, pooler, "cls.seq_relationship.weight" in keys, classifier)


def architecture_name(values: dict[str, Any], heads: Heads, model_type: str) -> str:
    """The HF class: the config's ``architectures`` entry, else the class these heads make."""
    prefix = "Roberta" if model_type == "roberta" else "Bert"
    declared = (values.get("architectures") or [None])[0]
    if declared is None:
        if heads.classifier:
            return f"{prefix}ForSequenceClassification"
        if heads.mlm and heads.nsp:
            return "BertForPreTraining"
        if heads.mlm:
            return f"{prefix}ForMaskedLM"
        return "BertForNextSentencePrediction" if heads.nsp else f"{prefix}Model"
    if declared not in SUPPORTED_CLASSES:
        raise ConversionError(
            f"{declared} is not supported natively; supported: {', '.join(sorted(SUPPORTED_CLASSES))}. "
            "Use hookscope.wrap(hf_model) to hook any model."
        )
    need_mlm, need_nsp, need_cls = SUPPORTED_CLASSES[declared]
    missing = [
        name
        for need, have, name in (
            (need_mlm, heads.mlm, "masked-LM"),
            (need_nsp, heads.nsp, "next-sentence"),
            (need_cls, heads.classifier, "classification"),
        )
        if need and not have
    ]
    if missing:
        raise ConversionError(
            f"the config names {declared}, but the weights have no {' or '.join(missing)} head; "
            "HF would fill it with random numbers. Load the base model or supply the full checkpoint."
        )
    return declared


def bert_config_from_hf(
    hf_config: Any, keys: Iterable[str], get: Callable[[str], torch.Tensor]
) -> BertConfig:
    """Strictly convert a BERT / RoBERTa config plus the checkpoint's heads into a :class:`BertConfig`."""
    model_type = getattr(hf_config, "model_type", None)
    require(model_type in ("bert", "roberta"), f"model_type {model_type!r} is not a BERT-family encoder")
    values = check_attributes(hf_config, HANDLED, IGNORED, family=model_type or "bert")
    require(not values.get("is_decoder"), "BERT with is_decoder=True (causal) is not supported natively")
    require(not values.get("add_cross_attention"), "BERT with cross-attention is not supported natively")
    kind = values.get("position_embedding_type", "absolute") or "absolute"
    require(
        kind == "absolute",
        f"position_embedding_type={kind!r} is not supported natively (only 'absolute'); "
        "use hookscope.wrap(hf_model) for this model",
    )
    original = aliased_keys(keys, ALIASES)  # normalised name -> source key
    heads = find_heads(set(original))
    n_labels = None
    if heads.classifier:
        name = "classifier.weight" if heads.classifier == "bert" else "classifier.out_proj.weight"
        n_labels = int(get(original[name]).shape[0])
    d, h = values["hidden_size"], values["num_attention_heads"]
    require(d % h == 0, f"hidden_size {d} is not a multiple of num_attention_heads {h}")
    roberta = model_type == "roberta"
    return BertConfig(
        d_model=d,
        n_layers=values["num_hidden_layers"],
        n_heads=h,
        d_head=d // h,
        d_mlp=values["intermediate_size"],
        d_vocab=values["vocab_size"],
        n_ctx=values["max_position_embeddings"],
        n_token_types=values["type_vocab_size"],
        act_fn=values["hidden_act"],
        norm_eps=values["layer_norm_eps"],
        positions="padding_offset" if roberta else "absolute",
        pad_token_id=int(values.get("pad_token_id") if values.get("pad_token_id") is not None else 0),
        mlm_head=heads.mlm is not None,
        mlm_act="gelu" if roberta else values["hidden_act"],  # RobertaLMHead always uses gelu
        tie_embeddings=bool(values.get("tie_word_embeddings", True)),
        pooler=heads.pooler is not None,
        nsp_head=heads.nsp,
        n_labels=n_labels,
        architecture=architecture_name(values, heads, model_type or "bert"),
        hf_config=values,
    )


# ---------------------------------------------------------------------- weight rules
def _linear(src: str, dst: str) -> list[Rule]:
    return [rename(f"{src}.weight", f"{dst}.weight"), rename(f"{src}.bias", f"{dst}.bias")]


def bert_rules(cfg: BertConfig, keys: Iterable[str]) -> RuleSet:
    """Rules from (alias-normalised) HF names to ours; ``keys`` picks where a tied bias is stored."""
    norm_keys = set(aliased_keys(keys, ALIASES))
    h, b = "encoder.layer.{i}", "blocks.{i}"
    rules = [
        rename("embeddings.word_embeddings.weight", "embed.embed.weight"),
        rename("embeddings.position_embeddings.weight", "embed.pos_embed.weight"),
        rename("embeddings.token_type_embeddings.weight", "embed.token_type_embed.weight"),
        *_linear("embeddings.LayerNorm", "embed.ln"),
        *_linear(f"{h}.attention.self.query", f"{b}.attn.q_proj"),
        *_linear(f"{h}.attention.self.key", f"{b}.attn.k_proj"),
        *_linear(f"{h}.attention.self.value", f"{b}.attn.v_proj"),
        *_linear(f"{h}.attention.output.dense", f"{b}.attn.o_proj"),
        *_linear(f"{h}.attention.output.LayerNorm", f"{b}.ln1"),
        *_linear(f"{h}.intermediate.dense", f"{b}.mlp.up_proj"),
        *_linear(f"{h}.output.dense", f"{b}.mlp.down_proj"),
        *_linear(f"{h}.output.LayerNorm", f"{b}.ln2"),
    ]
    ignore = [r"^embeddings\.(position_ids|token_type_ids)$"]
    heads = find_heads(norm_keys)
    if heads.mlm is not None:
        base = "cls.predictions" if heads.mlm == "bert" else "lm_head"
        dense, norm = (
            (f"{base}.transform.dense", f"{base}.transform.LayerNorm")
            if heads.mlm == "bert"
            else (f"{base}.dense", f"{base}.layer_norm")
        )
        # The forward adds decoder.bias. HF ties it to the head's own ``bias`` when the embeddings are tied
        # (checkpoints then store one or both); untied, ``bias`` is a dead copy.
        bias = f"{base}.decoder.bias" if f"{base}.decoder.bias" in norm_keys else f"{base}.bias"
        rules += [
            *_linear(dense, "mlm_head.dense"),
            *_linear(norm, "mlm_head.ln"),
            rename(bias, "unembed.bias"),
        ]
        ignore.append(rf"^{re.escape(base)}\.(decoder\.)?bias$")
        if cfg.tie_embeddings:
            ignore.append(rf"^{re.escape(base)}\.decoder\.weight$")
        else:
            rules.append(rename(f"{base}.decoder.weight", "unembed.weight"))
    if heads.pooler == "bert":
        rules += _linear("pooler.dense", "pooler.dense")
    elif heads.pooler == "roberta_classifier":  # dense + tanh on <s>: the same function as BERT's pooler
        rules += _linear("classifier.dense", "pooler.dense")
    if heads.nsp:
        rules += _linear("cls.seq_relationship", "nsp_head.proj")
    if heads.classifier == "bert":
        rules += _linear("classifier", "classifier.proj")
    elif heads.classifier == "roberta":
        rules += _linear("classifier.out_proj", "classifier.proj")
    return RuleSet(tuple(rules), ignore_sources=tuple(ignore), aliases=ALIASES)
