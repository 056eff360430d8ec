"""``transformer_lens.past_key_value_caching``: TL's growing KV cache over hookscope's native one.

TL code passes one ``HookedTransformerKeyValueCache`` to successive forwards (``past_kv_cache=``); the
native :class:`~hookscope.generation.kv_cache.KVCache` is preallocated, so this object holds one and
regrows it (copying what is stored) when a forward would overflow it. ``freeze()`` makes forwards read
the cache without appending to it, as TL. ``cache.entries`` / ``cache[layer]`` give TL's per-layer view
(``past_keys`` / ``past_values`` ``[batch, pos_so_far, n_kv_heads, d_head]``) of what is stored.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from hookscope.generation.kv_cache import KVCache

__all__ = ["HookedTransformerKeyValueCache", "HookedTransformerKeyValueCacheEntry"]


@dataclass
class HookedTransformerKeyValueCacheEntry:
    """One layer's stored keys and values (views of the cache: read them; the model's forward writes them).

    Unpacks as ``keys, values = entry``.
    """

    past_keys: torch.Tensor  # [batch, pos_so_far, n_kv_heads, d_head]
    past_values: torch.Tensor  # [batch, pos_so_far, n_kv_heads, d_head]
    frozen: bool = False

    def __iter__(self) -> Iterator[torch.Tensor]:
        return iter((self.past_keys, self.past_values))


class HookedTransformerKeyValueCache:
    """Keys and values of every layer for the positions seen so far, plus their attention mask."""

    def __init__(self, n_layers: int, n_kv_heads: int, d_head: int, batch_size: int, device: Any, dtype: Any) -> None:
        self.n_layers, self.n_kv_heads, self.d_head = n_layers, n_kv_heads, d_head
        self.batch_size, self.device, self.dtype = batch_size, device, dtype
        self.native: KVCache | None = None
        self.previous_attention_mask = torch.empty(batch_size, 0, dtype=torch.long, device=device)
        self.frozen = False
        self._length_before = 0

    @classmethod
    def init_cache(cls, cfg: Any, device: Any = None, batch_size: int = 1) -> HookedTransformerKeyValueCache:
        """An empty cache for a model with config ``cfg`` (TL's constructor)."""
        kv_heads = getattr(cfg, "n_key_value_heads", None) or cfg.n_heads
        return cls(cfg.n_layers, kv_heads, cfg.d_head, batch_size, device or cfg.device, cfg.dtype)

    @property
    def length(self) -> int:
        return 0 if self.native is None else self.native.length

    def freeze(self) -> None:
        self.frozen = True

    def unfreeze(self) -> None:
        self.frozen = False

    def append_attention_mask(self, attention_mask: torch.Tensor) -> torch.Tensor:
        """The mask over past + new positions; remembered for the next forward unless frozen."""
        attention_mask = attention_mask.to(self.previous_attention_mask.device)
        full = torch.cat([self.previous_attention_mask, attention_mask], -1)
        if not self.frozen:
            self.previous_attention_mask = full
        return full

    def mask_for_forward(self, attention_mask: torch.Tensor | None, batch: int, n_new: int) -> torch.Tensor:
        """The mask over past + new positions for a forward of ``n_new`` positions. ``attention_mask`` is the
        new positions' mask (appended; all ones when None) or, as ``input_to_embed`` returns it, already the
        past + new one (then it replaces the remembered mask, unless frozen)."""
        if attention_mask is None:
            attention_mask = torch.ones(batch, n_new, dtype=torch.long, device=self.previous_attention_mask.device)
        if self.length and attention_mask.shape[-1] == self.length + n_new:
            if not self.frozen:
                self.previous_attention_mask = attention_mask.to(self.previous_attention_mask.device)
            return attention_mask
        return self.append_attention_mask(attention_mask)

    def check_partial_forward(self, n_layers: int, start_at_layer: int | None, stop_at_layer: int | None) -> None:
        """A forward through some blocks only reads the cache: TL would append keys to those layers alone,
        which one shared cache length cannot hold, so a growing cache must see every block."""
        if len(range(n_layers)[start_at_layer:stop_at_layer]) != n_layers and not self.frozen:
            raise ValueError("start_at_layer / stop_at_layer with a past_kv_cache that grows: the cache grows only "
                             "by forwards through every block; call past_kv_cache.freeze() to run part of the "
                             "model over the cached positions")

    def native_for(self, model: Any, batch: int, n_new: int) -> KVCache:
        """The native cache to run ``n_new`` more positions with (regrown when it would overflow)."""
        if batch != self.batch_size:
            raise ValueError(f"this KV cache holds batch {self.batch_size}, the input has batch {batch}")
        need = self.length + n_new
        if self.native is None or need > self.native.max_len:
            grown = KVCache(self.n_layers, batch, max(need, 2 * (self.native.max_len if self.native else 16)),
                            self.n_kv_heads, self.d_head, dtype=self.dtype, device=self.device)
            if self.native is not None:
                n = self.native.length
                grown.keys[..., :n, :] = self.native.keys[..., :n, :]
                grown.values[..., :n, :] = self.native.values[..., :n, :]
                grown.length = n
            self.native = grown
        self._length_before = self.native.length
        return self.native

    def after_forward(self, native: KVCache | None) -> None:
        """Frozen: forget what the forward just appended."""
        if self.frozen and native is not None:
            native.length = self._length_before

    @property
    def entries(self) -> list[HookedTransformerKeyValueCacheEntry]:
        """TL's per-layer entries; before the first forward each holds ``[batch, 0, n_kv_heads, d_head]``."""
        return [self[layer] for layer in range(self.n_layers)]

    def __getitem__(self, layer: int) -> HookedTransformerKeyValueCacheEntry:
        if not -self.n_layers <= layer < self.n_layers:
            raise IndexError(f"layer {layer} is out of range for a {self.n_layers}-layer KV cache")
        if self.native is None:
            empty = torch.empty(self.batch_size, 0, self.n_kv_heads, self.d_head, dtype=self.dtype, device=self.device)
            return HookedTransformerKeyValueCacheEntry(empty, empty.clone(), self.frozen)
        n = self.native.length
        keys = self.native.keys[layer, :, :, :n].transpose(1, 2)  # [batch, pos_so_far, n_kv_heads, d_head]
        values = self.native.values[layer, :, :, :n].transpose(1, 2)
        return HookedTransformerKeyValueCacheEntry(keys, values, self.frozen)
