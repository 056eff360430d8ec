"""What a model's attention needs from a key/value cache, as a protocol.

Models and the shared attention take any object with this shape; :mod:`hookscope.generation.kv_cache`
provides the static cache that satisfies it. Defining the protocol here keeps the models free of the
generation layer (which sits above them).
"""

from __future__ import annotations

from typing import Protocol

import torch


class LayerKVCache(Protocol):
    """One layer's keys and values so far."""

    def update(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store ``k, v [batch, new_pos, kv_head, d_head]``; return every position so far (same layout)."""
        ...


class ModelKVCache(Protocol):
    """Every layer's cache; the model hands block ``i`` ``layer(i)`` and calls ``advance`` once a forward."""

    @property
    def length(self) -> int:
        """Positions stored so far."""
        ...

    def layer(self, i: int) -> LayerKVCache:
        """Block ``i``'s view of the cache."""
        ...

    def advance(self, n_new: int) -> None:
        """Record that ``n_new`` positions were written by every layer."""
        ...
