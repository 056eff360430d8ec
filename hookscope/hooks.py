"""Hook points and the hooked root module.

A :class:`HookPoint` (defined in :mod:`hookscope.hook_point`, with :func:`at_calls` / :func:`at_steps`) is
an identity module placed on a named activation. Hooks are plain functions ``fn(tensor, hook) -> tensor |
None``: returning ``None`` observes, returning a tensor replaces the activation downstream.

:class:`HookedModule` is the mix-in every hookscope model (native or wrapped) uses: it names its hook
points, adds and removes hooks, and runs with hooks or with a cache.

Nothing in this file knows about any model family.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Literal, Union

import torch
from torch import nn

from hookscope.errors import HookError, HookNameError
from hookscope.hook_point import (
    Direction,
    HookFn,
    HookPoint,
    StopForward,
    at_calls,
    at_steps,
    hooks_active,
    hooks_editing,
    observe_only,
)
from hookscope.names import NamesFilter, resolve_names_filter, suggest_names

logger = logging.getLogger(__name__)

# the hook API, importable from here whichever module defines it
__all__ = [
    "Direction", "HookError", "HookFn", "HookPoint", "HookSpec", "HookedModule", "StopForward", "at_calls",
    "at_steps", "hooks_active", "hooks_editing", "observe_only",
]

HookSpec = Sequence[tuple[Union[str, Callable[[str], bool]], HookFn]]


def _hook_pairs(spec: Any, arg: str) -> list[tuple[Any, Any]]:
    """``spec`` as a list of ``(name or filter, fn)`` pairs; a single pair given bare is accepted."""
    if isinstance(spec, tuple) and len(spec) == 2 and isinstance(spec[0], str) and callable(spec[1]):
        return [spec]
    pairs = list(spec)
    for pair in pairs:
        if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
            raise TypeError(f"{arg} takes a list of (name or filter, hook function) pairs; got an item {pair!r}")
    return pairs  # type: ignore[return-value]


class HookedModule(nn.Module):
    """The root of every hooked model: names its hook points and runs with hooks or caches.

    Subclasses build their modules, then call :meth:`setup_hooks` once at the end of ``__init__``.
    """

    hook_dict: dict[str, HookPoint]
    mod_dict: dict[str, nn.Module]

    def setup_hooks(self) -> None:
        """Name every HookPoint after its module path and index hook and module dictionaries."""
        self.mod_dict = {}
        self.hook_dict = {}
        for name, module in self.named_modules():
            if name == "":
                continue
            self.mod_dict[name] = module
            if isinstance(module, HookPoint):
                module.name = name
                self.hook_dict[name] = module

    # ---------------------------------------------------------------- hook management
    def hook_points(self) -> list[HookPoint]:
        return list(self.hook_dict.values())

    def _points_for(self, name_or_filter: str | Callable[[str], bool]) -> list[HookPoint]:
        if isinstance(name_or_filter, str):
            if name_or_filter not in self.hook_dict:
                raise HookNameError(self.unknown_name_message(name_or_filter))
            return [self.hook_dict[name_or_filter]]
        if callable(name_or_filter):
            return [p for name, p in self.hook_dict.items() if name_or_filter(name)]
        raise TypeError(
            f"a hook target must be a hook name or a filter function, got {type(name_or_filter).__name__}"
        )

    def cache_names(self, names_filter: NamesFilter) -> list[str]:
        """The hook names a cache filter selects; ``None`` means every point except the opt-in ones."""
        names = resolve_names_filter(names_filter, self.hook_dict, self.unknown_name_message)
        if names_filter is None:
            names = [n for n in names if not self.hook_dict[n].opt_in]
        return names

    def unknown_name_message(self, name: str) -> str:
        close = suggest_names(name, self.hook_dict)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        return f"unknown hook name {name!r} on {type(self).__name__}{hint}"

    def add_hook(
        self,
        name: str | Callable[[str], bool],
        hook: HookFn,
        dir: Direction = "fwd",
        is_permanent: bool = False,
        level: int | None = None,
        prepend: bool = False,
    ) -> None:
        """Attach ``hook`` to the point called ``name`` or to every point a filter accepts."""
        if not callable(hook):
            raise TypeError(f"the hook for {name!r} must be a function fn(tensor, hook), got {type(hook).__name__}")
        for point in self._points_for(name):
            point.add_hook(hook, dir=dir, is_permanent=is_permanent, level=level, prepend=prepend)

    def add_perma_hook(
        self, name: str | Callable[[str], bool], hook: HookFn, dir: Direction = "fwd"
    ) -> None:
        """A hook that survives :meth:`reset_hooks` unless ``including_permanent=True``."""
        self.add_hook(name, hook, dir=dir, is_permanent=True)

    def reset_hooks(
        self, clear_contexts: bool = True, direction: Direction | Literal["both"] = "both",
        including_permanent: bool = False, level: int | None = None,
    ) -> None:
        """Remove hooks from every point (temporary ones only, unless told otherwise)."""
        for point in self.hook_dict.values():
            point.remove_hooks(direction, including_permanent=including_permanent, level=level)
            if clear_contexts:
                point.clear_context()

    def reset_call_counts(self) -> None:
        """Number every point's calls from 0 again (each run and the outermost hooks() block do it)."""
        for point in self.hook_dict.values():
            point.reset_calls()

    def set_step(self, step: int | None) -> None:
        """Tell every point's hooks the current step of an iterative driver (``hook.step``)."""
        for point in self.hook_dict.values():
            point.__dict__["step"] = step  # not nn.Module.__setattr__: it costs microseconds per point

    def active_hooks(self) -> dict[str, tuple[int, int]]:
        """Name -> (forward, backward) hook counts of every point that has hooks."""
        return {n: (len(p.fwd_hooks), len(p.bwd_hooks)) for n, p in self.hook_dict.items() if p.has_hooks}

    _context_level = 0

    @contextlib.contextmanager
    def hooks(
        self,
        fwd_hooks: HookSpec = (),
        bwd_hooks: HookSpec = (),
        reset_hooks_end: bool = True,
        clear_contexts: bool = False,
    ) -> Iterator[HookedModule]:
        """Attach hooks for the duration of a ``with`` block; they are removed on exit, errors included.

        Only the hooks this context added are removed, so contexts nest. The outermost block starts a
        run: every point's ``call_index`` counts from 0 again.
        """
        type(self)._context_level += 1
        level = type(self)._context_level
        if level == 1:
            self.reset_call_counts()
        try:
            for name, fn in _hook_pairs(fwd_hooks, "fwd_hooks"):
                self.add_hook(name, fn, dir="fwd", level=level)
            for name, fn in _hook_pairs(bwd_hooks, "bwd_hooks"):
                self.add_hook(name, fn, dir="bwd", level=level)
            yield self
        finally:
            if reset_hooks_end:
                self.reset_hooks(clear_contexts=clear_contexts, level=level)
            type(self)._context_level -= 1

    def run_with_hooks(
        self,
        *model_args: Any,
        fwd_hooks: HookSpec = (),
        bwd_hooks: HookSpec = (),
        reset_hooks_end: bool = True,
        clear_contexts: bool = False,
        **model_kwargs: Any,
    ) -> Any:
        """Run the model's forward with hooks attached for this call only.

        Backward hooks fire when the caller runs ``.backward()`` on the output, so with
        ``bwd_hooks`` the hooks are kept (pass ``reset_hooks_end=False``) or warned about.
        """
        if bwd_hooks and reset_hooks_end:
            logger.warning(
                "run_with_hooks: backward hooks are removed when the forward ends; pass "
                "reset_hooks_end=False and call reset_hooks() after backward()"
            )
        with self.hooks(fwd_hooks, bwd_hooks, reset_hooks_end, clear_contexts):
            return self._forward_catching_stop(*model_args, **model_kwargs)

    def _forward_catching_stop(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return self(*args, **kwargs)
        except StopForward:
            return None

    def saes(self, *modules: Any, use_error_term: bool = False) -> contextlib.AbstractContextManager[Any]:
        """Splice SAEs (or any hooked module with a ``hook_name``) into their hook points for a ``with`` block.

        Inside the block each spliced activation is replaced by ``module(activation, use_error_term=...)``
        and the module's own hook points join this model's (``blocks.6.hook_resid_post.hook_sae_acts_post``),
        so ``run_with_cache``, ``hooks()`` and patching reach them. See :func:`hookscope.splice.spliced`.
        """
        from hookscope.splice import spliced

        return spliced(self, *modules, use_error_term=use_error_term)

    # ---------------------------------------------------------------- caching
    def run_with_cache(
        self,
        *model_args: Any,
        names_filter: NamesFilter = None,
        device: str | torch.device | None = None,
        remove_batch_dim: bool = False,
        incl_bwd: bool = False,
        pos_slice: int | slice | Sequence[int] | None = None,
        **model_kwargs: Any,
    ) -> tuple[Any, Any]:
        """Run forward and return ``(output, ActivationCache)`` of the activations the filter names.

        Args:
            names_filter: ``None`` (every hook point except the opt-in ones such as ``hook_result`` and
                the split ``hook_q_input``... and ``hook_mlp_in``, as in TransformerLens; convenient, not the
                fast path),
                a name, a list of names, or a predicate on names.
            device: where to put cached tensors (default: where they were computed).
            remove_batch_dim: drop the batch axis (batch size must be 1).
            incl_bwd: also run ``output.backward()`` (output must be a scalar, e.g. a loss) and
                cache gradients under ``NAME_grad``.
            pos_slice: keep only these positions (along each activation's position axis).

        A point that fired several times in the forward keeps every call: ``cache[name]`` then raises
        and ``cache.calls(name)`` / ``cache.stack_calls(name)`` (``[call, ...]``) give them all.
        """
        from hookscope.cache import ActivationCache, make_caching_hooks
        from hookscope.memory import ensure_freed_memory_kept

        ensure_freed_memory_kept()  # reuse the last cache's pages instead of faulting in new ones
        names = self.cache_names(names_filter)
        store: dict[str, torch.Tensor] = {}
        fwd, bwd = make_caching_hooks(
            names, store, device=device, remove_batch_dim=remove_batch_dim,
            pos_slice=pos_slice, incl_bwd=incl_bwd,
        )
        with self.hooks(fwd, bwd):
            out = self._forward_catching_stop(*model_args, **model_kwargs)
            if incl_bwd:
                if not isinstance(out, torch.Tensor) or out.numel() != 1:
                    raise ValueError(
                        "incl_bwd=True needs a scalar output to call backward() on; "
                        "pass return_type='loss' (native models) or a loss-returning forward"
                    )
                out.backward()
        return out, ActivationCache(store, self, has_batch_dim=not remove_batch_dim)

    @contextlib.contextmanager
    def record(
        self, names_filter: NamesFilter = None, device: str | torch.device | None = None
    ) -> Iterator[Any]:
        """Cache ``names_filter`` over every forward run inside the ``with`` block, any loop included.

        Yields an :class:`~hookscope.cache.ActivationCache` that fills as the model runs: one call per
        forward of the model (e.g. per denoising step of a pipeline's own loop); read them with
        ``cache.stack_calls(name)`` (``[call, ...]``) or ``cache.calls(name)``.
        """
        from hookscope.cache import ActivationCache, make_caching_hooks

        store: dict[str, Any] = {}
        fwd, _ = make_caching_hooks(
            self.cache_names(names_filter), store, device=device, remove_batch_dim=False,
            pos_slice=None, incl_bwd=False,
        )
        with self.hooks(fwd):
            yield ActivationCache(store, self)
