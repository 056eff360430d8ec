"""``transformer_lens.components``: the classes of a compat model's modules, under TransformerLens's names.

A compat model is built from hookscope's components, so these are hookscope's classes, constructed with
hookscope's arguments rather than from a ``HookedTransformerConfig``. On a compat model the modules TL code
calls on their own also take TL's call signatures (the model's own forward keeps hookscope's):
``model.pos_embed(tokens, past_kv_pos_offset, attention_mask)``, ``model.blocks[i](resid, shortformer_pos_embed,
past_kv_cache_entry, attention_mask)`` (BERT: ``(resid, additive_attention_mask)``) and
``model.blocks[i].attn(query_input, key_input, value_input, ...)``: causal in a ``HookedTransformer``,
bidirectional in a ``HookedEncoder``, rotary positions from the model's own tables, padding from the mask.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from hookscope.components.attention import Attention
from hookscope.components.embed import Embed, Unembed
from hookscope.components.embed import PosEmbed as _NativePosEmbed
from hookscope.components.masks import AttentionMask, positions_from_mask
from hookscope.components.mlp import MLP, GatedMLP
from hookscope.components.norm import LayerNorm, LayerNormPre, RMSNorm, RMSNormPre
from hookscope.models.bert import EncoderBlock
from hookscope.models.decoder import AttnOnlyBlock, ParallelBlock, SequentialBlock

__all__ = ["MLP", "Attention", "BertBlock", "Embed", "GatedMLP", "LayerNorm", "LayerNormPre", "PosEmbed", "RMSNorm",
           "RMSNormPre", "TransformerBlock", "Unembed"]


class PosEmbed(_NativePosEmbed):
    """Learned positions with TransformerLens's call: ``pos_embed(tokens, past_kv_pos_offset=0,
    attention_mask=None)`` -> ``[batch, pos, d_model]``.

    Without a mask, the positions are ``past_kv_pos_offset ... past_kv_pos_offset + pos - 1`` for every row.
    With a mask ``[batch, past_kv_pos_offset + pos]`` (a KV cache's mask covers the cached positions too),
    each row counts from its own first attended token, and padded positions get zeros, as TL's left padding.
    hookscope's own call, ``pos_embed(positions, validate)`` (a bool second argument, or ``validate=``), still
    looks position ids up.
    """

    computes_as = _NativePosEmbed  # in hookscope's own call (read by the lean decode step)

    def forward(  # type: ignore[override]
        self, tokens: torch.Tensor, past_kv_pos_offset: int = 0, attention_mask: torch.Tensor | None = None,
        *, validate: bool | None = None,
    ) -> torch.Tensor:
        if validate is not None or isinstance(past_kv_pos_offset, bool):  # hookscope's (positions, validate)
            return super().forward(tokens, past_kv_pos_offset if validate is None else validate)
        if tokens.ndim == 1:
            tokens = tokens[None]
        batch, n_pos = tokens.shape
        if attention_mask is None:
            positions = torch.arange(past_kv_pos_offset, past_kv_pos_offset + n_pos, device=tokens.device)
            return super().forward(positions[None].expand(batch, -1), True).clone()
        if attention_mask.shape != (batch, past_kv_pos_offset + n_pos):
            raise ValueError(f"attention_mask must be [batch, past_kv_pos_offset + pos] = "
                             f"{[batch, past_kv_pos_offset + n_pos]}, got {list(attention_mask.shape)}")
        mask = attention_mask.to(tokens.device)
        positions = (mask.cumsum(dim=1) - 1).clamp(min=0)[:, past_kv_pos_offset:]  # [batch, pos]
        embedded = super().forward(positions, True)  # [batch, pos, d_model]
        attended = mask[:, past_kv_pos_offset:].bool()[..., None]
        return torch.where(attended, embedded, torch.zeros((), dtype=embedded.dtype, device=embedded.device))


class _TLCall:
    """What a standalone TL call needs from the model: causality, rotary tables (set by :func:`use_tl_signatures`)."""

    _tl_causal: bool = True
    _tl_owner: Any = None
    _tl_window: int | None = None

    def _tl_mask(self, x: torch.Tensor, attention_mask: torch.Tensor | None,
                 additive_attention_mask: torch.Tensor | None) -> tuple[AttentionMask, Any]:
        """The native mask and rotary tables of a TL call over ``x [batch, pos, ...]`` (no cached positions)."""
        batch, n_pos = x.shape[:2]
        key_valid = None
        if additive_attention_mask is not None:  # TL's BERT mask: [batch, 1, 1, pos], 0 where attended
            key_valid = additive_attention_mask.reshape(batch, -1) == 0
        elif attention_mask is not None:
            key_valid = attention_mask.reshape(batch, -1).bool()
        if key_valid is not None and key_valid.shape[-1] != n_pos:
            raise ValueError(f"the attention mask covers {key_valid.shape[-1]} positions, the input {n_pos}; a "
                             "standalone call has no cached positions (run the model with past_kv_cache= for them)")
        mask = AttentionMask(key_valid, torch.arange(n_pos, device=x.device), n_pos, causal=self._tl_causal)
        owner = self._tl_owner
        rotary = None
        if owner is not None and getattr(owner, "inv_freq", None) is not None:
            positions = (positions_from_mask(key_valid.long()) if key_valid is not None
                         else torch.arange(n_pos, device=x.device)[None].expand(batch, -1))
            rotary = owner.rotary_tables(positions, x.dtype)
        return mask, rotary


def _no_cache_entry(entry: Any) -> None:
    if entry is not None:
        raise NotImplementedError("past_kv_cache_entry in a standalone call: run the model with past_kv_cache=")


class TLAttention(_TLCall, Attention):
    """Attention that also takes TL's ``attn(query_input, key_input, value_input, past_kv_cache_entry,
    additive_attention_mask, attention_mask, position_bias)`` (the model calls it with a native mask)."""

    computes_as = Attention  # with a native mask (read by the lean decode step)

    def forward(self, q_in: torch.Tensor | None = None, kv_in: Any = None, mask: Any = None,  # type: ignore[override]
                *, query_input: torch.Tensor | None = None, key_input: torch.Tensor | None = None,
                value_input: torch.Tensor | None = None, past_kv_cache_entry: Any = None,
                additive_attention_mask: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                **native: Any) -> torch.Tensor:
        if isinstance(mask, AttentionMask):  # hookscope's call, from the model's blocks
            return super().forward(q_in, kv_in, mask, **native)
        query = q_in if q_in is not None else query_input
        key = kv_in if kv_in is not None else key_input
        value = mask if mask is not None else value_input
        if query is None or key is None or value is None:
            raise TypeError("attn(query_input, key_input, value_input) needs all three inputs")
        _no_cache_entry(past_kv_cache_entry)
        tl_mask, rotary = self._tl_mask(query, attention_mask, additive_attention_mask)
        return super().forward(query, key, tl_mask, v_in=None if value is key else value,
                               rotary=rotary if hasattr(self, "hook_rot_q") else None, window=self._tl_window,
                               position_bias=native.get("position_bias"))


class _TLDecoderBlockCall(_TLCall):
    def forward(self, x: torch.Tensor, *args: Any, shortformer_pos_embed: torch.Tensor | None = None,
                past_kv_cache_entry: Any = None, attention_mask: torch.Tensor | None = None, **kwargs: Any) -> Any:
        """TL's ``block(resid_pre, shortformer_pos_embed, past_kv_cache_entry, attention_mask)``, or the native
        ``block(x, mask, rotary, ...)`` the model makes."""
        if args and isinstance(args[0], AttentionMask):
            return super().forward(x, *args, **kwargs)  # type: ignore[misc]
        if args:
            shortformer_pos_embed = args[0]
        _no_cache_entry(past_kv_cache_entry if len(args) < 2 else args[1])
        mask, rotary = self._tl_mask(x, attention_mask if len(args) < 3 else args[2], None)
        return super().forward(x, mask, rotary, None, qk_offset=shortformer_pos_embed)  # type: ignore[misc]


class TransformerBlock(_TLDecoderBlockCall, SequentialBlock):
    """A decoder block with TL's call signature as well (see :class:`_TLDecoderBlockCall`)."""

    computes_as = SequentialBlock  # in the model's own call (read by the lean decode step)


