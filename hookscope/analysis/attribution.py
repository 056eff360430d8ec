"""Attribution patching (Nanda 2023; Syed et al. 2023): activation patching's first-order approximation.

For every activation ``a`` the effect of patching its clean value into the corrupted run is approximated by
``(a_clean - a_corrupted) . d metric / d a`` at the corrupted run: two forwards (clean, corrupted) and one
backward give it for every hook, head and position at once. For a metric and model that are linear in the
patched activation the approximation is exact (the tests check that identity); elsewhere compare it to
:mod:`hookscope.analysis.patching` with :func:`correlation`.

Scores are summed over the batch, because a TransformerLens patch replaces a slot in every batch row, so
they line up with ``get_act_patch_* - corrupted metric``. :meth:`AttributionResult.grid` lays them out as
the matching ``get_act_patch_*`` result.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from hookscope.analysis.patch_runner import call_model, output_logits
from hookscope.names import NamesFilter

DEFAULT_ACTIVATIONS = ("resid_pre", "resid_mid", "attn_out", "mlp_out", "z", "q", "k", "v", "pattern")
_SITES = {
    "resid_pre": "hook_resid_pre", "resid_mid": "hook_resid_mid", "resid_post": "hook_resid_post",
    "attn_out": "hook_attn_out", "mlp_out": "hook_mlp_out", "z": "attn.hook_z", "q": "attn.hook_q",
    "k": "attn.hook_k", "v": "attn.hook_v", "pattern": "attn.hook_pattern", "result": "attn.hook_result",
}
_HEAD_VECTOR = {"z", "q", "k", "v", "result"}


@dataclass(frozen=True, kw_only=True)
class AttributionResult:
    """Per-hook attribution scores (activation shape without the batch axis) and the two runs' metrics."""

    scores: dict[str, torch.Tensor]
    clean_metric: float
    corrupted_metric: float

    def grid(self, activation: str, all_pos: bool = False) -> torch.Tensor:
        """Scores in the layout of the matching ``get_act_patch_*`` (minus the corrupted metric).

        ``resid_*``/``attn_out``/``mlp_out``: ``[layer, pos]``; ``z``/``q``/``k``/``v``: ``[layer, pos, head]``
        (``[layer, head]`` with ``all_pos``); ``pattern``: ``[layer, head, dest_pos]`` (``[layer, head]``).
        """
        if activation not in _SITES:
            raise ValueError(f"unknown activation {activation!r}; choose from {sorted(_SITES)}")
        site = re.escape(_SITES[activation])
        found = sorted((int(m.group(1)), s) for n, s in self.scores.items()
                       if (m := re.fullmatch(rf"blocks\.(\d+)\.{site}", n)))
        if not found:
            raise KeyError(f"no {activation!r} scores: pass it in activations= / names_filter=")
        stacked = torch.stack([s for _, s in found])  # [layer, ...]
        out = stacked.sum(-1)  # over d_model / d_head / src_pos
        if all_pos and activation in _HEAD_VECTOR:
            return out.sum(1)
        if all_pos and activation == "pattern":
            return out.sum(-1)
        return out


def _names(model: Any, activations: Sequence[str], names_filter: NamesFilter) -> list[str]:
    if names_filter is not None:
        return model.cache_names(names_filter)
    unknown = [a for a in activations if a not in _SITES]
    if unknown:
        raise ValueError(f"unknown activations {unknown}; choose from {sorted(_SITES)}")
    sites = tuple(f".{_SITES[a]}" for a in activations)
    names = [n for n in model.hook_dict if n.startswith("blocks.") and n.endswith(sites)]
    if not names:
        raise KeyError(f"{type(model).__name__} has none of the hooks {sorted(sites)}")
    return names


def attribution_patch(
    model: Any,
    clean_input: Any,
    corrupted_input: Any,
    metric: Callable[[torch.Tensor], torch.Tensor],
    activations: Sequence[str] = DEFAULT_ACTIVATIONS,
    *,
    names_filter: NamesFilter = None,
    logits_to_keep: int | None = None,
) -> AttributionResult:
    """``(clean - corrupted) * grad(metric at corrupted)`` for every activation, summed over the batch.

    Args:
        model: any hookscope model.
        clean_input / corrupted_input: token ids (or dicts of keyword inputs) of the same shape.
        metric: logits ``[batch, ...]`` -> a differentiable scalar.
        activations: short names (``resid_pre``, ``z``, ``pattern``...) taken at every layer.
        names_filter: explicit hook names instead (any hook, e.g. ``hook_embed`` or encoder names).
        logits_to_keep: native decoders: unembed only the last this many positions in both runs (for a
            metric that reads only those; it then receives ``[batch, logits_to_keep, d_vocab]``).
    """
    names = _names(model, activations, names_filter)
    kwargs = {} if logits_to_keep is None else {"logits_to_keep": logits_to_keep}
    with torch.no_grad():
        if isinstance(clean_input, dict):
            clean_out, clean_cache = model.run_with_cache(**clean_input, names_filter=names, **kwargs)
        else:
            clean_out, clean_cache = model.run_with_cache(clean_input, names_filter=names, **kwargs)
        clean_metric = float(metric(output_logits(clean_out)))
    acts: dict[str, torch.Tensor] = {}

    def keep(act: torch.Tensor, hook: Any) -> torch.Tensor:
        # a graph must reach every activation even when no parameter requires grad
        act = act if act.requires_grad else act.detach().requires_grad_(True)
        acts[hook.name] = act
        return act

    with torch.enable_grad(), model.hooks([(n, keep) for n in names]):
        value = metric(output_logits(call_model(model, corrupted_input, **kwargs)))
        if not isinstance(value, torch.Tensor) or value.numel() != 1:
            raise ValueError("the metric must return a scalar tensor (attribution patching differentiates it)")
        order = [n for n in names if n in acts]
        grads = torch.autograd.grad(value, [acts[n] for n in order], allow_unused=True)
    scores = {}
    for name, grad in zip(order, grads, strict=True):
        diff = clean_cache[name] - acts[name].detach()
        scores[name] = (diff * grad).sum(0).detach() if grad is not None else torch.zeros_like(diff[0])
    return AttributionResult(scores=scores, clean_metric=clean_metric, corrupted_metric=float(value.detach()))


def correlation(x: torch.Tensor, y: torch.Tensor) -> float:
    """Pearson correlation of two equally shaped score tensors (e.g. attribution vs activation patching)."""
    if x.shape != y.shape:
        raise ValueError(f"shapes differ: {tuple(x.shape)} vs {tuple(y.shape)}")
    a, b = x.flatten().double(), y.flatten().double()
    a, b = a - a.mean(), b - b.mean()
    return float((a @ b) / (a.norm() * b.norm()))
