"""TransformerLens's ``ActivationCache``: hookscope's cache plus TL's analysis methods.

Each method is a one-line delegation to the native free function in ``hookscope.analysis`` (one
implementation, TL's semantics): ``logit_attrs`` applies the final norm, ``accumulated_resid(apply_ln=True)``
rows are the logit lens, ``pos_slice`` describes how a stack was already sliced. The one deliberate
difference: hookscope never folds norm weights unless asked, so ``apply_ln_to_stack`` also multiplies
by the norm's weight (on a ``from_pretrained`` model, whose weights are folded, the weight is 1).
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from hookscope.analysis import neurons, residual
from hookscope.cache import ActivationCache as _StoreCache

logger = logging.getLogger(__name__)


class ActivationCache(_StoreCache):
    """``cache["resid_post", -1]``, ``cache.decompose_resid(...)``, ``cache.logit_attrs(...)``... as in TL."""

    def __init__(self, cache_dict: dict[str, torch.Tensor], model: Any, has_batch_dim: bool = True) -> None:
        super().__init__(cache_dict, model, has_batch_dim)

    @property
    def has_embed(self) -> bool:
        return "hook_embed" in self._store

    @property
    def has_pos_embed(self) -> bool:
        return "hook_pos_embed" in self._store

    def keys(self) -> Any:  # type: ignore[override]
        return self._store.keys()

    def values(self) -> Any:  # type: ignore[override]
        return self._store.values()

    def items(self) -> Any:  # type: ignore[override]
        return self._store.items()

    def remove_batch_dim(self) -> ActivationCache:  # type: ignore[override]
        """In place, as TL: drop the batch axis of a batch-1 cache (AssertionError for a larger batch)."""
        if not self.has_batch_dim:
            logger.warning("remove_batch_dim: this cache has no batch axis already")
            return self
        for name, t in self._store.items():
            assert t.shape[0] == 1, f"cannot remove the batch axis of {name}: batch size {t.shape[0]}"
        for name in list(self._store):
            self._store[name] = self._store[name][0]
        self.has_batch_dim = False
        return self

    def to(self, device: str | torch.device) -> ActivationCache:  # type: ignore[override]
        """In place, as TL: every tensor moved to ``device``."""
        for name in list(self._store):
            self._store[name] = self._store[name].to(device)
        return self

    def accumulated_resid(self, layer: int | None = None, incl_mid: bool = False, apply_ln: bool = False,
                          pos_slice: Any = None, mlp_input: bool = False, return_labels: bool = False) -> Any:
        return residual.accumulated_resid(self, layer, incl_mid, apply_ln, pos_slice, mlp_input, return_labels)

    def decompose_resid(self, layer: int | None = None, mlp_input: bool = False, mode: str = "all",
                        apply_ln: bool = False, pos_slice: Any = None, incl_embeds: bool = True,
                        return_labels: bool = False) -> Any:
        return residual.decompose_resid(self, layer, mode, incl_embeds, apply_ln, pos_slice,  # type: ignore[arg-type]
                                        mlp_input, return_labels)

    def stack_head_results(self, layer: int | None = -1, return_labels: bool = False, incl_remainder: bool = False,
                           pos_slice: Any = None, apply_ln: bool = False) -> Any:
        return residual.stack_head_results(self, layer, return_labels, incl_remainder, pos_slice, apply_ln)

    def apply_ln_to_stack(self, residual_stack: torch.Tensor, layer: int | None = None, mlp_input: bool = False,
                          pos_slice: Any = None, batch_slice: Any = None, has_batch_dim: bool = True,
                          recompute_ln: bool = False) -> torch.Tensor:
        return residual.apply_ln_to_stack(self, residual_stack, layer, mlp_input, pos_slice, batch_slice,
                                          has_batch_dim, recompute_ln)

    def logit_attrs(self, residual_stack: torch.Tensor, tokens: Any, incorrect_tokens: Any = None,
                    pos_slice: Any = None, batch_slice: Any = None, has_batch_dim: bool = True) -> torch.Tensor:
        return residual.logit_attrs(self, residual_stack, tokens, incorrect_tokens, pos_slice, batch_slice,
                                    has_batch_dim)

    def get_neuron_results(self, layer: int, neuron_slice: Any = None, pos_slice: Any = None) -> torch.Tensor:
        return neurons.get_neuron_results(self, layer, neuron_slice, pos_slice)

    def stack_neuron_results(self, layer: int | None, pos_slice: Any = None, neuron_slice: Any = None,
                             return_labels: bool = False, incl_remainder: bool = False,
                             apply_ln: bool = False) -> Any:
        return neurons.stack_neuron_results(self, layer, pos_slice, neuron_slice, return_labels, incl_remainder,
                                            apply_ln)

    def get_full_resid_decomposition(self, layer: int | None = None, mlp_input: bool = False,
                                     expand_neurons: bool = True, apply_ln: bool = False, pos_slice: Any = None,
                                     return_labels: bool = False) -> Any:
        return neurons.get_full_resid_decomposition(self, layer, mlp_input, expand_neurons, apply_ln, pos_slice,
                                                    return_labels)

    def compute_head_results(self) -> None:
        """Store each block's per-head outputs as ``blocks.{l}.attn.hook_result`` (from ``hook_z`` and W_O)."""
        n = residual._n_layers(self.model)
        for layer in range(n):
            name = f"blocks.{layer}.attn.hook_result"
            if name not in self._store:
                z = self[f"blocks.{layer}.attn.hook_z"]  # [batch, pos, head_index, d_head]
                w_o = self.model.get_submodule(f"blocks.{layer}.attn").W_O  # [head_index, d_head, d_model]
                self._store[name] = torch.einsum("...phe,hem->...phm", z, w_o.to(z.dtype))

    def stack_activation(self, activation_name: str, layer: int | None = -1,
                         sublayer_type: str | None = None) -> torch.Tensor:
        return super().stack_activation(activation_name, -1 if layer is None else layer, sublayer_type)
