"""The hook-name grammar: canonical names per family, their shapes, and name look-up helpers.

Names follow TransformerLens (``blocks.3.attn.hook_pattern``) so code written for it reads the same
here. Each table maps a name template (``{i}`` stands for a layer index) to the activation's axes.
The position axis of each activation (for ``pos_slice``) is derived from those axes.
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

_NORM = {"hook_scale": SCALE, "hook_normalized": RESID}


def _norm(prefix: str) -> dict[str, str]:
    return {f"{prefix}.{k}": v for k, v in _NORM.items()}


_ATTN = {
    "attn.hook_q": HEADS, "attn.hook_k": HEADS, "attn.hook_v": HEADS,
    "attn.hook_attn_scores": PATTERN, "attn.hook_pattern": PATTERN,
    "attn.hook_z": HEADS, "attn.hook_result": "batch pos head_index d_model",
}

DECODER_BLOCK: dict[str, str] = {
    "hook_resid_pre": RESID, **_norm("ln1"), "hook_attn_in": "batch pos head_index d_model",
    "hook_q_input": "batch pos head_index d_model", "hook_k_input": "batch pos head_index d_model",
    "hook_v_input": "batch pos head_index d_model", **_ATTN,
    "attn.hook_rot_q": HEADS, "attn.hook_rot_k": HEADS,
    "attn.q_norm.hook_scale": "batch pos head_index 1", "attn.q_norm.hook_normalized": HEADS,  # Qwen3
    "attn.k_norm.hook_scale": "batch pos head_index 1", "attn.k_norm.hook_normalized": HEADS,
    **_norm("ln1_post"), "hook_attn_out": RESID, "hook_resid_mid": RESID, **_norm("ln2"), "hook_mlp_in": RESID,
    "mlp.hook_pre": "batch pos d_mlp", "mlp.hook_pre_linear": "batch pos d_mlp",
    "mlp.hook_post": "batch pos d_mlp", **_norm("ln2_post"), "hook_mlp_out": RESID, "hook_resid_post": RESID,
}
DECODER_MODEL: dict[str, str] = {
    "hook_embed": RESID, "hook_pos_embed": RESID, **_norm("ln_final"),
}

FAMILY_TABLES: dict[str, tuple[dict[str, str], dict[str, str]]] = {
    # family -> (per-block templates, model-level names)
    "decoder": (DECODER_BLOCK, DECODER_MODEL),
}


def register_family(name: str, block: Mapping[str, str], model: Mapping[str, str]) -> None:
    """Add a family's table (each family module registers its own names on import)."""
    FAMILY_TABLES[name] = (dict(block), dict(model))


def shape_of(name: str) -> str | None:
    """The documented axes of a canonical hook name, e.g. ``"batch pos d_model"``; None if unknown."""
    suffix = re.sub(r"^(?:blocks|encoder|decoder)\.\d+\.", "", name)
    for block, model in FAMILY_TABLES.values():
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
