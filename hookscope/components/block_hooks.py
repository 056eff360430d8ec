"""The residual-stream hook points every transformer block carries (TransformerLens names)."""

from __future__ import annotations

from torch import nn

from hookscope.hooks import HookPoint


def add_block_hooks(block: nn.Module, resid_mid: bool = True, mlp: bool = True) -> None:
    """Attach the block-level hook points; the split-input ones (per-head copies) and hook_mlp_in are opt-in.

    ``resid_mid=False`` for parallel blocks (attention and MLP read the same residual: there is no
    stream between them to hook); ``mlp=False`` for attention-only blocks (no MLP hooks at all).
    """
    block.hook_resid_pre = HookPoint()  # [batch, pos, d_model]
    block.hook_attn_in = HookPoint(opt_in=True)  # [batch, pos, head_index, d_model]
    block.hook_q_input = HookPoint(opt_in=True)  # [batch, pos, head_index, d_model]
    block.hook_k_input = HookPoint(opt_in=True)  # [batch, pos, kv_head_index, d_model]
    block.hook_v_input = HookPoint(opt_in=True)  # [batch, pos, kv_head_index, d_model]
    block.hook_attn_out = HookPoint()  # [batch, pos, d_model]
    if resid_mid:
        block.hook_resid_mid = HookPoint()  # [batch, pos, d_model]
    if mlp:
        # opt-in as in TransformerLens (use_hook_mlp_in): the residual the MLP's norm reads, a copy of what
        # hook_resid_mid (sequential) or hook_resid_pre (parallel) already shows
        block.hook_mlp_in = HookPoint(opt_in=True)  # [batch, pos, d_model]
        block.hook_mlp_out = HookPoint()  # [batch, pos, d_model]
    block.hook_resid_post = HookPoint()  # [batch, pos, d_model]
