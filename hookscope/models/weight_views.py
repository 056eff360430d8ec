"""TransformerLens-shaped weight views stacked over layers, for any model with ``blocks[i].attn`` / ``.mlp``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from hookscope.factored_matrix import FactoredMatrix, head_composition_scores


class StackedWeightsMixin:
    """``W_Q [layer, head_index, d_model, d_head]``, ``W_O``, ``W_in``, ... as views of each block's weights."""

    blocks: Any

    def _stack(self, getter: Callable[[Any], torch.Tensor]) -> torch.Tensor:
        return torch.stack([getter(b) for b in self.blocks])

    @property
    def W_Q(self) -> torch.Tensor:  # [layer, head_index, d_model, d_head]
        return self._stack(lambda b: b.attn.W_Q)

    @property
    def W_K(self) -> torch.Tensor:  # [layer, head_index, d_model, d_head] (GQA: KV heads repeated)
        return self._stack(lambda b: b.attn.W_K)

    @property
    def W_V(self) -> torch.Tensor:  # [layer, head_index, d_model, d_head]
        return self._stack(lambda b: b.attn.W_V)

    @property
    def W_O(self) -> torch.Tensor:  # [layer, head_index, d_head, d_model]
        return self._stack(lambda b: b.attn.W_O)

    @property
    def b_Q(self) -> torch.Tensor:  # [layer, head_index, d_head]
        return self._stack(lambda b: b.attn.b_Q)

    @property
    def b_K(self) -> torch.Tensor:  # [layer, head_index, d_head]
        return self._stack(lambda b: b.attn.b_K)

    @property
    def b_V(self) -> torch.Tensor:  # [layer, head_index, d_head]
        return self._stack(lambda b: b.attn.b_V)

    @property
    def b_O(self) -> torch.Tensor:  # [layer, d_model]
        return self._stack(lambda b: b.attn.b_O)

    @property
    def W_in(self) -> torch.Tensor:  # [layer, d_model, d_mlp]
        return self._stack(lambda b: b.mlp.W_in)

    @property
    def W_out(self) -> torch.Tensor:  # [layer, d_mlp, d_model]
        return self._stack(lambda b: b.mlp.W_out)

    @property
    def W_gate(self) -> torch.Tensor:  # [layer, d_model, d_mlp] (gated MLPs only)
        return self._stack(lambda b: b.mlp.W_gate)

    @property
    def b_in(self) -> torch.Tensor:  # [layer, d_mlp]
        return self._stack(lambda b: b.mlp.b_in)

    @property
    def b_out(self) -> torch.Tensor:  # [layer, d_model]
        return self._stack(lambda b: b.mlp.b_out)

    @property
    def QK(self) -> FactoredMatrix:  # [layer, head_index, d_model, d_model]
        """Each head's bilinear attention form ``W_Q W_K^T`` (query-side residual x key-side residual).

        GQA/MQA: each query head pairs with the key head it reads. Biases, scaling and rotary positions are
        not part of it (with rotary positions the real score also depends on the relative position).
        """
        return FactoredMatrix(self.W_Q, self.W_K.transpose(-2, -1))

    @property
    def OV(self) -> FactoredMatrix:  # [layer, head_index, d_model, d_model]
        """Each head's output-value map ``W_V W_O``: what an attended residual vector writes (row vector convention)."""
        return FactoredMatrix(self.W_V, self.W_O)

    def all_composition_scores(self, mode: str) -> torch.Tensor:  # [layer, head_index, layer, head_index]
        """Composition scores of every head pair (TransformerLens's method; see
        :func:`hookscope.analysis.composition.all_composition_scores`)."""
        return head_composition_scores(self.OV, self.QK, mode)
