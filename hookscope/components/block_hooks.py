"""The residual-stream hook points every transformer block carries (TransformerLens names), and the
split-input plumbing that feeds a block's self-attention per-head copies of its input."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from hookscope.components.masks import AttentionMask
from hookscope.hooks import HookPoint, hooks_active


def add_block_hooks(
    block: nn.Module,
    resid_mid: bool = True,
    split_inputs: bool = True,
    cross_attention: bool = False,
    mlp: bool = True,
) -> None:
    """Attach the block-level hook points; the split-input ones (per-head copies) and hook_mlp_in are opt-in.

    ``resid_mid=False`` for parallel blocks (attention and MLP read the same residual: there is no
    stream between them to hook). ``split_inputs=False`` for blocks without the per-head input points
    (Whisper's); :func:`attend` then always takes the plain path. ``cross_attention=True`` for
    encoder-decoder decoder blocks: the residual cross-attention reads, its output, and the stream after it.
    ``mlp=False`` for attention-only blocks (no MLP hooks at all).
    """
    block.hook_resid_pre = HookPoint()  # [batch, pos, d_model]
    if split_inputs:
        block.hook_attn_in = HookPoint(opt_in=True)  # [batch, pos, head_index, d_model]
        block.hook_q_input = HookPoint(opt_in=True)  # [batch, pos, head_index, d_model]
        block.hook_k_input = HookPoint(opt_in=True)  # [batch, pos, kv_head_index, d_model]
        block.hook_v_input = HookPoint(opt_in=True)  # [batch, pos, kv_head_index, d_model]
    block.split_input_points = (
        (block.hook_attn_in, block.hook_q_input, block.hook_k_input, block.hook_v_input) if split_inputs else ()
    )
    block.hook_attn_out = HookPoint()  # [batch, pos, d_model]
    if resid_mid:
        block.hook_resid_mid = HookPoint()  # [batch, pos, d_model]
    if cross_attention:
        block.hook_cross_attn_in = HookPoint()  # [batch, pos, d_model]  the residual cross-attention reads
        block.hook_cross_attn_out = HookPoint()  # [batch, pos, d_model]
        block.hook_resid_mid_cross = HookPoint()  # [batch, pos, d_model]
    if mlp:
        # opt-in as in TransformerLens (use_hook_mlp_in): the residual the MLP's norm reads, a copy of what
        # hook_resid_mid (sequential) or hook_resid_pre (parallel) already shows
        block.hook_mlp_in = HookPoint(opt_in=True)  # [batch, pos, d_model]
        block.hook_mlp_out = HookPoint()  # [batch, pos, d_model]
    block.hook_resid_post = HookPoint()  # [batch, pos, d_model]


def attend(
    block: Any,
    x: torch.Tensor,
    mask: AttentionMask,
    *,
    rotary: Any = None,
    window: int | None = None,
    kv_cache: Any = None,
    position_bias: torch.Tensor | None = None,
    qk_offset: torch.Tensor | None = None,
) -> torch.Tensor:
    """``block.attn``'s self-attention over ``x [batch, pos, d_model]`` (what the block's attention reads).

    ``qk_offset [batch, pos, d_model]`` is added to what the queries and keys read, not the values
    (shortformer positions).

    Only when a split-input hook is active, ``x`` is copied per head (``hook_attn_in``, then
    ``hook_q_input`` / ``hook_k_input`` / ``hook_v_input``: what each head's projection reads; the key
    and value copies are one per KV head), so each head's input can be patched on its own.
    """
    if not hooks_active(block.split_input_points):
        if qk_offset is None:
            return block.attn(x, x, mask, rotary=rotary, window=window, kv_cache=kv_cache, position_bias=position_bias)
        qk = x + qk_offset
        return block.attn(qk, qk, mask, v_in=x, rotary=rotary, window=window, kv_cache=kv_cache,
                          position_bias=position_bias)
    attn = block.attn
    per_head = block.hook_attn_in(x[:, :, None, :].expand(-1, -1, attn.n_heads, -1))
    per_kv = per_head[:, :, :: attn.n_heads // attn.n_kv_heads]  # one copy per KV head
    offset = 0 if qk_offset is None else qk_offset[:, :, None]  # [batch, pos, 1, d_model]
    q_src, k_src = per_head + offset, per_kv + offset
    q_in, k_in, v_in = block.hook_q_input(q_src), block.hook_k_input(k_src), block.hook_v_input(per_kv)
    return attn(
        q_in, k_in, mask, v_in=v_in, rotary=rotary, window=window, kv_cache=kv_cache, position_bias=position_bias
    )
