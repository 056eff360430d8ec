"""Per-step activation caches while a wrapped transformers model runs its own ``generate``.

Each call of the wrapped model's top-level forward is one step (step 0 reads the prompt, each later
step one new token with the KV cache). Activations computed outside the top-level forward (an
encoder-decoder's encoder, which ``generate`` runs once up front) land in step 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from hookscope.cache import ActivationCache, CallList, make_caching_hooks
from hookscope.names import position_axis

if TYPE_CHECKING:
    from hookscope.bridge.wrapper import WrappedModel


class _StepStore(dict):
    """A dict the caching hooks write into; every write goes to the current step's dict."""

    def __init__(self) -> None:
        super().__init__()
        self.steps: list[dict[str, torch.Tensor]] = [{}]
        self.calls = 0

    def __setitem__(self, key: str, value: torch.Tensor) -> None:
        self.steps[-1][key] = value

    def get(self, key: str, default: Any = None) -> Any:  # a repeat within one step becomes a CallList
        return self.steps[-1].get(key, default)

    def __contains__(self, key: object) -> bool:
        return key in self.steps[-1]

    def next_step(self, *_: Any) -> None:
        if self.calls:
            self.steps.append({})
        self.calls += 1


def generate_with_caches(
    model: WrappedModel, names: Sequence[str], args: tuple, kwargs: dict
) -> tuple[Any, list[ActivationCache]]:
    """Run ``model.model.generate(*args, **kwargs)`` caching ``names`` at every forward step."""
    store = _StepStore()
    fwd, _ = make_caching_hooks(
        names, store, device=None, remove_batch_dim=False, pos_slice=None, incl_bwd=False
    )
    handle = model.model.register_forward_pre_hook(store.next_step)
    try:
        with model.hooks(fwd):
            out = model.model.generate(*args, **kwargs)
    finally:
        handle.remove()
    return out, [ActivationCache(step, model) for step in store.steps]


def concat_steps(steps: Sequence[ActivationCache], model: Any = None) -> ActivationCache:
    """One cache with every step's activations concatenated along their position axis.

    Attention patterns and scores grow along key positions from step to step; earlier steps are padded
    on the right of ``key_pos`` with 0 (pattern: those keys did not exist yet) or ``-inf`` (scores).
    A sliding-window cache (Mistral, Gemma 2) gives a step only its most recent keys: those are placed
    at their absolute positions, padded on the left too.
    A name recorded in step 0 only (an encoder-decoder's encoder, run once before decoding) is kept as
    recorded. A name without a position axis, or recorded in some later steps but not all, keeps one call
    per step where it fired (``cache.calls(name)``; ``cache[name]`` then raises): nothing is dropped.
    """
    if not steps:
        raise ValueError("concat_steps needs at least one step")
    merged: dict[str, torch.Tensor] = {}
    names = list(dict.fromkeys(name for step in steps for name in step))
    for name in names:
        present = [step for step in steps if name in step]
        if len(present) == 1 and present[0] is steps[0]:
            merged[name] = steps[0]._store[name]  # computed once up front: already complete
            continue
        tensors = [_one_call(step, name) for step in present]
        axis = position_axis(name, tensors[0].ndim)
        if axis is None or len(present) != len(steps):
            merged[name] = CallList(tensors)
            continue
        if name.endswith(("hook_pattern", "hook_attn_scores")):
            tensors = _align_keys(name, tensors)
        try:
            merged[name] = torch.cat(tensors, dim=axis)
        except RuntimeError as err:
            raise ValueError(
                f"cannot concatenate '{name}' over steps along axis {axis}: shapes "
                f"{[tuple(t.shape) for t in tensors]}; use the per-step caches instead"
            ) from err
    return ActivationCache(merged, model)


def _one_call(step: ActivationCache, name: str) -> torch.Tensor:
    if step.n_calls(name) != 1:
        raise ValueError(
            f"'{name}' fired {step.n_calls(name)} times within one step, so steps cannot be joined along "
            "positions; use the per-step caches (concat=False) and cache.calls(name)"
        )
    return step[name]


def _align_keys(name: str, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Pad each step's ``[..., query_pos, key_pos]`` so key ``j`` sits at absolute position ``j``.

    Self-attention keys of a step end at its last query (``end``); a step holding fewer keys than
    ``end`` (a sliding-window cache drops the oldest) is padded on the left. Cross-attention keys are the
    encoder's positions, the same at every step.
    """
    fill = 0.0 if name.endswith("hook_pattern") else float("-inf")
    ends = torch.tensor([t.shape[-2] for t in tensors]).cumsum(0).tolist()
    cross = "cross_attn." in name
    width = max(t.shape[-1] for t in tensors) if cross else max(ends[-1], *(t.shape[-1] for t in tensors))
    aligned = []
    for t, end in zip(tensors, ends, strict=True):
        left = 0 if cross else max(end - t.shape[-1], 0)
        aligned.append(torch.nn.functional.pad(t, (left, width - left - t.shape[-1]), value=fill))
    return aligned
