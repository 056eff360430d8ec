"""ActivationCache: a thin mapping from hook name to tensor, with TransformerLens-style key sugar.

The cache stores; analysis (logit lens, attribution, ...) lives in ``hookscope.analysis`` as free
functions over ``(model, cache)``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch

from hookscope.hooks import observe_only
from hookscope.names import get_act_name, position_axis, suggest_names

logger = logging.getLogger(__name__)


class CallList(list):
    """Every call of one hook point in one run, in call order (what the cache holds for such a point)."""


class MultipleCallsError(ValueError):
    """A single activation was asked for where the hook point fired several times."""


class ActivationCache(Mapping[str, torch.Tensor]):
    """Activations of one run, keyed by hook name.

    ``cache["blocks.3.hook_resid_post"]``, ``cache["resid_post", 3]`` and
    ``cache["scale", 2, "ln1"]`` all work; gradients (``incl_bwd``) are stored as ``NAME_grad``.

    A point that fired several times in the run (a reused block, a denoiser over steps) keeps every
    call: ``cache[name]`` then raises :class:`MultipleCallsError` rather than pick one, and
    ``cache.calls(name)`` (a list), ``cache.stack_calls(name)`` (``[call, ...]``, the call axis first)
    or ``cache.at_call(i)`` (a cache of call ``i`` of every name) read them.
    """

    def __init__(self, store: dict[str, torch.Tensor], model: Any = None, has_batch_dim: bool = True):
        self._store = store
        self.model = model
        self.has_batch_dim = has_batch_dim

    # ------------------------------------------------------------------ mapping
    def _key(self, key: str | tuple) -> str:
        if isinstance(key, tuple):
            if len(key) > 1 and isinstance(key[1], int) and key[1] < 0:  # cache["resid_post", -1]: last block
                key = (key[0], self._n_layers() + key[1], *key[2:])
            return get_act_name(*key)
        if isinstance(key, str):
            return get_act_name(key) if key not in self._store else key
        raise TypeError(f"cache keys are names or (name, layer[, layer_type]) tuples, got {key!r}")

    def _n_layers(self) -> int:
        """Blocks of the model (read from its hook names, else from the cached names): for negative layers."""
        names = getattr(self.model, "hook_dict", None) or self._store
        layers = [int(m.group(1)) for n in names if (m := re.match(r"blocks\.(\d+)\.", n))]
        if not layers:
            raise KeyError("a negative layer index needs 'blocks.{i}.' names, and this cache has none")
        return max(layers) + 1

    def __getitem__(self, key: str | tuple) -> torch.Tensor:  # type: ignore[override]
        name = self._key(key)
        if name not in self._store:
            close = suggest_names(name, self._store)
            hint = f"; closest cached: {', '.join(map(repr, close))}" if close else ""
            raise KeyError(f"{name!r} is not in this cache ({len(self._store)} entries){hint}")
        value = self._store[name]
        if isinstance(value, CallList):
            raise MultipleCallsError(
                f"'{name}' fired {len(value)} times in this run; pick one with cache.calls({name!r})[i] or "
                f"cache.at_call(i), or take all with cache.stack_calls({name!r}) -> [call, ...]"
            )
        return value

    # ------------------------------------------------------------------ repeated calls
    def n_calls(self, key: str | tuple) -> int:
        """How many times the point fired in the run (1 for an ordinary activation)."""
        value = self._value(key)
        return len(value) if isinstance(value, CallList) else 1

    def calls(self, key: str | tuple) -> list[torch.Tensor]:
        """Every call's activation of one name, in call order (a one-item list for a single call)."""
        value = self._value(key)
        return list(value) if isinstance(value, CallList) else [value]

    def stack_calls(self, key: str | tuple) -> torch.Tensor:
        """Every call of one name stacked on a new leading axis: ``[call, *activation_shape]``."""
        tensors = self.calls(key)
        shapes = {tuple(t.shape) for t in tensors}
        if len(shapes) > 1:
            raise ValueError(
                f"the calls of '{self._key(key)}' have different shapes {sorted(shapes)}; "
                "use cache.calls(name) to get them as a list"
            )
        return torch.stack(tensors)

    def at_call(self, index: int) -> ActivationCache:
        """A cache of call ``index`` of every name that fired that often (single-call names at 0 only)."""
        picked: dict[str, torch.Tensor] = {}
        for name, value in self._store.items():
            calls = value if isinstance(value, CallList) else [value]
            if -len(calls) <= index < len(calls):
                picked[name] = calls[index]
        if not picked:
            raise IndexError(f"no activation in this cache has a call {index}")
        return ActivationCache(picked, self.model, self.has_batch_dim)

    def _value(self, key: str | tuple) -> Any:
        name = self._key(key)
        if name not in self._store:
            return self[name]  # raises the KeyError with suggestions
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
            if isinstance(t, CallList):
                lines.append(f"  {name}: {len(t)} calls of {tuple(t[0].shape)} {str(t[0].dtype).replace('torch.', '')}")
            else:
                lines.append(f"  {name}: {tuple(t.shape)} {str(t.dtype).replace('torch.', '')}")
        if len(self) > 12:
            lines.append(f"  ... {len(self) - 12} more")
        return "\n".join(lines)

    # ------------------------------------------------------------------ transforms
    def to(self, device: str | torch.device) -> ActivationCache:
        """Move every tensor to ``device`` (returns a new cache)."""
        moved = {k: _each_call(v, lambda t: t.to(device)) for k, v in self._store.items()}
        return ActivationCache(moved, self.model, self.has_batch_dim)

    def remove_batch_dim(self) -> ActivationCache:
        """Drop the batch axis of a batch-1 cache (returns a new cache)."""
        if not self.has_batch_dim:
            return self
        for name, value in self._store.items():
            for t in value if isinstance(value, CallList) else [value]:
                if t.shape[0] != 1:
                    raise ValueError(f"remove_batch_dim needs batch size 1; {name} has batch {t.shape[0]}")
        dropped = {k: _each_call(v, lambda t: t[0]) for k, v in self._store.items()}
        return ActivationCache(dropped, self.model, has_batch_dim=False)

    def stack_activation(self, name: str, layer: int = -1, sublayer_type: str | None = None) -> torch.Tensor:
        """Stack ``name`` over layers 0..layer-1 (all layers for None / -1) -> ``[layer, ...]``."""
        if layer is not None and layer < -1:
            layer = self._n_layers() + 1 + layer
        layers = []
        i = 0
        while get_act_name(name, i, sublayer_type) in self._store:
            layers.append(self[get_act_name(name, i, sublayer_type)])
            i += 1
        if not layers:
            raise KeyError(f"no layer of {get_act_name(name, 0, sublayer_type)!r} is in this cache")
        if layer is not None and layer != -1:
            layers = layers[:layer]
        return torch.stack(layers)


    # ------------------------------------------------------------------ TransformerLens store methods
    @property
    def cache_dict(self) -> dict[str, torch.Tensor]:
        """The underlying ``name -> tensor`` dict (TransformerLens's attribute)."""
        return self._store

    def apply_slice_to_batch_dim(self, batch_slice: Any) -> ActivationCache:
        """A new cache with the batch axis indexed (an int drops it), as TransformerLens's method."""
        index = _as_axis_index(batch_slice)
        if not self.has_batch_dim and batch_slice is not None:
            raise ValueError("apply_slice_to_batch_dim: this cache has no batch axis (remove_batch_dim was applied)")
        if isinstance(index, torch.Tensor):
            store = {k: v.index_select(0, index.to(v.device)) for k, v in self._store.items()}
        else:
            store = {k: v[index] for k, v in self._store.items()}
        return type(self)(store, self.model, has_batch_dim=self.has_batch_dim and not isinstance(index, int))

    def toggle_autodiff(self, mode: bool = False) -> None:
        """``torch.set_grad_enabled(mode)``: GLOBAL state, as in TransformerLens (logged, since it is global)."""
        logger.warning("toggle_autodiff changed torch's global state: autodiff is now %s", mode)
        torch.set_grad_enabled(mode)

    def __getattr__(self, name: str) -> Any:
        if name in _ANALYSIS_METHODS:
            raise AttributeError(
                f"hookscope's ActivationCache stores activations only; call hookscope.{name}(cache, ...) "
                f"(or use hookscope.compat, whose ActivationCache has TransformerLens's .{name}())"
            )
        raise AttributeError(f"{type(self).__name__!s} has no attribute {name!r}")


