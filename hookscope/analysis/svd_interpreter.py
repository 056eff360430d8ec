"""SVDInterpreter (TransformerLens): read the top singular directions of a head's OV circuit or an MLP's
weights in vocabulary space (Millidge & Black 2022, "The Singular Value Decompositions of Transformer Weight
Matrices are Highly Interpretable")."""

from __future__ import annotations

from typing import Any, Literal

import torch

from hookscope.components.norm import OffsetRMSNorm
from hookscope.errors import InputCheckError
from hookscope.factored_matrix import FactoredMatrix

VECTOR_TYPES = ("OV", "w_in", "w_out")


class SVDInterpreter:
    """Singular vectors of ``OV`` / ``W_in`` / ``W_out`` projected onto the unembedding, as TransformerLens.

    On an unprocessed model the ``w_in`` matrix includes the ``ln2`` weight (as TransformerLens does when LN is
    not folded); the ``W_U`` used is the model's own.
    """

    def __init__(self, model: Any) -> None:
        for attr in ("W_U", "blocks"):
            if not hasattr(model, attr):
                raise TypeError(f"SVDInterpreter needs a native decoder with {attr}, got {type(model).__name__}")
        self.model = model
        self.cfg = model.cfg

    def get_singular_vectors(
        self, vector_type: Literal["OV", "w_in", "w_out"], layer_index: int, num_vectors: int = 10,
        head_index: int | None = None,
    ) -> torch.Tensor:
        """``[d_vocab, 1, num_vectors]``: the top right-singular vectors (in ``d_model``) times ``W_U``."""
        if vector_type not in VECTOR_TYPES:
            raise InputCheckError(f"vector_type must be one of {VECTOR_TYPES}, got {vector_type!r}")
        if not 0 <= layer_index < self.cfg.n_layers:
            raise InputCheckError(f"Layer index must be between 0 and {self.cfg.n_layers - 1} but got {layer_index}")
        block = self.model.blocks[layer_index]
        if vector_type == "OV":
            if head_index is None:
                raise InputCheckError("Head index optional only for w_in and w_out, got OV")
            if not 0 <= head_index < self.cfg.n_heads:
                raise InputCheckError(f"Head index must be between 0 and {self.cfg.n_heads - 1} but got {head_index}")
            vh = FactoredMatrix(block.attn.W_V[head_index], block.attn.W_O[head_index]).Vh  # [d_model, k]
            rows = vh.T  # [k, d_model]
        else:
            matrix = self._w_in(block) if vector_type == "w_in" else block.mlp.W_out  # [d_mlp, d_model]
            rows = torch.linalg.svd(matrix, full_matrices=False).Vh  # [k, d_model]
        if num_vectors > rows.shape[0]:
            raise InputCheckError(f"only {rows.shape[0]} singular vectors exist, asked for {num_vectors}")
        w_u = self.model.W_U  # [d_model, d_vocab]
        return (rows[:num_vectors].float() @ w_u.float()).T[:, None, :]  # [d_vocab, 1, num_vectors]

    @staticmethod
    def _w_in(block: Any) -> torch.Tensor:
        w_in = block.mlp.W_in.T  # [d_mlp, d_model]
        weight = block.ln2.weight
        scale = 1.0 + weight if isinstance(block.ln2, OffsetRMSNorm) else weight
        return w_in * scale[None, :]
