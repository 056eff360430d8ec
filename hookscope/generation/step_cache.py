"""Activations of every decoding step, joined so they read like one forward over the final sequence.

With a KV cache each step computes only its new positions, so concatenating the steps along each
activation's position axis gives exactly the positions a single forward over the whole sequence would
compute. Attention patterns and scores also grow along key positions: each step's keys are placed at
their absolute positions (a sliding-window cache gives a step only its latest keys) and the rest is
filled with what a full causal forward holds there (pattern 0; scores the mask's fill value).
:func:`concat_steps` serves native generation and wrapped models' ``generate`` alike.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from hookscope.cache import ActivationCache, CallList, make_caching_hooks
from hookscope.components.masks import mask_fill_dtype
from hookscope.names import NamesFilter, position_axis


class StepRecorder:
    """Caching hooks that write each forward's activations into a fresh per-step dict.

    Use as a context manager around the decoding loop and call :meth:`end_step` after every forward.
    """

    def __init__(self, model: Any, names_filter: NamesFilter) -> None:
        self.model = model
        self.names = model.cache_names(names_filter)
        self.steps: list[dict[str, torch.Tensor]] = []
        self.pinned: dict[str, torch.Tensor] = {}  # computed once before the steps (an encoder's)
        self._current: dict[str, torch.Tensor] = {}
        fwd, _ = make_caching_hooks(
            self.names, self._current, device=None, remove_batch_dim=False, pos_slice=None, incl_bwd=False
        )
        self._ctx = model.hooks(fwd)

    def __enter__(self) -> StepRecorder:
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._ctx.__exit__(*exc)

    def end_step(self) -> None:
        self.steps.append(dict(self._current))
        self._current.clear()

    def pin(self) -> None:
        """Keep what was recorded so far (an encoder run once before decoding) outside the steps."""
        self.pinned.update(self._current)
        self._current.clear()

    def forget(self) -> None:
        """Drop the steps recorded so far (the uncached loop keeps only its final full forward)."""
        self.steps.clear()

    def cache(self) -> ActivationCache:
        steps = dict(concat_steps(self.steps, self.model)._store) if self.steps else {}
        return ActivationCache({**self.pinned, **steps}, self.model)


def concat_steps(steps: Sequence[Mapping[str, torch.Tensor]], model: Any = None) -> ActivationCache:
    """One cache with every step's activations concatenated along their position axis.

    Args:
        steps: per-step activations (dicts or caches), the prompt's forward first.
        model: the model that ran them; a native model's attention says which value its masked scores
            hold (see :func:`~hookscope.components.masks.mask_fill_dtype`). Without one (or for a wrapped
            model) masked scores hold the scores' dtype's most negative value, as HF's eager mask.

    A name present only in the first step (computed once up front: an encoder, cross-attention keys)
    keeps that step's tensor, as one forward computes it once too. A name that cannot be joined into what
    one forward holds keeps one call per step where it fired (read with ``cache.calls(name)``;
    ``cache[name]`` raises): names without a position axis, names missing from some later step, and
    relative position biases (a full forward holds the bias of future keys too; masking is separate).
    """
    if not steps:
        raise ValueError("concat_steps needs at least one step")
    if len(steps) == 1:
        return ActivationCache(dict(steps[0]), model)
    merged: dict[str, torch.Tensor] = {}
    for name in steps[0]:
        present = [name in step for step in steps]
        if not any(present[1:]):
            merged[name] = steps[0][name]
            continue
        tensors = [step[name] for step in steps if name in step]
        if any(isinstance(t, CallList) for t in tensors):
            raise ValueError(
                f"'{name}' fired several times within one decoding step, so the steps cannot be joined "
                "along positions; record it with model.record(...) and read cache.calls(name)"
            )
        axis = position_axis(name, tensors[0].ndim)
        if axis is None or not all(present) or name.endswith("hook_position_bias"):
            merged[name] = CallList(tensors)
            continue
        if name.endswith(("hook_pattern", "hook_attn_scores")):
            tensors = _align_keys(name, tensors, _score_fill(name, tensors[0].dtype, model))
        try:
            merged[name] = torch.cat(tensors, dim=axis)
        except RuntimeError as err:
            raise ValueError(
                f"cannot concatenate '{name}' over steps along axis {axis}: shapes "
                f"{[tuple(t.shape) for t in tensors]}; use the per-step caches instead"
            ) from err
    return ActivationCache(merged, model)


def _score_fill(name: str, dtype: torch.dtype, model: Any) -> float:
    """What a masked score holds in a full forward: the most negative value of the mask's fill dtype."""
    modules = getattr(model, "mod_dict", None) or {}
    attention = modules.get(name.rsplit(".", 1)[0])
    return torch.finfo(mask_fill_dtype(dtype, getattr(attention, "softmax_dtype", None))).min


def _align_keys(name: str, tensors: list[torch.Tensor], score_fill: float) -> list[torch.Tensor]:
    """Pad each step's ``[..., query_pos, key_pos]`` so key ``j`` sits at absolute position ``j``.

    Self-attention keys of a step end at its last query (``end``); a step holding fewer keys than
    ``end`` (a sliding-window cache drops the oldest) is padded on the left. Cross-attention keys are the
    encoder's positions, the same at every step.
    """
    fill = 0.0 if name.endswith("hook_pattern") else score_fill
    ends = torch.tensor([t.shape[-2] for t in tensors]).cumsum(0).tolist()
    cross = "cross_attn." in name
    width = max(t.shape[-1] for t in tensors) if cross else max(ends[-1], *(t.shape[-1] for t in tensors))
    aligned = []
    for t, end in zip(tensors, ends, strict=True):
        left = 0 if cross else max(end - t.shape[-1], 0)
        aligned.append(torch.nn.functional.pad(t, (left, width - left - t.shape[-1]), value=fill))
    return aligned
