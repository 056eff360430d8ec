"""TransformerLens's call signatures for the modules of a compat ``HookedEncoderDecoder`` (T5).

TL code calls T5's modules on their own: ``model.encoder[i](resid_pre, additive_attention_mask,
encoder_additive_attention_mask, position_bias, encoder_hidden_states, past_kv_cache_entry)``,
``block.attn(query_input, key_input, value_input, ..., position_bias=...)``, ``block.cross_attn(...)``,
``attn.compute_relative_attention_bias(query_len, key_len)``, ``attn.rel_pos_bias.weight`` and ``ln.w``.
The native model keeps one relative-position table per stack (HF computes the bias once per stack and every
layer adds it); TL's view of it: the first self-attention of each stack "has" the table
(``has_relative_attention_bias``), every self-attention can compute the stack's bias from it.

As in TransformerLens, a standalone self-attention of the decoder is causal, the encoder's and the
cross-attention are not; a first-layer self-attention needs ``position_bias=`` (TL refuses it without), later
layers add none unless given. Additive masks are TL's ``[batch, 1, 1, key_pos]`` (0 where attended).
The model's own forward keeps hookscope's signatures and numbers.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from hookscope.components.attention import Attention
from hookscope.components.masks import AttentionMask
from hookscope.components.relative_bias import RelativePositionBias
from hookscope.models.t5 import DecoderBlock, EncoderBlock, T5Norm


def _key_valid(additive_mask: torch.Tensor | None, batch: int, n_keys: int) -> torch.Tensor | None:
    """``[batch, key_pos]`` bool of TL's additive ``[batch, 1, 1, key_pos]`` mask (0 where attended)."""
    if additive_mask is None:
        return None
    if additive_mask.numel() != batch * n_keys:
        raise ValueError(f"an additive attention mask must be [batch, 1, 1, key_pos] = [{batch}, 1, 1, {n_keys}], "
                         f"got {list(additive_mask.shape)}")
    return additive_mask.reshape(batch, n_keys) == 0


class T5Attention(Attention):
    """T5 attention with TL's standalone call as well (the model's blocks call it with a native mask)."""

    _tl_rel_pos: RelativePositionBias | None = None  # the stack's table (self-attention only)
    _tl_first: bool = False  # the first layer of its stack: TL's has_relative_attention_bias
    _tl_causal: bool = False
    relative_attention_num_buckets: int | None = None
    relative_attention_max_distance: int | None = None

    @property
    def has_relative_attention_bias(self) -> bool:
        """TL's flag: True on the first self-attention of each stack (where HF and TL keep the table)."""
        return self._tl_first

    @property
    def rel_pos_bias(self) -> RelativePositionBias:
        """The stack's relative-position table (``.weight [num_buckets, head_index]``), on the first layer."""
        if not self._tl_first or self._tl_rel_pos is None:
            raise AttributeError("rel_pos_bias: only the first self-attention of each stack holds the relative "
                                 "position table (has_relative_attention_bias)")
        return self._tl_rel_pos

    def compute_relative_attention_bias(self, query_length: int, key_length: int,
                                        device: Any = None) -> torch.Tensor:
        """The stack's relative position bias ``[1, head_index, query_pos, key_pos]`` (queries at 0..q-1)."""
        if self._tl_rel_pos is None:
            raise ValueError("cross-attention has no relative position bias")
        bias = self._tl_rel_pos(query_length, key_length)
        return bias if device is None else bias.to(device)

    def forward(self, query_input: torch.Tensor, key_input: Any = None,  # type: ignore[override]
                value_input: Any = None, past_kv_cache_entry: Any = None,
                additive_attention_mask: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                position_bias: torch.Tensor | None = None, **native: Any) -> torch.Tensor:
        if isinstance(value_input, AttentionMask):  # hookscope's (q_in, kv_in, mask, ...) from the blocks
            return super().forward(query_input, key_input, value_input, position_bias=position_bias, **native)
        if key_input is None or value_input is None:
            raise TypeError("attn(query_input, key_input, value_input) needs all three inputs")
        if past_kv_cache_entry is not None:
            raise NotImplementedError("past_kv_cache_entry in a standalone call: use the model's generate")
        if position_bias is None and self._tl_first:
            raise ValueError("the first self-attention of a T5 stack needs position_bias= (see "
                             "compute_relative_attention_bias), as in TransformerLens")
        batch, n_queries = query_input.shape[:2]
        n_keys = key_input.shape[1]
        valid = _key_valid(additive_attention_mask, batch, n_keys)
        if attention_mask is not None:
            ones = attention_mask.reshape(batch, n_keys).bool()
            valid = ones if valid is None else valid & ones
        # queries sit at the last n_queries key positions (equal lengths for self-attention)
        query_index = torch.arange(n_keys - n_queries, n_keys, device=query_input.device)
        mask = AttentionMask(valid, query_index, n_keys, causal=self._tl_causal)
        v_in = None if value_input is key_input else value_input
        return super().forward(query_input, key_input, mask, v_in=v_in, position_bias=position_bias)


