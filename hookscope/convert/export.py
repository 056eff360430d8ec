"""Export a native model back to transformers: the family's conversion rules run backwards.

:func:`to_hf` rebuilds the HF class the model was converted from (``cfg.architecture``) from the HF
config values the conversion kept (``cfg.hf_config``), then fills it through the inverted rule table.
Both sides are accounted for, as on import: every tensor of ours is consumed (a tied copy counts as its
original) and every parameter of the HF model is filled, or :class:`ConversionError` names what is left.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from hookscope.convert.bert_hf import bert_rules
from hookscope.convert.decoder_hf import ARCHITECTURES
from hookscope.convert.engine import ConversionError, RuleSet, alias_name, convert_state_dict, expand
from hookscope.convert.t5_hf import t5_rules
from hookscope.convert.vit_hf import rules_for
from hookscope.convert.whisper_hf import hf_config_values, whisper_rules
from hookscope.models.bert import Bert
from hookscope.models.decoder import Decoder
from hookscope.models.t5 import T5Encoder
from hookscope.models.vit import ViT
from hookscope.models.whisper import Whisper


@dataclass(frozen=True, kw_only=True)
class ExportPlan:
    """What a family's export needs: the HF config values, the HF class and the forward rules."""

    config_values: dict[str, Any]
    architecture: str
    rules: Callable[[list[str]], RuleSet]  # HF parameter names -> the forward rule table
    n_layers: int  # what ``{i}`` in the rules expands to


def _decoder_plan(model: Decoder) -> ExportPlan:
    cfg = model.cfg
    values = dict(cfg.hf_config)
    for attr in ("num_hidden_layers", "n_layer", "num_layers"):  # a first-n-layers model exports n layers
        if attr in values:
            values[attr] = cfg.n_layers
    if values.get("layer_types"):
        values["layer_types"] = values["layer_types"][: cfg.n_layers]
    if values.get("attention_layers"):  # GPT-Neo: the per-layer kinds, rebuilt from attention_types
        kinds = values["attention_layers"][: cfg.n_layers]
        values["attention_layers"], values["attention_types"] = kinds, [[[kind], 1] for kind in kinds]
    rules = ARCHITECTURES[values["model_type"]].rules(cfg)
    return ExportPlan(config_values=values, architecture=ARCHITECTURES[values["model_type"]].hf_class,
                      rules=lambda keys: rules, n_layers=cfg.n_layers)


def _bert_plan(model: Bert) -> ExportPlan:
    cfg = model.cfg
    values = {**cfg.hf_config, "num_hidden_layers": cfg.n_layers}
    return ExportPlan(config_values=values, architecture=cfg.architecture, rules=lambda keys: bert_rules(cfg, keys),
                      n_layers=cfg.n_layers)


def _t5_plan(model: T5Encoder) -> ExportPlan:
    cfg = model.cfg
    # the weights decided the tie on import (transformers 5 reports every T5 config as tied)
    values = {**cfg.hf_config, "num_layers": cfg.n_encoder_layers, "tie_word_embeddings": cfg.tie_embeddings,
              "scale_decoder_outputs": cfg.scale_decoder_outputs}
    if not cfg.encoder_only:
        values["num_decoder_layers"] = cfg.n_decoder_layers
    n_layers = max(cfg.n_encoder_layers, cfg.n_decoder_layers)
    return ExportPlan(config_values=values, architecture=cfg.architecture, rules=lambda keys: t5_rules(cfg),
                      n_layers=n_layers)


def _vit_plan(model: ViT) -> ExportPlan:
    cfg = model.cfg
    values = {**cfg.hf_config, "num_hidden_layers": cfg.n_layers}
    return ExportPlan(config_values=values, architecture=cfg.architecture, rules=lambda keys: rules_for(cfg),
                      n_layers=cfg.n_layers)


def _whisper_plan(model: Whisper) -> ExportPlan:
    values = {"model_type": "whisper", **hf_config_values(model.cfg)}
    return ExportPlan(config_values=values, architecture="WhisperForConditionalGeneration",
                      rules=lambda keys: whisper_rules(model.cfg), n_layers=0)


PLANS: dict[type, Callable[[Any], ExportPlan]] = {
    Decoder: _decoder_plan,
    Bert: _bert_plan,
    T5Encoder: _t5_plan,  # and T5, its subclass
    ViT: _vit_plan,
    Whisper: _whisper_plan,
}


