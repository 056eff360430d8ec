"""Static key/value caches for decoding: one preallocated buffer, written in place, never concatenated.

A model's forward takes ``kv_cache=`` (a :class:`KVCache`) and hands block ``i`` the object
``kv_cache.layer(i)``; the attention calls ``update(k, v)`` with the new positions' keys and values
(after rotary) and attends over what it gets back. After every block has run, the model calls
``kv_cache.advance(n_new)``. Keys and values are stored as ``[batch, kv_head, pos, d_head]`` so that the
tensors handed back (``[batch, pos, kv_head, d_head]`` views) become contiguous per head again after the
transpose scaled-dot-product attention wants: no copy per step.

The cache holds every position (``max_len`` of them). Sliding-window layers keep the full history too:
their :class:`~hookscope.components.masks.AttentionMask` hides keys outside the window, which gives the
same result as HF's rolling buffers. Padding is the mask's business, not the cache's.

Encoder-decoder models (T5, Whisper) use :class:`EncoderDecoderKVCache`: a :class:`KVCache` for the
decoder's self-attention plus one :class:`CrossKV` per layer, filled once from the encoder output.
"""

from __future__ import annotations

import torch


class LayerKVCache:
    """One layer's view of a :class:`KVCache`; ``update`` writes the new positions and returns all so far."""

    def __init__(self, owner: KVCache, layer: int) -> None:
        self.owner = owner
        self.k = owner.keys[layer]  # [batch, kv_head, max_len, d_head]
        self.v = owner.values[layer]

    def update(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store ``k, v [batch, new_pos, kv_head, d_head]`` at the current length.

        Returns:
            keys and values of every position so far, ``[batch, past + new_pos, kv_head, d_head]`` (views).
        """
        start = self.owner.length
        end = start + k.shape[1]
        if end > self.owner.max_len:
            raise ValueError(
                f"KV cache overflow: {end} positions do not fit in a cache of max_len {self.owner.max_len}; "
                "allocate a longer cache"
            )
        self.k[:, :, start:end] = k.transpose(1, 2)
        self.v[:, :, start:end] = v.transpose(1, 2)
        return self.k[:, :, :end].transpose(1, 2), self.v[:, :, :end].transpose(1, 2)


class KVCache:
    """Preallocated keys and values of every layer for ``batch`` rows and up to ``max_len`` positions.

    Args:
        n_layers, batch, max_len, n_kv_heads, d_head: the buffer shape (GQA/MQA: the un-repeated KV heads).
        dtype, device: those of the model's activations.

    Attributes:
        keys, values: ``[layer, batch, kv_head, max_len, d_head]``.
        length: positions stored so far (the same for every layer; the model advances it once a forward).
    """

    def __init__(
        self, n_layers: int, batch: int, max_len: int, n_kv_heads: int, d_head: int, *,
        dtype: torch.dtype = torch.float32, device: torch.device | str | None = None,
    ) -> None:
        shape = (n_layers, batch, n_kv_heads, max_len, d_head)
        self.keys = torch.zeros(shape, dtype=dtype, device=device)
        self.values = torch.zeros(shape, dtype=dtype, device=device)
        self.max_len = max_len
        self.length = 0
        self._layers = tuple(LayerKVCache(self, i) for i in range(n_layers))

    @classmethod
    def for_model(cls, model: torch.nn.Module, batch: int, max_len: int) -> KVCache:
        """A cache shaped for a native decoder (reads ``model.cfg`` and the parameters' dtype/device)."""
        cfg = model.cfg  # type: ignore[attr-defined]
        p = next(model.parameters())
        return cls(cfg.n_layers, batch, max_len, cfg.n_kv_heads, cfg.d_head, dtype=p.dtype, device=p.device)

    @property
    def batch(self) -> int:
        return self.keys.shape[1]

    def layer(self, i: int) -> LayerKVCache:
        """The object block ``i`` passes to its attention as ``kv_cache``."""
        return self._layers[i]

    def advance(self, n: int) -> None:
        """Mark ``n`` more positions as stored (called by the model after all its blocks ran)."""
        self.length += n

    def reorder(self, rows: torch.Tensor) -> None:
        """Keep rows ``rows [batch]`` (beam search: each new beam continues from its parent beam)."""
        n = self.length
        self.keys[:, :, :, :n] = self.keys[:, rows, :, :n]
        self.values[:, :, :, :n] = self.values[:, rows, :, :n]

    def reset(self) -> None:
        """Forget everything (the buffers are reused)."""
        self.length = 0


class CrossKV:
    """Cross-attention keys and values of one decoder layer, computed once from the encoder output.

    The cross-attention checks :attr:`filled` and projects the encoder output only on the first step;
    later steps call :meth:`get`. ``update(k, v)`` (the self-attention protocol) stores on first use and
    returns the stored pair afterwards, so a module written for ``update`` works unchanged.
    """

    def __init__(self) -> None:
        self.k: torch.Tensor | None = None  # [batch, enc_pos, kv_head, d_head]
        self.v: torch.Tensor | None = None

    @property
    def filled(self) -> bool:
        return self.k is not None

    def update(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.k is None or self.v is None:
            self.k, self.v = k, v
        return self.k, self.v

    def get(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.k is None or self.v is None:
            raise ValueError("cross-attention keys/values are not computed yet: run the first step")
        return self.k, self.v

    def reorder(self, rows: torch.Tensor) -> None:
        if self.k is not None and self.v is not None:
            self.k, self.v = self.k[rows], self.v[rows]


class EncoderDecoderKVCache:
    """Self-attention :class:`KVCache` plus per-layer :class:`CrossKV` for an encoder-decoder's decoder.

    Block ``i`` gets ``layer(i) -> (self_cache, cross_cache)``; the model calls :meth:`advance` once per
    forward, as with :class:`KVCache`.
    """

    def __init__(self, self_attn: KVCache) -> None:
        self.self_attn = self_attn
        self.cross = tuple(CrossKV() for _ in range(self_attn.keys.shape[0]))

    @property
    def length(self) -> int:
        return self.self_attn.length

    def layer(self, i: int) -> tuple[LayerKVCache, CrossKV]:
        return self.self_attn.layer(i), self.cross[i]

    def advance(self, n: int) -> None:
        self.self_attn.advance(n)

    def reorder(self, rows: torch.Tensor) -> None:
        self.self_attn.reorder(rows)
        for c in self.cross:
            c.reorder(rows)