def _self_mask(x: torch.Tensor, additive: torch.Tensor | None, causal: bool) -> AttentionMask:
    batch, n_pos = x.shape[:2]
    return AttentionMask(_key_valid(additive, batch, n_pos), torch.arange(n_pos, device=x.device), n_pos,
                         causal=causal)


class T5EncoderBlock(EncoderBlock):
    """T5's encoder block with TL's ``block(resid_pre, additive_attention_mask=None, position_bias=None)``."""

    def forward(self, resid_pre: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:  # type: ignore[override]
        if args and isinstance(args[0], AttentionMask):
            return super().forward(resid_pre, *args, **kwargs)
        return self._tl_forward(resid_pre, *args, **kwargs)

    def _tl_forward(self, resid_pre: torch.Tensor, additive_attention_mask: torch.Tensor | None = None,
                    encoder_additive_attention_mask: Any = None, position_bias: torch.Tensor | None = None,
                    encoder_hidden_states: Any = None, past_kv_cache_entry: Any = None) -> torch.Tensor:
        if encoder_hidden_states is not None or encoder_additive_attention_mask is not None:
            raise ValueError("an encoder block has no cross-attention: encoder_hidden_states is for the decoder")
        if past_kv_cache_entry is not None:
            raise NotImplementedError("past_kv_cache_entry in a standalone call: use the model's generate")
        return super().forward(resid_pre, _self_mask(resid_pre, additive_attention_mask, False), position_bias)


class T5DecoderBlock(DecoderBlock):
    """T5's decoder block with TL's ``block(resid_pre, additive_attention_mask, encoder_additive_attention_mask,
    position_bias, encoder_hidden_states, past_kv_cache_entry)`` as well (causal self-attention)."""

    def forward(self, resid_pre: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:  # type: ignore[override]
        if args and isinstance(args[0], AttentionMask):
            return super().forward(resid_pre, *args, **kwargs)
        return self._tl_forward(resid_pre, *args, **kwargs)

    def _tl_forward(self, resid_pre: torch.Tensor, additive_attention_mask: torch.Tensor | None = None,
                    encoder_additive_attention_mask: torch.Tensor | None = None,
                    position_bias: torch.Tensor | None = None, encoder_hidden_states: torch.Tensor | None = None,
                    past_kv_cache_entry: Any = None) -> torch.Tensor:
        if encoder_hidden_states is None:
            raise ValueError("a decoder block needs encoder_hidden_states [batch, encoder_pos, d_model]")
        if past_kv_cache_entry is not None:
            raise NotImplementedError("past_kv_cache_entry in a standalone call: use the model's generate")
        batch, n_pos = resid_pre.shape[:2]
        n_enc = encoder_hidden_states.shape[1]
        cross = AttentionMask(_key_valid(encoder_additive_attention_mask, batch, n_enc),
                              torch.arange(n_pos, device=resid_pre.device), n_enc, causal=False)
        mask = _self_mask(resid_pre, additive_attention_mask, True)
        return super().forward(resid_pre, mask, position_bias, encoder_hidden_states, cross)


class TLT5Norm(T5Norm):
    """T5's norm with TL's weight name ``w`` as well."""

    @property
    def w(self) -> nn.Parameter:
        """The scale ``[d_model]`` (TL's name for ``weight``)."""
        return self.weight


def use_t5_tl_signatures(model: Any) -> None:
    """Give a compat T5's blocks, attentions and norms TL's call signatures and names (parameters, hook points
    and the model's own calls unchanged)."""
    cfg = model.cfg
    stacks = [(model.encoder, model.encoder_rel_pos, T5EncoderBlock, False)]
    if getattr(model, "decoder", None) is not None:
        stacks.append((model.decoder, model.decoder_rel_pos, T5DecoderBlock, True))
    for blocks, table, block_cls, is_decoder in stacks:
        for i, block in enumerate(blocks):
            block.__class__ = block_cls
            for name in ("ln1", "ln2", "ln3"):
                norm = getattr(block, name, None)
                if type(norm) is T5Norm:
                    norm.__class__ = TLT5Norm
            attentions = [(block.attn, table, is_decoder)]
            if is_decoder:
                attentions.append((block.cross_attn, None, False))
            for attn, rel_pos, causal in attentions:
                attn.__class__ = T5Attention
                object.__setattr__(attn, "_tl_rel_pos", rel_pos)  # not a submodule: the model owns the table
                attn._tl_first = rel_pos is not None and i == 0
                attn._tl_causal = causal
                attn.relative_attention_num_buckets = cfg.relative_buckets
                attn.relative_attention_max_distance = cfg.relative_max_distance
    for name in ("encoder_final_ln", "decoder_final_ln"):
        norm = getattr(model, name, None)
        if type(norm) is T5Norm:
            norm.__class__ = TLT5Norm
