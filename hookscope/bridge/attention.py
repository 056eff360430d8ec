"""Per-head attention hooks for transformers models, through transformers' attention-function registry.

transformers' attention modules project q/k/v themselves and then call
``ALL_ATTENTION_FUNCTIONS.get_interface(config._attn_implementation, ...)``. We register one more
implementation, ``"hookscope"``: eager attention (the same maths as each model's
``eager_attention_forward``) that fires ``hook_q/k/v`` (or ``hook_rot_q/k`` after rotary),
``hook_attn_scores``, ``hook_pattern`` and ``hook_z``. A wrapped model switches its configs to it only
while one of those hooks is active, so otherwise it keeps its fused (sdpa / flash) attention.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from hookscope.bridge.sites import BridgePoint
from hookscope.hooks import HookError

IMPLEMENTATION = "hookscope"

# attention module -> the points of every live wrapper of it (a model wrapped twice, e.g. a notebook
# cell run again, keeps both wrappers working). Weak keys and references: wrapping keeps nothing alive.
_POINTS: weakref.WeakKeyDictionary[nn.Module, list[weakref.ref[AttentionPoints]]] = weakref.WeakKeyDictionary()


class AttentionPoints:
    """The hook points of one attention module: q, k, v, scores, pattern, z.

    Shapes as the hooks see them: q ``[batch, pos, head_index, d_head]``, k and v
    ``[batch, key_pos, kv_head_index, d_head]`` (GQA: un-repeated), scores and pattern
    ``[batch, head_index, query_pos, key_pos]``, z ``[batch, pos, head_index, d_head]``.
    """

    KEYS = ("q", "k", "v", "attn_scores", "pattern", "z")

    def __init__(self, prefix: str, rotary: bool, softmax_in_float32: bool = True) -> None:
        self.prefix = prefix
        self.softmax_in_float32 = softmax_in_float32  # softmax in float32, as the model's own eager attention
        self.points: dict[str, BridgePoint] = {key: BridgePoint() for key in self.KEYS}
        self.names = {key: f"{prefix}.hook_{key}" for key in self.KEYS}
        if rotary:  # attention sees q and k after rotary: TransformerLens calls those rot_q / rot_k
            self.names["q"], self.names["k"] = f"{prefix}.hook_rot_q", f"{prefix}.hook_rot_k"

    def named_points(self) -> Iterator[tuple[str, BridgePoint]]:
        for key in self.KEYS:
            yield self.names[key], self.points[key]

    @property
    def active(self) -> bool:
        return any(p.fwd_hooks or p.bwd_hooks for p in self.points.values())


# id(config) -> [number of switches holding it on "hookscope", the implementation to restore]: two
# wrappers of one model switch it on and off in any order and the model still ends on its own setting.
_HELD: dict[int, list[Any]] = {}


class AttentionSwitch:
    """Switches a model's configs to the hooked attention while any attention point listens."""

    def __init__(self, root: nn.Module, groups: dict[nn.Module, AttentionPoints]) -> None:
        self.groups = groups
        self.configs = _configs_of(root)
        self.on = False
        for module, group in groups.items():
            refs = [r for r in _POINTS.get(module, []) if r() is not None]
            _POINTS[module] = [*refs, weakref.ref(group)]
            for point in group.points.values():
                point.listener = self.sync

    def sync(self) -> None:
        active = any(group.active for group in self.groups.values())
        if active and not self.on:
            # Save every value before setting any: a parent's setter may also set its sub-configs.
            saved = [cfg._attn_implementation for cfg in self.configs]
            for cfg, value in zip(self.configs, saved, strict=True):
                _HELD.setdefault(id(cfg), [0, value])[0] += 1
            for cfg in self.configs:
                cfg._attn_implementation = IMPLEMENTATION
            self.on = True
        elif not active and self.on:
            # Parents come before their sub-configs, so each sub-config ends with its own value.
            for cfg in self.configs:
                held = _HELD[id(cfg)]
                held[0] -= 1
                if held[0] == 0:
                    del _HELD[id(cfg)]
                    cfg._attn_implementation = held[1]
            self.on = False


