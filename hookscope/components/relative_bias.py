"""T5's bucketed relative position bias: a learned per-head scalar added to every attention score.

The distance ``key - query`` is mapped to one of ``num_buckets`` buckets (exact for short distances,
logarithmic up to ``max_distance``, then saturating); each bucket has one learned value per head.
Mirrors HF ``T5Attention._relative_position_bucket`` and ``compute_bias``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from hookscope.hooks import HookPoint


def relative_position_bucket(
    relative_position: torch.Tensor, bidirectional: bool, num_buckets: int, max_distance: int
) -> torch.Tensor:
    """Bucket index (long, same shape) of each ``key_pos - query_pos`` distance.

    Bidirectional (encoder): half the buckets for keys after the query, half for keys before.
    Causal (decoder): keys after the query all share bucket 0 (they are masked anyway).
    Within a half, distances below ``num_buckets // 2`` (of that half) get their own bucket; longer ones
    share logarithmically wider buckets, and everything beyond ``max_distance`` the last one. The log is
    taken in float32, as in Mesh TensorFlow and HF, so bucket boundaries match exactly.
    """
    buckets = torch.zeros_like(relative_position, dtype=torch.long)
    if bidirectional:
        num_buckets //= 2
        buckets = buckets + (relative_position > 0).long() * num_buckets
        distance = relative_position.abs()
    else:
        distance = (-relative_position).clamp(min=0)
    max_exact = num_buckets // 2
    is_small = distance < max_exact
    log_ratio = torch.log(distance.float() / max_exact) / math.log(max_distance / max_exact)
    large = max_exact + (log_ratio * (num_buckets - max_exact)).long()
    large = large.clamp(max=num_buckets - 1)
    return buckets + torch.where(is_small, distance, large)


def relative_positions(query_len: int, key_len: int, offset: int, device: torch.device) -> torch.Tensor:
    """``[query_pos, key_pos]`` long: ``key_index - (offset + query_index)``."""
    # offset: positions already in the KV cache
    query = torch.arange(query_len, dtype=torch.long, device=device)[:, None] + offset
    key = torch.arange(key_len, dtype=torch.long, device=device)[None, :]
    return key - query


class RelativePositionBias(nn.Module):
    """Learned bias ``weight [num_buckets, head_index]``, read out as ``[1, head_index, query_pos, key_pos]``.

    One module per stack (encoder, decoder): HF computes the bias in the first layer and every later
    layer reuses it. ``hook_position_bias`` sees (and may replace) the shared bias for all layers;
    each attention layer also has its own ``attn.hook_position_bias`` for the copy it adds.
    """

    def __init__(self, num_buckets: int, n_heads: int, max_distance: int, bidirectional: bool) -> None:
        super().__init__()
        self.num_buckets, self.max_distance, self.bidirectional = num_buckets, max_distance, bidirectional
        self.weight = nn.Parameter(torch.empty(num_buckets, n_heads))
        nn.init.normal_(self.weight, std=0.02)
        self.hook_position_bias = HookPoint()  # [1, head_index, query_pos, key_pos]

    def forward(self, query_len: int, key_len: int, offset: int = 0) -> torch.Tensor:
        rel = relative_positions(query_len, key_len, offset, self.weight.device)
        buckets = relative_position_bucket(rel, self.bidirectional, self.num_buckets, self.max_distance)
        bias = self.weight[buckets]  # [query_pos, key_pos, head_index]
        return self.hook_position_bias(bias.permute(2, 0, 1).unsqueeze(0))
