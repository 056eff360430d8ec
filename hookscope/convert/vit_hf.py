"""Hugging Face ViT / DeiT / CLIP vision configs and weights -> :class:`ViTConfig` and weight rules.

Source names are first normalised (aliases) so one table serves every layout: transformers 5 names
(``vit.layers.{i}.attention.q_proj``), transformers 4 checkpoints on the hub
(``vit.encoder.layer.{i}.attention.attention.query``), bare ``ViTModel`` / ``DeiTModel`` checkpoints
(no prefix) and ``vision_model.``-prefixed CLIP vision checkpoints. Which head a checkpoint carries is
read from its tensor names (the config does not say).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from hookscope.convert.engine import ConversionError, Rule, RuleSet, aliased_keys, rename
from hookscope.convert.hf_config import check_architecture, check_attributes, require
from hookscope.models.vit_config import ViTConfig

ALIASES: tuple[tuple[str, str], ...] = (
    (r"^(?:vit|deit|vision_model)\.", ""),
    (r"^encoder\.layer\.(\d+)\.", r"layers.\1."),  # transformers 4 ViT / DeiT
    (r"\.attention\.attention\.query\.", ".attention.q_proj."),
    (r"\.attention\.attention\.key\.", ".attention.k_proj."),
    (r"\.attention\.attention\.value\.", ".attention.v_proj."),
    (r"\.attention\.output\.dense\.", ".attention.o_proj."),
    (r"\.intermediate\.dense\.", ".mlp.fc1."),
    (r"^(layers\.\d+)\.output\.dense\.", r"\1.mlp.fc2."),
)
IGNORED_SOURCES = (r"position_ids$", r"^embeddings\.mask_token$")  # a buffer; MIM-only mask token

_VIT_HANDLED = frozenset({
    "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "hidden_act",
    "layer_norm_eps", "image_size", "patch_size", "num_channels", "qkv_bias", "pooler_output_size",
    "pooler_act",
})
_VIT_IGNORED = frozenset({
    # dropout (inference is deterministic); encoder_stride is the masked-image-modelling decoder only
    "hidden_dropout_prob", "attention_probs_dropout_prob", "encoder_stride",
})
_CLIP_HANDLED = frozenset({
    "hidden_size", "intermediate_size", "projection_dim", "num_hidden_layers", "num_attention_heads",
    "num_channels", "image_size", "patch_size", "hidden_act", "layer_norm_eps",
})
_CLIP_IGNORED = frozenset({"initializer_factor"})
SUPPORTED_CLASSES = frozenset({
    "ViTModel", "ViTForImageClassification", "DeiTModel", "DeiTForImageClassification",
    "DeiTForImageClassificationWithTeacher", "CLIPVisionModel", "CLIPVisionModelWithProjection",
})


def _square(value: Any, what: str) -> int:
    if isinstance(value, (list, tuple)):
        require(len(value) == 2 and value[0] == value[1], f"non-square {what} {value} is not supported")
        return int(value[0])
    return int(value)


def _image_size(value: Any) -> tuple[int, int]:
    if isinstance(value, (list, tuple)):
        return (int(value[0]), int(value[1]))
    return (int(value), int(value))


def vit_config_from_hf(hf_config: Any, source_keys: Iterable[str]) -> ViTConfig:
    """Strictly convert a transformers ViT / DeiT / CLIP vision config (+ the checkpoint's tensor names)."""
    model_type = getattr(hf_config, "model_type", None)
    keys = set(aliased_keys(source_keys, ALIASES))
    clip = model_type == "clip_vision_model"
    if model_type not in ("vit", "deit", "clip_vision_model"):
        raise ConversionError(
            f"{model_type!r} is not a ViT-family model (supported: vit, deit, clip_vision_model)"
        )
    family = {"vit": "ViT", "deit": "DeiT", "clip_vision_model": "CLIPVision"}[model_type]
    handled, ignored = (_CLIP_HANDLED, _CLIP_IGNORED) if clip else (_VIT_HANDLED, _VIT_IGNORED)
    values = check_attributes(hf_config, handled, ignored, family=family)
    check_architecture(values, SUPPORTED_CLASSES, "ViT / DeiT / CLIP vision")
    d, heads = values["hidden_size"], values["num_attention_heads"]
    require(d % heads == 0, f"hidden_size {d} is not a multiple of num_attention_heads {heads}")
    head, n_classes, arch = "none", 0, f"{family}Model"
    if "cls_classifier.weight" in keys:
        head, n_classes, arch = "teacher", hf_config.num_labels, "DeiTForImageClassificationWithTeacher"
    elif "classifier.weight" in keys:
        require(not clip, "CLIPForImageClassification (mean-pooled patches) is not supported")
        head, n_classes, arch = "class", hf_config.num_labels, f"{family}ForImageClassification"
    elif "visual_projection.weight" in keys:
        head, n_classes, arch = "projection", values["projection_dim"], "CLIPVisionModelWithProjection"
    pooler = "pooler.dense.weight" in keys
    if pooler:
        require(values.get("pooler_output_size") in (None, d),
                "a pooler_output_size other than hidden_size is not supported")
    return ViTConfig(
        d_model=d, n_layers=values["num_hidden_layers"], n_heads=heads, d_head=d // heads,
        d_mlp=values["intermediate_size"], image_size=_image_size(values["image_size"]),
        patch_size=_square(values["patch_size"], "patch_size"), n_channels=values["num_channels"],
        act_fn=values["hidden_act"], norm_eps=values["layer_norm_eps"],
        qkv_bias=True if clip else bool(values.get("qkv_bias", True)), patch_bias=not clip,
        distillation_token=model_type == "deit", pre_norm=clip, last_hidden_normed=not clip,
        head=head, n_classes=n_classes, pooler=pooler, pooler_act=values.get("pooler_act", "tanh"),
        architecture=arch, hf_config=values,
    )


# ---------------------------------------------------------------------- weight rules
def reshape_to(shape: tuple[int, ...]) -> Any:
    """Reshape one tensor (HF keeps the class token as ``[1, 1, d]``, the positions as ``[1, n, d]``)."""

    def fwd(ts: list[torch.Tensor]) -> list[torch.Tensor]:
        return [ts[0].reshape(shape).contiguous()]

    return fwd


def _reshape_rule(src: str, dst: str, ours: tuple[int, ...], theirs: tuple[int, ...]) -> Rule:
    return Rule((src,), (dst,), reshape_to(ours), reshape_to(theirs))


def _both(src: str, dst: str) -> list[Rule]:
    return [rename(f"{src}.weight", f"{dst}.weight"), rename(f"{src}.bias", f"{dst}.bias")]


def vit_rules(cfg: ViTConfig) -> RuleSet:
    """ViT and DeiT (transformers 5 names; older layouts arrive through :data:`ALIASES`)."""
    d, n, h, b = cfg.d_model, cfg.n_positions, "layers.{i}", "blocks.{i}"
    rules = [
        _reshape_rule("embeddings.cls_token", "cls_token", (d,), (1, 1, d)),
        _reshape_rule("embeddings.position_embeddings", "pos_embed.weight", (n, d), (1, n, d)),
        *_both("embeddings.patch_embeddings.projection", "embed.proj"),
        *_both(f"{h}.layernorm_before", f"{b}.ln1"), *_both(f"{h}.layernorm_after", f"{b}.ln2"),
        *_both(f"{h}.attention.o_proj", f"{b}.attn.o_proj"),
        *_both(f"{h}.mlp.fc1", f"{b}.mlp.up_proj"), *_both(f"{h}.mlp.fc2", f"{b}.mlp.down_proj"),
        *_both("layernorm", "ln_final"),
    ]
    for p in "qkv":
        rules.append(rename(f"{h}.attention.{p}_proj.weight", f"{b}.attn.{p}_proj.weight"))
        if cfg.qkv_bias:
            rules.append(rename(f"{h}.attention.{p}_proj.bias", f"{b}.attn.{p}_proj.bias"))
    if cfg.distillation_token:
        rules.append(_reshape_rule("embeddings.distillation_token", "dist_token", (d,), (1, 1, d)))
    if cfg.pooler:
        rules += _both("pooler.dense", "pooler.dense")
    if cfg.head == "class":
        rules += _both("classifier", "head.classifier")
    elif cfg.head == "teacher":
        rules += [*_both("cls_classifier", "head.classifier"),
                  *_both("distillation_classifier", "head.distill_classifier")]
    return RuleSet(tuple(rules), ignore_sources=IGNORED_SOURCES, aliases=ALIASES)


def clip_vision_rules(cfg: ViTConfig) -> RuleSet:
    """The CLIP vision tower (``CLIPVisionModel``, ``CLIPVisionModelWithProjection``)."""
    h, b = "encoder.layers.{i}", "blocks.{i}"
    rules = [
        rename("embeddings.class_embedding", "cls_token"),
        rename("embeddings.patch_embedding.weight", "embed.proj.weight"),
        rename("embeddings.position_embedding.weight", "pos_embed.weight"),
        *_both("pre_layrnorm", "ln_pre"), *_both("post_layernorm", "ln_final"),
        *_both(f"{h}.layer_norm1", f"{b}.ln1"), *_both(f"{h}.layer_norm2", f"{b}.ln2"),
        *[r for p in "qkv" for r in _both(f"{h}.self_attn.{p}_proj", f"{b}.attn.{p}_proj")],
        *_both(f"{h}.self_attn.out_proj", f"{b}.attn.o_proj"),
        *_both(f"{h}.mlp.fc1", f"{b}.mlp.up_proj"), *_both(f"{h}.mlp.fc2", f"{b}.mlp.down_proj"),
    ]
    if cfg.head == "projection":
        rules.append(rename("visual_projection.weight", "head.classifier.weight"))
    return RuleSet(tuple(rules), ignore_sources=IGNORED_SOURCES, aliases=ALIASES)


def rules_for(cfg: ViTConfig) -> RuleSet:
    """The rule table of the HF layout this config came from."""
    clip = cfg.hf_config.get("model_type") == "clip_vision_model"
    return clip_vision_rules(cfg) if clip else vit_rules(cfg)
