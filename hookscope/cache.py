"""ActivationCache: a thin mapping from hook name to tensor, with TransformerLens-style key sugar.

The cache stores; analysis (logit lens, attribution, ...) lives in ``hookscope.analysis`` as free
functions over ``(model, cache)``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch

from hookscope.names import get_act_name, position_axis, suggest_names


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
        """Stack ``name`` over layers 0..layer-1 (all layers by default) -> ``[layer, ...]``."""
        layers = []
        i = 0
        while get_act_name(name, i, sublayer_type) in self._store:
            layers.append(self[get_act_name(name, i, sublayer_type)])
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

    fwd = [(n, save("")) for n in names]
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
