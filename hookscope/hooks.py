"""Hook points and the hooked root module.

A :class:`HookPoint` is an identity module placed on a named activation. Hooks are plain functions
``fn(tensor, hook) -> tensor | None``: returning ``None`` observes, returning a tensor replaces the
activation downstream. A point that fires several times in one run (a weight-tied block, a denoiser
inside a sampling loop) tells its hooks which call this is through ``hook.call_index`` (and, under an
iterative driver such as a diffusion sampler, the step through ``hook.step``); :func:`at_calls` and
:func:`at_steps` make a hook act on chosen calls or steps only.

:class:`HookedModule` is the mix-in every hookscope model (native or wrapped) uses: it names its hook
points, adds and removes hooks, and runs with hooks or with a cache.

Nothing in this file knows about any model family.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Union

import torch
from torch import nn

from hookscope.errors import HookError, HookNameError
from hookscope.names import NamesFilter, resolve_names_filter, suggest_names

logger = logging.getLogger(__name__)

HookFn = Callable[..., Any]  # fn(tensor, hook) -> tensor | None
HookSpec = Sequence[tuple[Union[str, Callable[[str], bool]], HookFn]]
Direction = Literal["fwd", "bwd"]


class StopForward(Exception):
    """Raised by a hook to end a forward early; the model's ``run_*`` helpers catch it."""


@dataclass
class _Hook:
    fn: HookFn
    permanent: bool
    level: int | None
    final: bool = False  # runs after every other hook (a module spliced in: see hookscope.splice)

    @property
    def is_permanent(self) -> bool:  # TransformerLens's LensHandle spelling
        return self.permanent

    @property
    def context_level(self) -> int | None:
        return self.level


