"""Attribution patching (Nanda 2023; Syed et al. 2023): activation patching's first-order approximation.

For every activation ``a`` the effect of patching its clean value into the corrupted run is approximated by
``(a_clean - a_corrupted) . d metric / d a`` at the corrupted run: two forwards (clean, corrupted) and one
backward give it for every hook, head and position at once. For a metric and model that are linear in the
patched activation the approximation is exact (the tests check that identity); elsewhere compare it to
:mod:`hookscope.analysis.patching` with :func:`correlation`.

Cost, kept near the two forwards and one backward the method needs: the clean run stops as soon as the last
hooked activation has fired (no later block, no unembedding: its metric is computed only if asked for), and
for the duration of the call no parameter requires a gradient, so the corrupted run records a graph only from
the first hooked activation on and the backward computes activation gradients alone, no weight gradients.

Scores are summed over the batch, because a TransformerLens patch replaces a slot in every batch row, so
they line up with ``get_act_patch_* - corrupted metric``. :meth:`AttributionResult.grid` lays them out as
the matching ``get_act_patch_*`` result.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import torch

from hookscope.analysis.patch_runner import call_model, output_logits
from hookscope.hooks import StopForward
from hookscope.models.decoder import Decoder
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
    """Per-hook attribution scores (activation shape without the batch axis) and the two runs' metrics.

    ``clean_metric`` is computed on first access by one more clean forward (the clean run of
    :func:`attribution_patch` stops at the last hooked activation, before the logits), unless that run
    reached the logits anyway.
    """

    scores: dict[str, torch.Tensor]
    corrupted_metric: float
    clean_metric_fn: Callable[[], float] = field(repr=False)

    @cached_property
    def clean_metric(self) -> float:
        """The metric of the clean run."""
        return self.clean_metric_fn()

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
        raise KeyError(f"{type(model).__name__} has no 'blocks.{{i}}' hooks {sorted(sites)}: pass its own names with "
                       "names_filter= (e.g. lambda n: n.startswith('encoder.') and n.endswith('hook_resid_pre'))")
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
    clean_cache, clean_logits = _clean_run(model, clean_input, names, kwargs)
    value, acts, grads = _corrupted_run(model, corrupted_input, metric, names, kwargs)
    order = [n for n in names if n in acts]
    missing = [n for n in order if n not in clean_cache]
    if missing:
        raise RuntimeError(f"hooks {missing[:3]} fired in the corrupted run but not in the clean run")
    scores = {}
    with torch.no_grad():
        for name in order:
            diff = clean_cache[name] - acts[name].detach()
            grad = grads.get(name)
            scores[name] = (diff * grad).sum(0) if grad is not None else torch.zeros_like(diff[0])

    def clean_metric() -> float:
        if clean_logits is not None:
            return float(metric(clean_logits))
        with torch.no_grad():
            return float(metric(output_logits(call_model(model, clean_input, **kwargs))))

    return AttributionResult(scores=scores, corrupted_metric=float(value.detach()), clean_metric_fn=clean_metric)


def _corrupted_run(model: Any, inputs: Any, metric: Callable, names: list[str], kwargs: dict[str, Any]
                   ) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(metric, hooked activations, their gradients) of the corrupted run."""
    acts: dict[str, torch.Tensor] = {}

    def keep(act: torch.Tensor, hook: Any) -> torch.Tensor:
        # no parameter requires grad: the graph starts at the first hooked activation, made a leaf here.
        # Later ones get a new view: a module that computes an activation beside its fused kernel (a norm's
        # hook_scale) goes on with what the hook returns only when it is not the object it passed in, so
        # handing ``act`` itself back would leave the kept tensor off the graph (its score silently 0).
        # An observe-only point of a wrapped model refuses any other tensor: the module goes on with ``act``
        # itself, made to require grad in place (it has no graph behind it: no parameter requires grad).
        if getattr(hook, "readonly_reason", None) is not None:
            act = act if act.requires_grad else act.requires_grad_(True)
        elif not act.requires_grad:
            act = act.detach().requires_grad_(True)
        else:
            act = act.view_as(act)
        acts[hook.name] = act
        return act

    with _no_parameter_grads(model), torch.enable_grad(), model.hooks([(n, keep) for n in names]):
        if isinstance(model, Decoder) and isinstance(inputs, torch.Tensor) and not inputs.is_floating_point():
            normalized = model.ln_final(model(inputs, stop_at_layer=len(model.blocks)))  # [batch, pos, d_model]
            if "logits_to_keep" in kwargs:
                normalized = normalized[:, -kwargs["logits_to_keep"]:]
            value, output, grad_output = _sparse_unembed_grad(model.unembed, normalized, metric)
        else:
            value = output = metric(output_logits(call_model(model, inputs, **kwargs)))
            grad_output = None
        _check_scalar(value)
        needs = [n for n in names if n in acts and acts[n].requires_grad]
        if not needs or not output.requires_grad:
            return value, acts, {}
        found = torch.autograd.grad(output, [acts[n] for n in needs], grad_output, allow_unused=True)
    return value, acts, {n: g for n, g in zip(needs, found, strict=True) if g is not None}