class ParallelTransformerBlock(_TLDecoderBlockCall, ParallelBlock):
    """A parallel (NeoX-style) block with TL's call signature as well."""

    computes_as = ParallelBlock


class AttnOnlyTransformerBlock(_TLDecoderBlockCall, AttnOnlyBlock):
    """An attention-only block with TL's call signature as well."""

    computes_as = AttnOnlyBlock


class BertBlock(_TLCall, EncoderBlock):
    """BERT's block with TL's ``block(resid_pre, additive_attention_mask=None)`` as well."""

    _tl_causal = False

    def forward(self, x: torch.Tensor, mask: Any = None, *,  # type: ignore[override]
                additive_attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        if isinstance(mask, AttentionMask):
            return super().forward(x, mask)
        if mask is not None:
            additive_attention_mask = mask
        return super().forward(x, self._tl_mask(x, None, additive_attention_mask)[0])


_TL_CLASSES: dict[type, type] = {SequentialBlock: TransformerBlock, ParallelBlock: ParallelTransformerBlock,
                                 AttnOnlyBlock: AttnOnlyTransformerBlock, EncoderBlock: BertBlock,
                                 Attention: TLAttention, _NativePosEmbed: PosEmbed}


def use_tl_signatures(model: nn.Module, causal: bool = True) -> None:
    """Give a compat model's position embedding, blocks and attention TL's call signatures as well (the modules
    keep their parameters and hook points; the model's own calls keep hookscope's signatures)."""
    for block in getattr(model, "blocks", ()):
        for module in (block, getattr(block, "attn", None)):
            if module is not None and type(module) in _TL_CLASSES:
                module.__class__ = _TL_CLASSES[type(module)]
                # the model itself (for its rotary tables), not registered as a submodule; a deep copy of the
                # model then points its copied blocks at the copy
                object.__setattr__(module, "_tl_owner", model)
                module._tl_causal = causal
                module._tl_window = getattr(block, "window", None)
    pos_embed = getattr(model, "pos_embed", None)
    if type(pos_embed) is _NativePosEmbed:
        pos_embed.__class__ = PosEmbed
