"""``transformer_lens.components``: the classes of a compat model's modules, under TransformerLens's names.

A compat model is built from hookscope's components, so these are hookscope's classes (``isinstance(
model.ln_final, LayerNormPre)`` holds after ``fold_ln`` as in TL) and they are constructed with hookscope's
arguments, not from a ``HookedTransformerConfig``. One module takes TL's call signature on a compat model:
``model.pos_embed(tokens, past_kv_pos_offset, attention_mask)`` (:class:`PosEmbed`).
"""

from __future__ import annotations

import torch

from hookscope.components.attention import Attention
from hookscope.components.embed import Embed, Unembed
from hookscope.components.embed import PosEmbed as _NativePosEmbed
from hookscope.components.mlp import MLP, GatedMLP
from hookscope.components.norm import LayerNorm, LayerNormPre, RMSNorm, RMSNormPre

__all__ = ["MLP", "Attention", "Embed", "GatedMLP", "LayerNorm", "LayerNormPre", "PosEmbed", "RMSNorm", "RMSNormPre",
           "Unembed"]


class PosEmbed(_NativePosEmbed):
    """Learned positions with TransformerLens's call: ``pos_embed(tokens, past_kv_pos_offset=0,
    attention_mask=None)`` -> ``[batch, pos, d_model]``.

    Without a mask, the positions are ``past_kv_pos_offset ... past_kv_pos_offset + pos - 1`` for every row.
    With a mask ``[batch, past_kv_pos_offset + pos]`` (a KV cache's mask covers the cached positions too),
    each row counts from its own first attended token, and padded positions get zeros, as TL's left padding.
    The native decoder calls it with position ids and ``validate=`` (hookscope's signature).
    """

    def forward(  # type: ignore[override]
        self, tokens: torch.Tensor, past_kv_pos_offset: int = 0, attention_mask: torch.Tensor | None = None,
        *, validate: bool | None = None,
    ) -> torch.Tensor:
        if validate is not None:  # hookscope's call: ``tokens`` are position ids
            return super().forward(tokens, validate)
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


def use_tl_signatures(model: torch.nn.Module) -> None:
    """Give a compat model's position embedding TL's call signature (the module keeps its parameters)."""
    pos_embed = getattr(model, "pos_embed", None)
    if type(pos_embed) is _NativePosEmbed:
        pos_embed.__class__ = PosEmbed
