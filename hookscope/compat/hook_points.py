"""``transformer_lens.hook_points``: :class:`HookPoint` and :class:`HookedRootModule` over hookscope's own.

hookscope's :class:`~hookscope.hooks.HookPoint` is TL's (same ``add_hook`` / ``remove_hooks`` / ``ctx`` /
``name`` / ``layer()``); :class:`HookedRootModule` adds TL's remaining root-module spellings (``setup``,
``remove_all_hook_fns``, ``cache_all``, ``cache_some``, ``get_caching_hooks``, ``clear_contexts``) to
:class:`~hookscope.hooks.HookedModule`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch

from hookscope.cache import make_caching_hooks
from hookscope.hooks import HookedModule, HookPoint
from hookscope.names import NamesFilter

__all__ = ["HookPoint", "HookedRootModule"]


class HookedRootModule(HookedModule):
    """TransformerLens's ``HookedRootModule``: subclass it, build modules with ``HookPoint``s, call ``setup()``."""

    def setup(self) -> None:
        """Name every hook point after its module path (TL's spelling of :meth:`setup_hooks`)."""
        self.setup_hooks()

    @property
    def context_level(self) -> int:
        """The context level hooks added now get: the nesting depth of ``hooks()`` blocks, or the value TL code
        set on this module (TL keeps it as a plain attribute)."""
        return self.__dict__.get("_tl_context_level", type(self)._context_level)

    @context_level.setter
    def context_level(self, level: int) -> None:
        self.__dict__["_tl_context_level"] = level

    def _enable_hook(self, name: str | Callable[[str], bool], hook: Callable,
                     dir: Literal["fwd", "bwd"] = "fwd") -> None:
        """TL's internal step of ``hooks()``: attach ``hook`` at :attr:`context_level` to the point named
        ``name``, or to every point of ``hook_dict`` whose name ``name(point_name)`` accepts."""
        if isinstance(name, str):
            self._enable_hook_with_name(name, hook, dir)
        else:
            self._enable_hooks_for_points(self.hook_dict.items(), name, hook, dir)

    def _enable_hook_with_name(self, name: str, hook: Callable, dir: Literal["fwd", "bwd"]) -> None:
        self.mod_dict[name].add_hook(hook, dir=dir, level=self.context_level)

    def _enable_hooks_for_points(self, hook_points: Any, enabled: Callable[[str], bool], hook: Callable,
                                 dir: Literal["fwd", "bwd"]) -> None:
        for name, point in hook_points:
            if enabled(name):
                point.add_hook(hook, dir=dir, level=self.context_level)

    def remove_all_hook_fns(
        self, direction: Literal["fwd", "bwd", "both"] = "both", including_permanent: bool = False,
        level: int | None = None,
    ) -> None:
        for point in self.hook_dict.values():
            point.remove_hooks(direction, including_permanent=including_permanent, level=level)

    def clear_contexts(self) -> None:
        for point in self.hook_dict.values():
            point.clear_context()

    def get_caching_hooks(
        self, names_filter: NamesFilter = None, incl_bwd: bool = False, device: Any = None,
        remove_batch_dim: bool = False, cache: dict | None = None, pos_slice: Any = None,
    ) -> tuple[dict, list, list]:
        """``(cache dict, forward hooks, backward hooks)`` that fill the dict, as TL's method."""
        store: dict[str, torch.Tensor] = {} if cache is None else cache
        names = self.cache_names(names_filter)
        fwd, bwd = make_caching_hooks(names, store, device=device, remove_batch_dim=remove_batch_dim,
                                      pos_slice=pos_slice, incl_bwd=incl_bwd)
        return store, fwd, bwd

    def cache_all(self, cache: dict, incl_bwd: bool = False, device: Any = None,
                  remove_batch_dim: bool = False) -> None:
        """Attach (until ``reset_hooks``) hooks that write every activation into ``cache``."""
        self.cache_some(cache, lambda name: True, incl_bwd, device, remove_batch_dim)

    def cache_some(
        self, cache: dict, names: Callable[[str], bool] | Sequence[str], incl_bwd: bool = False,
        device: Any = None, remove_batch_dim: bool = False,
    ) -> None:
        """Attach (until ``reset_hooks``) hooks that write the activations ``names`` selects into ``cache``."""
        _, fwd, bwd = self.get_caching_hooks(names, incl_bwd, device, remove_batch_dim, cache=cache)
        for name, fn in fwd:
            self.add_hook(name, fn, dir="fwd")
        for name, fn in bwd:
            self.add_hook(name, fn, dir="bwd")