def _sparse_unembed_grad(unembed: Any, normalized: torch.Tensor, metric: Callable
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The metric, and its gradient w.r.t. the final normalized residual, unembedding only the rows
    (positions) whose logits the metric's gradient touches: exact, since the unembedding is position-wise
    and the other rows' gradients are zero; a metric on the last position skips the unembedding's backward
    on every other position."""
    with torch.no_grad():
        logits = unembed(normalized)  # [batch, pos, d_vocab]
    logits.requires_grad_(True)
    value = metric(logits)
    _check_scalar(value)
    if not value.requires_grad:
        return value, value, None
    (grad_logits,) = torch.autograd.grad(value, logits)
    flat = grad_logits.flatten(0, -2)  # [batch * pos, d_vocab]
    rows = flat.ne(0).any(-1)
    picked = normalized.detach().flatten(0, -2)[rows].requires_grad_(True)  # [rows, d_model]
    (grad_rows,) = torch.autograd.grad(unembed(picked[None])[0], picked, flat[rows])
    grad = torch.zeros_like(normalized).flatten(0, -2)
    grad[rows] = grad_rows
    return value, normalized, grad.view_as(normalized)


def _check_scalar(value: Any) -> None:
    if not isinstance(value, torch.Tensor) or value.numel() != 1:
        raise ValueError("the metric must return a scalar tensor (attribution patching differentiates it)")


def _clean_run(model: Any, inputs: Any, names: list[str], kwargs: dict[str, Any]
               ) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
    """The clean activations at ``names``; the forward stops once all have fired (logits None then)."""
    cache: dict[str, torch.Tensor] = {}

    def store(act: torch.Tensor, hook: Any) -> None:
        cache[hook.name] = act.detach()
        if len(cache) == len(names):
            raise StopForward  # nothing after the last hooked activation is needed

    with torch.no_grad(), model.hooks([(n, store) for n in names]):
        try:
            return cache, output_logits(call_model(model, inputs, **kwargs))
        except StopForward:
            return cache, None


@contextmanager
def _no_parameter_grads(model: Any) -> Iterator[None]:
    """Turn ``requires_grad`` off on every parameter for the block, then restore each flag exactly: the
    backward then computes only activation gradients (no weight-gradient matmuls, a smaller graph)."""
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def correlation(x: torch.Tensor, y: torch.Tensor) -> float:
    """Pearson correlation of two equally shaped score tensors (e.g. attribution vs activation patching)."""
    if x.shape != y.shape:
        raise ValueError(f"shapes differ: {tuple(x.shape)} vs {tuple(y.shape)}")
    a, b = x.flatten().double(), y.flatten().double()
    a, b = a - a.mean(), b - b.mean()
    return float((a @ b) / (a.norm() * b.norm()))
