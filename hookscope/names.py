"""The hook-name grammar: canonical names per family, their shapes, and name look-up helpers.

Names follow TransformerLens (``blocks.3.attn.hook_pattern``) so code written for it reads the same
here. This file holds the table of every family (per-block names without the ``blocks.{i}.`` /
``encoder.{i}.`` / ``decoder.{i}.`` prefix, and model-level names), each name mapped to its axes; the
answers never depend on which model modules were imported. The position axis of each activation (for
``pos_slice``) is derived from those axes.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Union

from hookscope.errors import HookNameError

NamesFilter = Union[None, str, Sequence[str], Callable[[str], bool]]

RESID = "batch pos d_model"
HEADS = "batch pos head_index d_head"
PATTERN = "batch head_index query_pos key_pos"
SCALE = "batch pos 1"

PER_HEAD_IN = "batch pos head_index d_model"  # hook_attn_in / hook_q_input ..., and hook_result
KEYS = "batch key_pos head_index d_head"  # keys/values over another sequence's (or every cached) position
MLP = "batch pos d_mlp"

_NORM = {"hook_scale": SCALE, "hook_normalized": RESID}


def _norm(*prefixes: str) -> dict[str, str]:
    return {f"{prefix}.{k}": v for prefix in prefixes for k, v in _NORM.items()}


def _attn(prefix: str = "attn") -> dict[str, str]:
    return {
        f"{prefix}.hook_q": HEADS, f"{prefix}.hook_k": HEADS, f"{prefix}.hook_v": HEADS,
        f"{prefix}.hook_attn_scores": PATTERN, f"{prefix}.hook_pattern": PATTERN,
        f"{prefix}.hook_z": HEADS, f"{prefix}.hook_result": PER_HEAD_IN,
    }


_SPLIT_INPUTS = {n: PER_HEAD_IN for n in ("hook_attn_in", "hook_q_input", "hook_k_input", "hook_v_input")}

# ----------------------------------------------------------------- decoder-only LMs (models/decoder.py)
DECODER_BLOCK: dict[str, str] = {
    "hook_resid_pre": RESID, **_norm("ln1"), **_SPLIT_INPUTS, **_attn(),
    "attn.hook_rot_q": HEADS, "attn.hook_rot_k": HEADS,
    "attn.q_norm.hook_scale": "batch pos head_index 1", "attn.q_norm.hook_normalized": HEADS,  # Qwen3
    "attn.k_norm.hook_scale": "batch pos head_index 1", "attn.k_norm.hook_normalized": HEADS,
    **_norm("ln1_post"), "hook_attn_out": RESID, "hook_resid_mid": RESID, **_norm("ln2"), "hook_mlp_in": RESID,
    "mlp.hook_pre": MLP, "mlp.hook_pre_linear": MLP,
    "mlp.hook_post": MLP, **_norm("ln2_post"), "hook_mlp_out": RESID, "hook_resid_post": RESID,
}
DECODER_MODEL: dict[str, str] = {"hook_embed": RESID, "hook_pos_embed": RESID, **_norm("ln_final")}

# ----------------------------------------------------------------- BERT / RoBERTa (models/bert.py), post-LN
BERT_BLOCK: dict[str, str] = {
    "hook_resid_pre": RESID, **_SPLIT_INPUTS, **_attn(), "hook_attn_out": RESID, "hook_resid_mid": RESID,
    "hook_mlp_in": RESID, **_norm("ln1"), "mlp.hook_pre": MLP, "mlp.hook_post": MLP, "hook_mlp_out": RESID,
    "hook_resid_post": RESID, **_norm("ln2"), "hook_normalized_resid_post": RESID,
}
BERT_MODEL: dict[str, str] = {
    "embed.hook_embed": RESID, "embed.hook_pos_embed": RESID, "embed.hook_token_type_embed": RESID,
    **_norm("embed.ln"), "hook_full_embed": RESID, "mlm_head.hook_pre": RESID, **_norm("mlm_head.ln"),
    "pooler.hook_pooler_out": "batch d_model", "nsp_head.hook_out": "batch 2", "classifier.hook_out": "batch n_labels",
}

# ----------------------------------------------------------------- T5 (models/t5.py): encoder.{i} / decoder.{i}
_CROSS = {"hook_cross_attn_in": RESID, "hook_cross_attn_out": RESID, "hook_resid_mid_cross": RESID}
T5_BLOCK: dict[str, str] = {
    **{n: RESID for n in ("hook_resid_pre", "hook_attn_out", "hook_resid_mid", "hook_mlp_in", "hook_mlp_out",
                          "hook_resid_post")},
    **_CROSS, **_SPLIT_INPUTS, **_norm("ln1", "ln2", "ln3"), **_attn(), **_attn("cross_attn"),
    "cross_attn.hook_k": KEYS, "cross_attn.hook_v": KEYS,  # over encoder positions
    "attn.hook_position_bias": PATTERN,  # batch axis of size 1
    "mlp.hook_pre": MLP, "mlp.hook_pre_linear": MLP, "mlp.hook_post": MLP,
}
T5_MODEL: dict[str, str] = {
    "hook_embed": RESID, "hook_decoder_embed": RESID,
    "encoder_rel_pos.hook_position_bias": PATTERN, "decoder_rel_pos.hook_position_bias": PATTERN,
    **_norm("encoder_final_ln", "decoder_final_ln"),
}

# ----------------------------------------------------------------- ViT / DeiT / CLIP vision (models/vit.py)
VIT_BLOCK: dict[str, str] = {
    k: v for k, v in DECODER_BLOCK.items() if k not in ("attn.hook_rot_q", "attn.hook_rot_k", "mlp.hook_pre_linear")
}
VIT_MODEL: dict[str, str] = {
    "embed.hook_patch_embed": RESID,  # pos = patches only (no class token)
    "hook_embed": RESID, "hook_pos_embed": RESID, **_norm("ln_pre", "ln_final"), "head.hook_out": "batch n_classes",
}

# ----------------------------------------------------------------- Whisper (models/whisper.py)
WHISPER_BLOCK: dict[str, str] = {
    "hook_resid_pre": RESID, **_norm("ln1", "ln2", "ln3"), **_attn(),
    "attn.hook_k": KEYS, "attn.hook_v": KEYS, "hook_attn_out": RESID, "hook_resid_mid": RESID,
    **_CROSS, **_attn("cross_attn"), "cross_attn.hook_k": KEYS, "cross_attn.hook_v": KEYS,
    "hook_mlp_in": RESID, "mlp.hook_pre": MLP, "mlp.hook_post": MLP, "hook_mlp_out": RESID, "hook_resid_post": RESID,
}
WHISPER_MODEL: dict[str, str] = {
    "encoder_embed.hook_conv1": "batch frame d_model", "encoder_embed.hook_conv2": RESID,
    "encoder_embed.hook_pos_embed": RESID, "hook_embed": RESID, "hook_pos_embed": RESID,
    **_norm("encoder_final_ln", "decoder_final_ln"),
}

# ----------------------------------------------------------------- DiT (models/dit.py): adaLN conditioning
_VEC = "batch d_model"
DIT_BLOCK: dict[str, str] = {
    **{k: DECODER_BLOCK[k] for k in (
        "hook_resid_pre", "ln1.hook_scale", "ln1.hook_normalized", "attn.hook_q", "attn.hook_k", "attn.hook_v",
        "attn.hook_attn_scores", "attn.hook_pattern", "attn.hook_z", "attn.hook_result", "hook_attn_out",
        "hook_resid_mid", "ln2.hook_scale", "ln2.hook_normalized", "mlp.hook_pre", "mlp.hook_post",
        "hook_mlp_out", "hook_resid_post",
    )},
    "cond.hook_time_embed": _VEC, "cond.hook_class_embed": _VEC, "hook_cond": _VEC,
    **{f"hook_{m}": _VEC for m in ("shift_msa", "scale_msa", "gate_msa", "shift_mlp", "scale_mlp", "gate_mlp")},
    "hook_modulated_msa": RESID, "hook_modulated_mlp": RESID,
}
DIT_MODEL: dict[str, str] = {
    "embed.hook_patch_embed": RESID, "hook_pos_embed": RESID, "hook_shift_final": _VEC, "hook_scale_final": _VEC,
    **_norm("ln_final"), "hook_modulated_final": RESID, "hook_patch_out": "batch pos patch_values",
    "hook_image_out": "batch channel height width",
}

# family -> (per-block templates, model-level names); the order is the look-up order of shape_of
FAMILY_TABLES: dict[str, tuple[dict[str, str], dict[str, str]]] = {
    "decoder": (DECODER_BLOCK, DECODER_MODEL),
    "bert": (BERT_BLOCK, BERT_MODEL),
    "t5": (T5_BLOCK, T5_MODEL),
    "vit": (VIT_BLOCK, VIT_MODEL),
    "whisper": (WHISPER_BLOCK, WHISPER_MODEL),
    "dit": (DIT_BLOCK, DIT_MODEL),
}


def shape_of(name: str, family: str | None = None) -> str | None:
    """The documented axes of a canonical hook name, e.g. ``"batch pos d_model"``; None if unknown.

    Args:
        name: a full hook name (``"blocks.3.attn.hook_k"``).
        family: ``"decoder"``, ``"bert"``, ``"t5"``, ``"vit"``, ``"whisper"`` or ``"dit"``: that family's
            table only.
            Without it the families are searched in :data:`FAMILY_TABLES` order (Whisper's self-attention
            keys, for one, are ``key_pos`` where a decoder's are ``pos``).
    """
    if family is not None and family not in FAMILY_TABLES:
        raise ValueError(f"unknown family {family!r}; known: {', '.join(FAMILY_TABLES)}")
    suffix = re.sub(r"^(?:blocks|encoder|decoder)\.\d+\.", "", name)
    tables = [FAMILY_TABLES[family]] if family is not None else FAMILY_TABLES.values()
    for block, model in tables:
        if name in model:
            return model[name]
        if suffix != name and suffix in block:
            return block[suffix]
    return None


def position_axis(name: str, ndim: int) -> int | None:
    """Axis that indexes positions (query positions for patterns), or None if it has none."""
    axes = shape_of(name)
    if axes is not None and len(axes.split()) == ndim:  # another family's name of another rank: not this one
        parts = axes.split()
        for key in ("pos", "query_pos"):
            if key in parts:
                return parts.index(key)
        return None
    if name.endswith(("hook_pattern", "hook_attn_scores")) and ndim == 4:
        return 2  # [batch, head_index, query_pos, key_pos] under any prefix (e.g. a wrapped cross_attn)
    # Unknown (e.g. wrapped-module) names: assume [batch, pos, ...] when there are >= 3 axes.
    return 1 if ndim >= 3 else None


# ----------------------------------------------------------------- TransformerLens get_act_name
_ATTN_NAMES = {"q", "k", "v", "z", "rot_q", "rot_k", "result", "pattern", "attn_scores"}
_MLP_NAMES = {"pre", "pre_linear", "post", "mid"}
_ACT_ALIASES = {"attn": "pattern", "attn_logits": "attn_scores", "key": "k", "query": "q", "value": "v",
                "mlp_pre": "pre", "mlp_mid": "mid", "mlp_post": "post"}
_LAYER_TYPE_ALIASES = {"a": "attn", "m": "mlp", "b": "", "block": "", "blocks": "", "attention": "attn"}


def get_act_name(name: str, layer: int | None = None, layer_type: str | None = None) -> str:
    """TransformerLens-compatible short-name expansion.

    ``get_act_name("resid_post", 3) == "blocks.3.hook_resid_post"``,
    ``get_act_name("pattern", 0) == "blocks.0.attn.hook_pattern"``,
    ``get_act_name("scale", 2, "ln1") == "blocks.2.ln1.hook_scale"``,
    ``get_act_name("normalized", None, "ln_final") == "ln_final.hook_normalized"``.
    Compact names as TransformerLens: ``"resid_pre5" == ("resid_pre", 5)``, ``"scale2ln1" == ("scale", 2,
    "ln1")``, ``"pattern3"``; aliases ``attn`` (pattern), ``attn_logits``, ``key``/``query``/``value``,
    ``mlp_pre``/``mlp_post``; ``"scale"`` / ``"normalized"`` without a layer are ``ln_final``'s.
    A full name (containing ``hook_`` or a dot) is returned unchanged.
    """
    if ("hook_" in name or "." in name) and layer is None and layer_type is None:
        return name
    compact = re.fullmatch(r"([a-z_]+?)(\d+)([a-z]\w*)?", name) if layer is None else None
    if compact is not None:
        name, layer, layer_type = compact.group(1), int(compact.group(2)), compact.group(3) or layer_type
    name = _ACT_ALIASES.get(name, name)
    if layer_type is None:
        if name in _ATTN_NAMES:
            layer_type = "attn"
        elif name in _MLP_NAMES:
            layer_type = "mlp"
        else:
            layer_type = ""
    layer_type = _LAYER_TYPE_ALIASES.get(layer_type, layer_type)
    parts = []
    if layer is not None:
        parts.append(f"blocks.{layer}")
    if layer_type:
        parts.append(layer_type)
    parts.append(f"hook_{name}")
    if layer is None and not layer_type and name in ("scale", "normalized"):
        parts.insert(0, "ln_final")
    return ".".join(parts)


# ----------------------------------------------------------------- filters and suggestions
def suggest_names(name: str, valid: Iterable[str], n: int = 3) -> list[str]:
    """The valid names closest to a misspelt one (by edit similarity)."""
    pool = list(valid)
    close = difflib.get_close_matches(name, pool, n=n, cutoff=0.5)
    if close:
        return close
    tail = name.rsplit(".", 1)[-1]
    return [v for v in pool if v.endswith(tail)][:n]


def resolve_names_filter(
    names_filter: NamesFilter, valid: Mapping[str, object], unknown: Callable[[str], str]
) -> list[str]:
    """Turn any accepted filter form into the list of hook names it selects (in model order)."""
    if names_filter is None:
        return list(valid)
    if isinstance(names_filter, str):
        names_filter = [names_filter]
    if callable(names_filter):
        return [n for n in valid if names_filter(n)]
    if not isinstance(names_filter, Iterable):
        raise TypeError(
            "names_filter must be None, a hook name, a list of hook names or a function name -> bool; "
            f"got {type(names_filter).__name__}"
        )
    wanted = list(names_filter)
    for n in wanted:
        if not isinstance(n, str):
            raise TypeError(f"names_filter entries must be strings, got {type(n).__name__}")
        if n not in valid:
            raise HookNameError(unknown(n))
    chosen = set(wanted)
    return [n for n in valid if n in chosen]