def to_hf(model: nn.Module) -> nn.Module:
    """The equivalent transformers model, with this model's weights, dtype and eval mode.

    Args:
        model: a native hookscope model (Decoder, Bert, T5, T5Encoder, ViT, Whisper) built by
            :func:`hookscope.load` (its config keeps the HF config values the export needs).

    Raises:
        ConversionError: the model is not a native family, or its weights do not map one to one.
    """
    plan_for = next((p for cls, p in PLANS.items() if isinstance(model, cls)), None)
    if plan_for is None:
        raise ConversionError(
            f"to_hf exports native hookscope models ({', '.join(c.__name__ for c in PLANS)}); "
            f"got {type(model).__name__} (a wrap()ped model already is a transformers model: use .model)"
        )
    if getattr(model, "processed_weights", None):
        raise ConversionError(
            "this model's weights were processed (process_weights: folded/centred), so they no longer map "
            "to the Hugging Face architecture; load the model again to export it"
        )
    if not isinstance(model, Whisper) and not model.cfg.hf_config:
        raise ConversionError(
            f"this {type(model).__name__}'s config keeps no HF config values (cfg.hf_config); to_hf needs "
            "a model built by hookscope.load()"
        )
    plan = plan_for(model)
    import transformers

    values = {k: v for k, v in plan.config_values.items() if k not in ("transformers_version", "architectures")}
    hf_config = transformers.AutoConfig.for_model(**values)
    hf_model = getattr(transformers, plan.architecture)(hf_config)
    if getattr(model.cfg, "tie_embeddings", True) is False:
        _untie(hf_model)
    _fill(hf_model, model, plan)
    return hf_model.to(next(model.parameters()).dtype).eval()


def _fill(hf_model: nn.Module, model: nn.Module, plan: ExportPlan) -> None:
    """Load our weights into ``hf_model`` through the inverted rules; both sides fully accounted for."""
    hf_params = [n for n, _ in hf_model.named_parameters(remove_duplicate=False)]
    forward = plan.rules(hf_params)
    rules = expand(RuleSet(forward.rules).inverted().rules, plan.n_layers)
    state = model.state_dict()
    ignore = [rf"^{re.escape(k)}$" for k in _tied_copies(state)]
    produced = [t for r in rules for t in r.targets]  # HF names after the family's aliases
    converted = convert_state_dict(state, RuleSet(tuple(rules), tuple(ignore)), 0, produced)
    by_alias = {alias_name(k, forward.aliases): k for k in hf_model.state_dict()}
    unknown = sorted(k for k in converted if k not in by_alias)
    if unknown:
        raise ConversionError(f"{plan.architecture} has no parameters {unknown[:8]}")
    loaded = {by_alias[k]: v.detach() for k, v in converted.items()}
    hf_model.load_state_dict(loaded, strict=False)
    unfilled = _unfilled(hf_model, set(loaded))
    if unfilled:
        raise ConversionError(f"exporting to {plan.architecture} leaves parameters unfilled: {unfilled[:8]}")


def _untie(hf_model: nn.Module) -> None:
    """Give the LM head its own weight where the HF class ties it regardless of the config (transformers 5
    ties every T5; it unties on load when a checkpoint's head differs, which is what we reproduce)."""
    head, embed = hf_model.get_output_embeddings(), hf_model.get_input_embeddings()
    if head is not None and embed is not None and head.weight is embed.weight:
        head.weight = nn.Parameter(head.weight.detach().clone())


def _tied_copies(state: dict[str, torch.Tensor]) -> list[str]:
    """Names whose tensor is the same storage as an earlier name's (tied weights: exported once)."""
    seen: set[tuple[int, tuple[int, ...]]] = set()
    copies = []
    for name, t in state.items():
        key = (t.untyped_storage().data_ptr(), tuple(t.shape))
        if key in seen and t.numel():
            copies.append(name)
        seen.add(key)
    return copies


def _unfilled(hf_model: nn.Module, loaded: set[str]) -> list[str]:
    """HF parameters none of whose names (tied parameters have several) was loaded."""
    names: dict[int, list[str]] = {}
    for name, p in hf_model.named_parameters(remove_duplicate=False):
        names.setdefault(id(p), []).append(name)
    return sorted(ns[0] for ns in names.values() if not loaded.intersection(ns))