class HookPoint(nn.Module):
    """An identity on one named activation; hooks attached here observe or replace it.

    The fast path (no hooks) returns its input untouched, so an un-hooked model pays one attribute
    check per hook point.
    """

    def __init__(self, opt_in: bool = False) -> None:
        super().__init__()
        self.name: str | None = None
        # opt-in points cost extra compute when hooked (per-head copies or outputs): a cache of
        # "everything" (names_filter=None) skips them; name them to get them
        self.opt_in = opt_in
        self.ctx: dict[Any, Any] = {}
        self.fwd_hooks: list[_Hook] = []
        self.bwd_hooks: list[_Hook] = []
        # call_index: which call of this point (0, 1, ...) the hooks are seeing, counted while hooked
        # since the run began (run_with_hooks / run_with_cache / the outermost hooks() block);
        # step: the current step of an iterative driver (sampler), None outside one
        self._count = [0, 0]  # [calls so far, index of the current call]
        self.step: int | None = None

    @property
    def has_hooks(self) -> bool:
        return bool(self.fwd_hooks or self.bwd_hooks)

    def add_hook(
        self,
        fn: HookFn,
        dir: Direction = "fwd",
        is_permanent: bool = False,
        level: int | None = None,
        prepend: bool = False,
        *,
        permanent: bool | None = None,
        final: bool = False,
    ) -> None:
        """Attach ``fn(tensor, hook)``; ``dir="bwd"`` sees the gradient of this activation.

        The arguments are TransformerLens's, in its order (``permanent`` is an alias of ``is_permanent``).
        A ``final`` hook stays after every hook added later (splicing uses it, so the point's other
        hooks see the model's own activation and the replacement flows downstream).
        """
        if dir not in ("fwd", "bwd"):
            raise ValueError(f"dir must be 'fwd' or 'bwd', got {dir!r}")
        hooks = self.fwd_hooks if dir == "fwd" else self.bwd_hooks
        entry = _Hook(fn, is_permanent if permanent is None else permanent, level, final)
        if prepend:
            hooks.insert(0, entry)
        elif final:
            hooks.append(entry)
        else:
            hooks.insert(next((i for i, h in enumerate(hooks) if h.final), len(hooks)), entry)

    def remove_hook(self, fn: HookFn) -> None:
        """Remove every entry of one hook function (either direction, permanent or not)."""
        self.fwd_hooks = [h for h in self.fwd_hooks if h.fn is not fn]
        self.bwd_hooks = [h for h in self.bwd_hooks if h.fn is not fn]

    def remove_hooks(
        self, dir: Direction | Literal["both"] = "both", including_permanent: bool = False,
        level: int | None = None,
    ) -> None:
        """Remove hooks in one direction (or both); permanent ones only when asked."""

        def keep(h: _Hook) -> bool:
            if h.permanent and not including_permanent:
                return True
            return level is not None and h.level != level

        if dir in ("fwd", "both"):
            self.fwd_hooks = [h for h in self.fwd_hooks if keep(h)]
        if dir in ("bwd", "both"):
            self.bwd_hooks = [h for h in self.bwd_hooks if keep(h)]
        if not self.has_hooks:
            self.ctx.clear()

    def clear_context(self) -> None:
        self.ctx.clear()

    def layer(self) -> int:
        """The block index in this point's name (``blocks.3.attn.hook_z`` -> 3), as TransformerLens."""
        parts = (self.name or "").split(".")
        if len(parts) < 2 or not parts[1].isdigit():
            raise ValueError(f"hook point {self.name!r} is not inside a numbered block")
        return int(parts[1])

    @property
    def call_index(self) -> int:
        """Which call of this point (0, 1, ...) the hooks are seeing, counted since the run began."""
        return self._count[1]

    @call_index.setter
    def call_index(self, index: int) -> None:
        self._count[1] = index

    def reset_calls(self) -> None:
        """Count calls from 0 again (done when a run begins)."""
        self._count[0] = self._count[1] = 0

    def __call__(self, x: Any) -> Any:  # bypasses nn.Module.__call__ on the hot path
        if not (self.fwd_hooks or self.bwd_hooks):
            return x
        return self.forward(x)

    def forward(self, x: Any) -> Any:
        count = self._count  # a list, not attributes: nn.Module.__setattr__ costs microseconds per call
        count[1] = count[0]
        count[0] += 1
        for hook in list(self.fwd_hooks):
            out = _call_hook(hook.fn, x, self, "forward")
            if out is not None:
                x = _checked_replacement(out, x, self.name, hook.fn)
        if self.bwd_hooks and isinstance(x, torch.Tensor) and x.requires_grad:
            x = _with_backward_hooks(x, self)
        return x

    def extra_repr(self) -> str:
        return f"name={self.name!r}, fwd={len(self.fwd_hooks)}, bwd={len(self.bwd_hooks)}"


def _hook_label(fn: HookFn) -> str:
    return getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn)


def _call_hook(fn: HookFn, x: Any, point: HookPoint, phase: str) -> Any:
    """Run one hook. Its own exception reaches the caller with its own type (``except ValueError`` keeps
    working), with a note naming the hook and the hook point."""
    try:
        return fn(x, hook=point)
    except (StopForward, HookError):
        raise
    except Exception as err:
        note = f"raised in {phase} hook {_hook_label(fn)} on '{point.name}'"
        if hasattr(err, "add_note") and note not in getattr(err, "__notes__", ()):
            err.add_note(note)  # Python 3.11+
        raise


def _checked_replacement(new: Any, old: Any, name: str | None, fn: HookFn) -> Any:
    """A hook may replace an activation only with a tensor of the same shape, dtype and device."""
    if not isinstance(old, torch.Tensor):
        return new
    if not isinstance(new, torch.Tensor):
        raise HookError(
            f"hook {_hook_label(fn)} on '{name}' returned {type(new).__name__}; "
            f"return None to observe or a tensor of shape {tuple(old.shape)} to replace"
        )
    if new.shape != old.shape:
        raise HookError(
            f"hook {_hook_label(fn)} on '{name}' returned shape {tuple(new.shape)}, "
            f"expected {tuple(old.shape)}"
        )
    if new.dtype != old.dtype:
        raise HookError(
            f"hook {_hook_label(fn)} on '{name}' returned dtype {new.dtype}, expected {old.dtype} "
            f"(shape {tuple(old.shape)})"
        )
    if new.device != old.device:
        raise HookError(
            f"hook {_hook_label(fn)} on '{name}' returned a tensor on {new.device}, "
            f"expected {old.device}"
        )
    return new


