"""Splicing: replace a hook point's activation by a module's output, with the module's hook points exposed.

A spliced module (an SAE, a transcoder, any :class:`~hookscope.hooks.HookedModule` called as
``module(x, **kwargs)`` that returns a tensor shaped like ``x``) runs as the *last* forward hook of its
point, so the point's other hooks (and a cache of its name) see the model's own activation, and the
module's output flows downstream. The module's hook points are registered in the model's ``hook_dict``
under ``<point>.<name>`` for the duration, so caching, patching and ablating reach them like any other hook.

Nothing here knows about SAEs or models.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

from hookscope.hooks import HookedModule, HookPoint


def _pairs(modules: tuple[Any, ...]) -> list[tuple[str, HookedModule]]:
    pairs: list[tuple[str, HookedModule]] = []
    for item in modules:
        if isinstance(item, Mapping):
            pairs.extend(item.items())
            continue
        name = getattr(item, "hook_name", None)
        if not isinstance(name, str):
            raise ValueError(
                f"{type(item).__name__} has no hook_name to splice at; pass {{'blocks.3.hook_resid_post': module}}"
            )
        pairs.append((name, item))
    for _, module in pairs:
        if not isinstance(module, HookedModule):
            raise TypeError(f"only hooked modules (e.g. hookscope.sae.SAE) can be spliced; got {type(module).__name__}")
    if len({n for n, _ in pairs}) != len(pairs):
        raise ValueError(f"two modules spliced at the same hook point: {[n for n, _ in pairs]}")
    return pairs


@contextlib.contextmanager
def spliced(model: HookedModule, *modules: Any, use_error_term: bool = False) -> Iterator[HookedModule]:
    """Splice ``modules`` (each with a ``hook_name``, or ``{hook_name: module}`` dicts) into ``model``.

    Args:
        model: a native hookscope model or a ``wrap()``-ed one.
        modules: SAEs (``sae.cfg.hook_name`` says where) or mappings from hook name to module.
        use_error_term: add the reconstruction error back, so the model's output is unchanged until a
            latent is edited (an SAE then returns its input exactly).

    Yields:
        the model, with ``<hook>.hook_sae_*`` names available to ``run_with_cache`` and ``hooks()``.
    """
    pairs = _pairs(modules)
    for name, _ in pairs:
        if name not in model.hook_dict:
            raise KeyError(model.unknown_name_message(name))
    added: list[tuple[HookPoint, Any]] = []
    renamed: list[tuple[str, HookPoint, str | None, tuple[list[Any], list[Any]]]] = []
    try:
        for name, module in pairs:
            point = model.hook_dict[name]
            if any(h.final for h in point.fwd_hooks):
                raise ValueError(f"a module is already spliced at {name!r}; leave that context first")
            for sub, inner in module.hook_dict.items():
                full = f"{name}.{sub}"
                if full in model.hook_dict:
                    raise ValueError(f"cannot splice at {name!r}: the model already has a hook named {full!r}")
                renamed.append((full, inner, inner.name, (list(inner.fwd_hooks), list(inner.bwd_hooks))))
                inner.name = full
                model.hook_dict[full] = inner

            def run(x: Any, hook: Any, _module: HookedModule = module) -> Any:
                return _module(x, use_error_term=use_error_term)

            run.__qualname__ = f"splice[{type(module).__name__} at {name}]"
            point.add_hook(run, dir="fwd", permanent=True, final=True)
            added.append((point, run))
        yield model
    finally:
        for point, fn in added:
            point.remove_hook(fn)
        for full, inner, old, (fwd, bwd) in reversed(renamed):
            model.hook_dict.pop(full, None)
            inner.fwd_hooks, inner.bwd_hooks = fwd, bwd  # drop what was attached through the model
            inner.name = old
