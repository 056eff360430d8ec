"""Per-step activation caches while a wrapped transformers model runs its own ``generate``.

Each call of the wrapped model's top-level forward is one step (step 0 reads the prompt, each later
step one new token with the KV cache). Activations computed outside the top-level forward (an
encoder-decoder's encoder, which ``generate`` runs once up front) land in step 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from hookscope.cache import ActivationCache, make_caching_hooks
from hookscope.generation.step_cache import concat_steps

__all__ = ["concat_steps", "generate_with_caches"]

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
