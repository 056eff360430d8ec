"""Path patching (Wang et al. 2022, "Interpretability in the Wild"): the effect of one sender head on the
metric *through* a set of receiver heads' queries, keys or values only.

For every sender head ``(l, h)``:

1. run the clean input with the sender's output (``hook_z``) set to its corrupted value and every other
   head's output frozen to its clean value (MLPs recompute, as in the paper's IOI analysis), and record the
   receivers' q / k / v;
2. run the clean input again with only the receivers' q / k / v replaced by what step 1 recorded, and
   measure the metric.

The sender's effect on anything but the receivers' inputs is thereby removed. Both steps are batched over
senders; step 1 stops at the last receiver. The result is the metric per sender ``[n_layers, n_heads]``
(compare with the clean metric: unaffected senders, e.g. at or after the last receiver, give exactly it).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch

from hookscope.analysis.patch_runner import DEFAULT_MEMORY_BUDGET, PatchRun, PatchRunner, check_names

ReceiverInput = Literal["q", "k", "v"]


def _heads(model: Any, cache: Any) -> tuple[int, int]:
    layers = 0
    while f"blocks.{layers}.attn.hook_z" in cache:
        layers += 1
    if layers == 0:
        raise KeyError("path patching needs 'blocks.{i}.attn.hook_z' in both caches (and the model's hooks)")
    return layers, cache["blocks.0.attn.hook_z"].shape[2]


def _freeze_heads(clean: torch.Tensor, corrupted: torch.Tensor, head: int | None) -> Callable:
    """An edit that sets every head's z to clean, except ``head`` which gets its corrupted value."""

    def edit(act: torch.Tensor) -> torch.Tensor:
        act.copy_(clean)
        if head is not None:
            act[:, :, head] = corrupted[:, :, head]
        return act

    return edit


def _receiver_slots(
    receivers: Sequence[tuple[int, int]], inputs: Sequence[str], n_heads: int, cache: Any
) -> dict[str, list[int]]:
    """Hook name -> head slots to replace (keys/values of a GQA model: the key/value head a receiver reads)."""
    slots: dict[str, list[int]] = {}
    for layer, head in receivers:
        if not 0 <= head < n_heads:
            raise ValueError(f"receiver head {head} is out of range (the model has {n_heads} heads)")
        for kind in inputs:
            name = f"blocks.{layer}.attn.hook_{kind}"
            if name not in cache:
                raise KeyError(f"path patching needs {name!r} in the clean cache (or pass no caches)")
            slot = head if kind == "q" else head // (n_heads // cache[name].shape[2])
            if slot not in slots.setdefault(name, []):
                slots[name].append(slot)
    return slots


def path_patch(
    model: Any,
    clean_tokens: Any,
    corrupted_tokens: Any,
    metric: Callable[[torch.Tensor], Any],
    receivers: Sequence[tuple[int, int]],
    receiver_input: ReceiverInput | Sequence[ReceiverInput] = ("q", "k", "v"),
    *,
    clean_cache: Any = None,
    corrupted_cache: Any = None,
    batch_size: int | None = None,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    senders: Sequence[tuple[int, int]] | None = None,
    logits_to_keep: int | None = None,
    metric_hook: str | Sequence[str] | None = None,
) -> torch.Tensor:
    """Metric ``[n_layers, n_heads]`` of each sender head's path into the receivers' ``receiver_input``.

    Args:
        model: a hookscope decoder (native or wrapped) with ``hook_z`` and ``hook_q/k/v``.
        clean_tokens / corrupted_tokens: the two inputs (same shape).
        metric: logits of one run ``[batch, ...]`` -> scalar.
        receivers: ``(layer, head)`` pairs whose inputs receive the sender's corrupted output.
        receiver_input: which inputs of the receivers: "q", "k", "v" or several.
        clean_cache / corrupted_cache: caches holding every ``hook_z`` (made here when not given).
        senders: only these ``(layer, head)`` senders (the others are NaN in the result); default all.
        logits_to_keep: native decoders: unembed only the last this many positions (see ``generic_activation_patch``).
        metric_hook: the metric reads this hook's activation instead of the logits (see ``generic_activation_patch``).
    """
    inputs = [receiver_input] if isinstance(receiver_input, str) else list(receiver_input)
    if not inputs or any(k not in ("q", "k", "v") for k in inputs):
        raise ValueError(f"receiver_input must be 'q', 'k', 'v' or several of them, got {receiver_input!r}")
    if not receivers:
        raise ValueError("path_patch needs at least one receiver head (layer, head)")
    if "blocks.0.attn.hook_z" not in model.hook_dict:
        raise ValueError(
            f"path_patch needs one stack of self-attention layers with 'blocks.{{i}}.attn.hook_z' and hook_q/k/v "
            f"(native decoders, wrap()'ed models); {type(model).__name__} has no 'blocks.0.attn.hook_z'. On an "
            "encoder-decoder the frozen set (encoder, self- and cross-attention heads) is not defined: patch "
            "its activations with generic_activation_patch and '{layer}' templates instead")
    check_names(model, sorted({f"blocks.{layer}.attn.hook_{k}" for layer, _ in receivers for k in inputs}))
    wanted = lambda n: n.endswith(("attn.hook_z", "attn.hook_q", "attn.hook_k", "attn.hook_v"))  # noqa: E731
    with torch.no_grad():
        if clean_cache is None:
            _, clean_cache = model.run_with_cache(clean_tokens, names_filter=wanted)
        if corrupted_cache is None:
            _, corrupted_cache = model.run_with_cache(corrupted_tokens, names_filter=wanted)
    n_layers, n_heads = _heads(model, clean_cache)
    slots = _receiver_slots(receivers, inputs, n_heads, clean_cache)
    last = max(layer for layer, _ in receivers)
    all_heads = [(layer, head) for layer in range(n_layers) for head in range(n_heads)]
    senders = all_heads if senders is None else [tuple(s) for s in senders]
    bad = [s for s in senders if s not in all_heads]
    if bad:
        raise ValueError(f"senders {bad[:3]} are not heads of this model ({n_layers} layers x {n_heads} heads)")
    z = [f"blocks.{i}.attn.hook_z" for i in range(n_layers)]
    freeze = [PatchRun(edits={
        z[i]: _freeze_heads(clean_cache[z[i]], corrupted_cache[z[i]], head if i == layer else None)
        for i in range(last + 1)}) for layer, head in senders]
    runner = PatchRunner(model, clean_tokens, metric, batch_size=batch_size, memory_budget=memory_budget,
                         logits_to_keep=logits_to_keep, metric_hook=metric_hook)
    recorded = runner.capture(freeze, list(slots))
    patch = [PatchRun(edits={name: _set_slots(rec[name], heads) for name, heads in slots.items()})
             for rec in recorded]
    dtype = torch.float64 if clean_cache[z[0]].dtype == torch.float64 else torch.float32
    out = torch.full((n_layers, n_heads), float("nan"), dtype=dtype)
    for (layer, head), value in zip(senders, runner.run(patch), strict=True):
        out[layer, head] = value
    return out


def _set_slots(value: torch.Tensor, heads: list[int]) -> Callable:
    def edit(act: torch.Tensor) -> torch.Tensor:
        act[:, :, heads] = value[:, :, heads]
        return act

    return edit
