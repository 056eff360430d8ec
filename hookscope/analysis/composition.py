"""Composition scores between attention heads (Elhage et al. 2021), as TransformerLens computes them.

``all_composition_scores(model, "Q" | "K" | "V")[l1, h1, l2, h2]`` is how much head ``(l2, h2)``'s query,
key or value side reads what head ``(l1, h1)`` writes: ``||OV_1 M_2||_F / (||OV_1||_F ||M_2||_F)`` with
``M_2`` the later head's QK circuit (Q), its transpose (K) or its OV circuit (V). Pairs where the later head is
not in a later layer are 0. Computed on the model's weights as they are: on an unprocessed model the norms
between heads are not folded in (call ``model.process_weights()`` first to match TransformerLens's defaults).
"""

from __future__ import annotations

from typing import Any, Literal

import torch

from hookscope.factored_matrix import FactoredMatrix, head_composition_scores


def _circuits(model: Any) -> tuple[FactoredMatrix, FactoredMatrix]:
    try:
        return model.OV, model.QK
    except AttributeError as err:
        raise TypeError(
            f"{type(model).__name__} has no per-head QK/OV weight views (model.QK / model.OV): composition "
            "scores need a native hookscope model with stacked attention weights"
        ) from err


def all_composition_scores(model: Any, mode: Literal["Q", "K", "V"]) -> torch.Tensor:
    """Scores ``[n_layers, n_heads, n_layers, n_heads]``; zero unless the right head's layer is later.

    Args:
        model: a model with ``OV`` and ``QK`` FactoredMatrix views ``[layer, head_index, d_model, d_model]``.
        mode: "Q", "K" or "V": which input of the later head composes with the earlier head's output.
    """
    ov, qk = _circuits(model)
    return head_composition_scores(ov, qk, mode)
