"""Activations of every decoding step, joined so they read like one forward over the final sequence.

With a KV cache each step computes only its new positions, so concatenating the steps along each
activation's position axis gives exactly the positions a single forward over the whole sequence would
compute. Attention patterns and scores also grow along key positions: earlier steps are padded on the
right with what a full causal forward holds there (pattern 0; scores the dtype's most negative value,
the mask HF and hookscope add).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from hookscope.cache import ActivationCache, CallList, make_caching_hooks
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
        return ActivationCache({**self.pinned, **concat_steps(self.steps, self._score_fill)}, self.model)

    def _score_fill(self, name: str, dtype: torch.dtype) -> float:
        """What the attention module behind ``name`` puts in its scores at masked keys."""
        module = getattr(self.model, "mod_dict", {}).get(name.rsplit(".", 1)[0])
        masked_score = getattr(module, "masked_score", None)
        return masked_score(dtype) if callable(masked_score) else _mask_fill(dtype)


def concat_steps(
    steps: Sequence[dict[str, torch.Tensor]], score_fill: Callable[[str, torch.dtype], float] | None = None
) -> dict[str, torch.Tensor]:
    """Each name's per-step tensors concatenated along its position axis (patterns padded on key_pos).

    A name recorded only at the first step (an encoder-decoder's cross-attention keys and values, computed
    once from the encoder output) is kept as it is: it already covers all its positions. Relative position
    biases (T5) cannot be joined into what a full forward holds, so they keep one call per step.
    """
    if not steps:
        return {}
    merged: dict[str, torch.Tensor] = {}
    for name in steps[0]:
        tensors = [step[name] for step in steps if name in step]
        if any(isinstance(t, CallList) for t in tensors):
            raise ValueError(
                f"'{name}' fired several times within one decoding step, so the steps cannot be joined "
                "along positions; record it with model.record(...) and read cache.calls(name)"
            )
        axis = position_axis(name, tensors[0].ndim)
        if axis is None or len(tensors) == 1:
            merged[name] = tensors[0]
            continue
        if name.endswith("hook_position_bias"):
            # a full forward holds the bias of future keys too (masking is separate): no padding can
            # reproduce it, so each step's bias is kept as one call (cache.calls(name))
            merged[name] = CallList(tensors)
            continue
        if name.endswith(("hook_pattern", "hook_attn_scores")):
            width = max(t.shape[-1] for t in tensors)
            fill = 0.0 if name.endswith("hook_pattern") else (score_fill or _name_free_fill)(name, tensors[0].dtype)
            tensors = [torch.nn.functional.pad(t, (0, width - t.shape[-1]), value=fill) for t in tensors]
        merged[name] = torch.cat(tensors, dim=axis)
    return merged


def _name_free_fill(name: str, dtype: torch.dtype) -> float:
    return _mask_fill(dtype)


def _mask_fill(dtype: torch.dtype) -> float:
    """What masked scores hold: the min of the narrower of the scores' dtype and the softmax's (float32)."""
    return torch.finfo(torch.float32 if torch.finfo(dtype).bits > 32 else dtype).min