_ANALYSIS_METHODS = frozenset({
    "accumulated_resid", "decompose_resid", "stack_head_results", "apply_ln_to_stack", "logit_attrs",
    "get_full_resid_decomposition", "stack_neuron_results", "get_neuron_results", "compute_head_results",
})


def _as_axis_index(index: Any) -> Any:
    """An index for one axis, as TransformerLens's ``Slice``: None, an int, a slice, ``(start, stop[, step])``,
    or a list / array / tensor of indices (a ``Slice`` object is unwrapped)."""
    if hasattr(index, "mode") and hasattr(index, "slice"):
        index = index.slice
    if index is None:
        return slice(None)
    if isinstance(index, (int, slice)):
        return index
    if isinstance(index, tuple):
        return slice(*index)
    return torch.as_tensor(index, dtype=torch.long).reshape(-1)


def make_caching_hooks(
    names: Sequence[str],
    store: dict[str, torch.Tensor],
    *,
    device: str | torch.device | None,
    remove_batch_dim: bool,
    pos_slice: int | slice | Sequence[int] | None,
    incl_bwd: bool,
) -> tuple[list[tuple[str, Any]], list[tuple[str, Any]]]:
    """Forward (and backward) hooks that write detached activations into ``store``.

    A name that fires again in the same run turns into a :class:`CallList` of every call (gradients
    are placed at their forward call's position, since backward reaches the calls in reverse).
    """
    index = _as_index(pos_slice)
    fwd_calls: dict[str, list[int]] = {}  # name -> the call_index of each recorded forward call

    def put(key: str, t: torch.Tensor, hook: Any, grad: bool) -> None:
        if not grad:
            fwd_calls.setdefault(hook.name, []).append(hook.call_index)
            prev = store.get(key)
            if prev is None:
                store[key] = t
            elif isinstance(prev, CallList):
                prev.append(t)
            else:
                store[key] = CallList([prev, t])
            return
        seen = fwd_calls.get(hook.name, [])
        if len(seen) <= 1:
            store[key] = t
            return
        slots = store.get(key)
        if not isinstance(slots, CallList):
            slots = store[key] = CallList([None] * len(seen))
        slots[seen.index(hook.call_index) if hook.call_index in seen else len(seen) - 1] = t

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
            put(hook.name + suffix, t, hook, grad=bool(suffix))

        return cache_hook

    fwd = [(n, observe_only(save(""))) for n in names]
    bwd = [(n, save("_grad")) for n in names] if incl_bwd else []
    return fwd, bwd


def _each_call(value: Any, fn: Any) -> Any:
    return CallList(fn(t) for t in value) if isinstance(value, CallList) else fn(value)


def _as_index(pos_slice: int | slice | Sequence[int] | None) -> Any:
    if pos_slice is None:
        return None
    if isinstance(pos_slice, int):
        return slice(pos_slice, pos_slice + 1) if pos_slice != -1 else slice(-1, None)
    if isinstance(pos_slice, slice):
        return pos_slice
    return torch.as_tensor(list(pos_slice), dtype=torch.long)
