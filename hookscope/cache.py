"""ActivationCache: a thin mapping from hook name to tensor, with TransformerLens-style key sugar.

The cache stores; analysis (logit lens, attribution, ...) lives in ``hookscope.analysis`` as free
functions over ``(model, cache)``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch

from hookscope.names import get_act_name, position_axis, suggest_names


class ActivationCache(Mapping[str, torch.Tensor]):
    """Activations of one run, keyed by hook name.

    ``cache["blocks.3.hook_resid_post"]``, ``cache["resid_post", 3]`` and
    ``cache["scale", 2, "ln1"]`` all work; gradients (``incl_bwd``) are stored as ``NAME_grad``.
    """

    def __init__(self, store: dict[str, torch.Tensor], model: Any = None, has_batch_dim: bool = True):
        self._store = store
        self.model = model
        self.has_batch_dim = has_batch_dim

    # ------------------------------------------------------------------ mapping
    def _key(self, key: str | tuple) -> str:
        if isinstance(key, tuple):
            return get_act_name(*key)
        if isinstance(key, str):
            return get_act_name(key) if key not in self._store else key
        raise TypeError(f"cache keys are names or (name, layer[, layer_type]) tuples, got {key!r}")

    def __getitem__(self, key: str | tuple) -> torch.Tensor:  # type: ignore[override]
        name = self._key(key)
        if name not in self._store:
            close = suggest_names(name, self._store)
            hint = f"; closest cached: {', '.join(map(repr, close))}" if close else ""
            raise KeyError(f"{name!r} is not in this cache ({len(self._store)} entries){hint}")
        return self._store[name]

    def __contains__(self, key: object) -> bool:
        try:
            return self._key(key) in self._store  # type: ignore[arg-type]
        except TypeError:
            return False

    def __iter__(self) -> Iterator[str]:
        return iter(self._store)

    def __len__(self) -> int:
        return len(self._store)

    def __repr__(self) -> str:
        lines = [f"ActivationCache({len(self)} activations)"]
        for name, t in list(self._store.items())[:12]:
            lines.append(f"  {name}: {tuple(t.shape)} {str(t.dtype).replace('torch.', '')}")
        if len(self) > 12:
            lines.append(f"  ... {len(self) - 12} more")
        return "\n".join(lines)

    # ------------------------------------------------------------------ transforms
    def to(self, device: str | torch.device) -> ActivationCache:
        """Move every tensor to ``device`` (returns a new cache)."""
        return ActivationCache({k: v.to(device) for k, v in self._store.items()}, self.model, self.has_batch_dim)

    def remove_batch_dim(self) -> ActivationCache:
        """Drop the batch axis of a batch-1 cache (returns a new cache)."""
        if not self.has_batch_dim:
            return self
        for name, t in self._store.items():
            if t.shape[0] != 1:
                raise ValueError(f"remove_batch_dim needs batch size 1; {name} has batch {t.shape[0]}")
        return ActivationCache({k: v[0] for k, v in self._store.items()}, self.model, has_batch_dim=False)

    def stack_activation(self, name: str, layer: int = -1, sublayer_type: str | None = None) -> torch.Tensor:
        """Stack ``name`` over layers 0..layer-1 (all layers by default) -> ``[layer, ...]``."""
        layers = []
        i = 0
        while get_act_name(name, i, sublayer_type) in self._store:
            layers.append(self._store[get_act_name(name, i, sublayer_type)])
            i += 1
        if not layers:
            raise KeyError(f"no layer of {get_act_name(name, 0, sublayer_type)!r} is in this cache")
        if layer != -1:
            layers = layers[:layer]
        return torch.stack(layers)


    # ------------------------------------------------------------------ TransformerLens analysis helpers
    # Thin delegations so TransformerLens code (``cache.decompose_resid(...)``) runs unchanged; the
    # analysis itself lives in hookscope.analysis.residual as free functions over the cache.
    def accumulated_resid(self, *args: Any, **kwargs: Any) -> Any:
        """See :func:`hookscope.analysis.residual.accumulated_resid`."""
        from hookscope.analysis.residual import accumulated_resid

        return accumulated_resid(self, *args, **kwargs)

    def decompose_resid(self, *args: Any, **kwargs: Any) -> Any:
        """See :func:`hookscope.analysis.residual.decompose_resid`."""
        from hookscope.analysis.residual import decompose_resid

        return decompose_resid(self, *args, **kwargs)

    def stack_head_results(self, *args: Any, **kwargs: Any) -> Any:
        """See :func:`hookscope.analysis.residual.stack_head_results`."""
        from hookscope.analysis.residual import stack_head_results

        return stack_head_results(self, *args, **kwargs)

    def apply_ln_to_stack(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        """See :func:`hookscope.analysis.residual.apply_ln_to_stack`."""
        from hookscope.analysis.residual import apply_ln_to_stack

        return apply_ln_to_stack(self, *args, **kwargs)

    def logit_attrs(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        """See :func:`hookscope.analysis.residual.logit_attrs`."""
        from hookscope.analysis.residual import logit_attrs

        return logit_attrs(self, *args, **kwargs)


def make_caching_hooks(
    names: Sequence[str],
    store: dict[str, torch.Tensor],
    *,
    device: str | torch.device | None,
    remove_batch_dim: bool,
    pos_slice: int | slice | Sequence[int] | None,
    incl_bwd: bool,
) -> tuple[list[tuple[str, Any]], list[tuple[str, Any]]]:
    """Forward (and backward) hooks that write detached activations into ``store``."""
    index = _as_index(pos_slice)

    def save(suffix: str):
        def cache_hook(tensor: torch.Tensor, hook: Any) -> None:
            if not isinstance(tensor, torch.Tensor):
                return
            t = tensor.detach()
            if remove_batch_dim:
                if t.shape[0] != 1:
                    raise ValueError(f"remove_batch_dim=True needs batch size 1, got {t.shape[0]}")
                t = t[0]
            if index is not None:
                axis = position_axis(hook.name, tensor.ndim)
                if axis is not None:
                    axis -= int(remove_batch_dim)
                    t = t[(slice(None),) * axis + (index,)]
            if device is not None:
                t = t.to(device)
            store[hook.name + suffix] = t

        return cache_hook

    fwd = [(n, save("")) for n in names]
    bwd = [(n, save("_grad")) for n in names] if incl_bwd else []
    return fwd, bwd


def _as_index(pos_slice: int | slice | Sequence[int] | None) -> Any:
    if pos_slice is None:
        return None
    if isinstance(pos_slice, int):
        return slice(pos_slice, pos_slice + 1) if pos_slice != -1 else slice(-1, None)
    if isinstance(pos_slice, slice):
        return pos_slice
    return torch.as_tensor(list(pos_slice), dtype=torch.long)