def _configs_of(root: nn.Module) -> list[Any]:
    """Every transformers config reachable from the modules (T5 stacks hold copies), parents first."""
    from transformers import PretrainedConfig

    seen: dict[int, Any] = {}

    def visit(cfg: Any) -> None:
        if not isinstance(cfg, PretrainedConfig) or id(cfg) in seen:
            return
        seen[id(cfg)] = cfg
        for key in getattr(cfg, "sub_configs", {}) or {}:
            visit(getattr(cfg, key, None))

    for module in root.modules():
        visit(getattr(module, "config", None))
    return list(seen.values())


def _live_groups(module: nn.Module) -> list[AttentionPoints]:
    """The attention points of every live wrapper of ``module``, in wrapping order."""
    groups = (ref() for ref in _POINTS.get(module, ()))
    return [group for group in groups if group is not None]


def _fire(groups: list[AttentionPoints], key: str, x: torch.Tensor, heads_first: bool = False) -> torch.Tensor:
    """Thread ``x`` through point ``key`` of each group (skipping idle ones).

    ``heads_first``: ``x`` is ``[batch, heads, pos, d]``, shown to hooks as ``[batch, pos, heads, d]``.
    """
    for group in groups:
        point = group.points[key]
        if not (point.fwd_hooks or point.bwd_hooks):
            continue
        x = point(x.transpose(1, 2)).transpose(1, 2) if heads_first else point(x)
    return x


def hooked_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    softcap: float | None = None,
    position_bias: torch.Tensor | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eager attention with hook points; mirrors transformers' per-model ``eager_attention_forward``.

    Args:
        query: ``[batch, head_index, query_pos, d_head]``;
            key, value: ``[batch, kv_head_index, key_pos, d_head]``.
        attention_mask: additive float mask ``[batch, 1, query_pos, >= key_pos]`` (or boolean, True = keep).
        softcap: Gemma 2's ``tanh`` soft-capping of the scores. position_bias: T5's relative bias.

    Returns:
        ``(z [batch, query_pos, head_index, d_head], pattern [batch, head_index, query_pos, key_pos])``.
    """
    if kwargs.get("s_aux") is not None:
        raise HookError(
            "hooked attention does not implement attention sinks (s_aux); unhook attention internals"
        )
    groups = _live_groups(module)
    query = _fire(groups, "q", query, heads_first=True)
    key = _fire(groups, "k", key, heads_first=True)
    value = _fire(groups, "v", value, heads_first=True)
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    n_rep = query.shape[1] // key.shape[1]
    if n_rep > 1:  # GQA/MQA: kv head j serves query heads j*n_rep ... (j+1)*n_rep-1 (HF repeat_kv)
        key = key.repeat_interleave(n_rep, dim=1)
        value = value.repeat_interleave(n_rep, dim=1)
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    if position_bias is not None:
        scores = scores + position_bias
    if attention_mask is not None:
        mask = attention_mask[:, :, :, : key.shape[-2]]
        if mask.dtype == torch.bool:
            scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
        else:
            scores = scores + mask
    scores = _fire(groups, "attn_scores", scores)
    if not groups or groups[0].softmax_in_float32:
        pattern = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    else:  # GPT-2, BERT, T5, Whisper: softmax in the scores' own dtype
        pattern = torch.softmax(scores, dim=-1).to(value.dtype)
    pattern = nn.functional.dropout(pattern, p=dropout, training=module.training)
    pattern = _fire(groups, "pattern", pattern)
    z = torch.matmul(pattern, value).transpose(1, 2).contiguous()
    z = _fire(groups, "z", z)
    return z, pattern


def register_implementation() -> None:
    """Register ``"hookscope"`` attention (and its eager-style mask) with transformers, once."""
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, eager_mask
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    if IMPLEMENTATION not in ALL_ATTENTION_FUNCTIONS._global_mapping:
        ALL_ATTENTION_FUNCTIONS.register(IMPLEMENTATION, hooked_attention)
    if IMPLEMENTATION not in ALL_MASK_ATTENTION_FUNCTIONS._global_mapping:
        ALL_MASK_ATTENTION_FUNCTIONS.register(IMPLEMENTATION, eager_mask)