def _with_backward_hooks(x: torch.Tensor, point: HookPoint) -> torch.Tensor:
    """Route the gradient of ``x`` through the point's backward hooks (in order)."""
    hooks = list(point.bwd_hooks)
    call_index = point.call_index  # the backward pass reaches calls in reverse: tell hooks which one
    # A copy (not a view) so the tensor hook belongs to this use of the activation only and survives a
    # caller that then modifies it in place (a view's hook is dropped when in-place ops rebase it).
    x = x.clone()

    def run_bwd(grad: torch.Tensor) -> torch.Tensor:
        point._count[1] = call_index
        for hook in hooks:
            out = _call_hook(hook.fn, grad, point, "backward")
            if isinstance(out, tuple) and len(out) == 1:  # TransformerLens-style (grad,) return
                out = out[0]
            if out is not None:
                grad = _checked_replacement(out, grad, point.name, hook.fn)
        return grad

    x.register_hook(run_bwd)
    return x


def _hook_pairs(spec: Any, arg: str) -> list[tuple[Any, Any]]:
    """``spec`` as a list of ``(name or filter, fn)`` pairs; a single pair given bare is accepted."""
    if isinstance(spec, tuple) and len(spec) == 2 and isinstance(spec[0], str) and callable(spec[1]):
        return [spec]
    pairs = list(spec)
    for pair in pairs:
        if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
            raise TypeError(f"{arg} takes a list of (name or filter, hook function) pairs; got an item {pair!r}")
    return pairs  # type: ignore[return-value]


def at_calls(fn: HookFn, calls: int | Iterable[int]) -> HookFn:
    """``fn`` acting only on the given call(s) of its point (``hook.call_index``), e.g. patch call 1 of 3.

    Negative indices are not accepted: how many calls a run will make is not known while it runs.
    """
    return _only_when(fn, calls, "call_index", "calls")


def at_steps(fn: HookFn, steps: int | Iterable[int]) -> HookFn:
    """``fn`` acting only at the given step(s) of an iterative driver (``hook.step``, set by a sampler)."""
    return _only_when(fn, steps, "step", "steps")


def _only_when(fn: HookFn, which: int | Iterable[int], attr: str, arg: str) -> HookFn:
    if not callable(fn):
        raise TypeError(f"at_{arg} takes a hook function first, got {type(fn).__name__}")
    wanted = {which} if isinstance(which, int) else set(which)
    if not wanted or not all(isinstance(i, int) and i >= 0 for i in wanted):
        raise ValueError(f"{arg} must be one or more non-negative integers, got {which!r}")

    def gated(tensor: Any, hook: HookPoint) -> Any:
        return fn(tensor, hook=hook) if getattr(hook, attr) in wanted else None

    gated.__qualname__ = f"at_{arg}({_hook_label(fn)}, {sorted(wanted)})"
    return gated


def hooks_active(points: Iterable[HookPoint]) -> bool:
    """True when any of ``points`` has a hook: components use it to pick a fused fast path."""
    return any(p.fwd_hooks or p.bwd_hooks for p in points)


def observe_only(fn: HookFn) -> HookFn:
    """Mark ``fn`` as a hook that never returns a replacement (e.g. a cache's): observing is then free to
    run beside the fused kernels, and the numbers stay those of the un-hooked forward."""
    fn.observe_only = True  # type: ignore[attr-defined]
    return fn


def hooks_editing(points: Iterable[HookPoint]) -> bool:
    """True when any of ``points`` has a hook that may edit the activation or needs its gradient (anything
    but :func:`observe_only` forward hooks): then the path that computes it must be the one that runs."""
    return any(p.bwd_hooks or any(not getattr(h.fn, "observe_only", False) for h in p.fwd_hooks) for p in points)


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
