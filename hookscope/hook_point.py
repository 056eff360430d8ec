"""The hook point: an identity module on a named activation, and the rules for calling hooks on it.

A :class:`HookPoint` calls its forward hooks in order (each may observe or replace the activation) and
registers backward hooks on the activation's gradient. A hook that breaks gets an error naming the hook
point; a replacement of the wrong shape, dtype or device is refused. A point that fires several times in
one run tells its hooks which call this is (``hook.call_index``; ``hook.step`` under an iterative driver);
:func:`at_calls` and :func:`at_steps` make a hook act on chosen calls or steps only. Nothing here knows
any model.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from hookscope.errors import HookError

HookFn = Callable[..., Any]  # fn(tensor, hook) -> tensor | None
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


class HasHooks:
    """What ``HookPoint.has_hooks`` returns: a bool-like answer that can also be asked with filters.

    ``bool(point.has_hooks)`` says whether any hook is attached (hookscope's attribute); calling it,
    ``point.has_hooks(dir, including_permanent, level)``, answers TransformerLens 3's method: is there a hook
    in that direction (``"fwd"``, ``"bwd"`` or ``"both"``), counting permanent ones only when
    ``including_permanent``, at that context ``level`` (any level when None)?
    """

    __slots__ = ("_point",)

    def __init__(self, point: HookPoint) -> None:
        self._point = point

    def __bool__(self) -> bool:
        return bool(self._point.fwd_hooks or self._point.bwd_hooks)

    def __call__(self, dir: Direction | Literal["both"] = "both", including_permanent: bool = True,
                 level: int | None = None) -> bool:
        if dir not in ("fwd", "bwd", "both"):
            raise ValueError(f"dir must be 'fwd', 'bwd' or 'both', got {dir!r}")
        point = self._point
        hooks = (point.fwd_hooks if dir != "bwd" else []) + (point.bwd_hooks if dir != "fwd" else [])
        return any((including_permanent or not h.permanent) and (level is None or h.level == level) for h in hooks)

    def __eq__(self, other: object) -> bool:
        return bool(self) == other if isinstance(other, bool) else NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return repr(bool(self))


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
    def has_hooks(self) -> HasHooks:
        """Truthy when any hook is attached (``if point.has_hooks:``); call it to filter as TransformerLens 3's
        method does: ``point.has_hooks(dir="fwd", including_permanent=False, level=0)``."""
        return HasHooks(self)

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
