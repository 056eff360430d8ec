"""Hook sites at module boundaries: torch forward (pre-)hooks that exist only while someone listens.

A *site* is one boundary of one submodule of a wrapped model: its output (``"out"``), its first tensor
input (``"in"``), or its output split into heads (``"heads"``: ``[..., n_heads * d_head]`` seen as
``[..., n_heads, d_head]``). Several :class:`BridgePoint` s can share a site (the module-path name and
its canonical aliases); the site owns the single torch hook that runs them, and registers it only while
at least one of its points has a hook. An un-hooked wrapped model therefore runs the original modules
with no torch hooks at all.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Literal

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from hookscope.hooks import Direction, HookError, HookFn, HookPoint

SiteKind = Literal["in", "out", "heads"]


class BridgePoint(HookPoint):
    """A HookPoint that tells its owner whenever its hooks change, so torch hooks follow it.

    ``readonly`` points observe an activation the wrapped module keeps its own copy of (e.g. the
    residual stream between attention and MLP, seen as a norm's input): a replacement would reach only
    part of the computation, so it is refused with an error instead of silently half-applied.
    """

    def __init__(self, readonly_reason: str | None = None) -> None:
        super().__init__()
        self.readonly_reason = readonly_reason
        self.listener: Callable[[], None] | None = None

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
        if self.readonly_reason is not None and dir == "bwd":
            raise HookError(
                f"'{self.name}' is observe-only on a wrapped model ({self.readonly_reason}); "
                "its gradient would be partial, so backward hooks are refused"
            )
        super().add_hook(
            fn, dir=dir, is_permanent=is_permanent, level=level, prepend=prepend, permanent=permanent, final=final
        )
        self._notify()

    def remove_hook(self, fn: HookFn) -> None:
        super().remove_hook(fn)
        self._notify()

    def remove_hooks(self, *args: Any, **kwargs: Any) -> None:
        super().remove_hooks(*args, **kwargs)
        self._notify()

    def _notify(self) -> None:
        if self.listener is not None:
            self.listener()

    def forward(self, x: Any) -> Any:
        out = super().forward(x)
        if self.readonly_reason is not None and out is not x:
            raise HookError(
                f"'{self.name}' is observe-only on a wrapped model ({self.readonly_reason}); "
                "return None from this hook, or edit a neighbouring hook (e.g. hook_attn_out) instead"
            )
        return out


# ------------------------------------------------------------------ main tensor of a value
def find_main(value: Any) -> tuple[torch.Tensor | None, Callable[[torch.Tensor], Any]]:
    """The main tensor of a module output or input, and a function that puts a replacement back.

    A tensor is its own main tensor; for a tuple/list it is the first tensor element, for a mapping
    (including transformers' ``ModelOutput``) the first tensor value, for a dataclass the first tensor
    field. Everything else passes through untouched. Returns ``(None, ...)`` when there is no tensor.
    """
    if isinstance(value, torch.Tensor):
        return value, lambda new: new
    if isinstance(value, (tuple, list)):
        for i, item in enumerate(value):
            if isinstance(item, torch.Tensor):
                return item, lambda new, i=i: _replace_in_sequence(value, i, new)
        return None, _unchanged(value)
    if isinstance(value, dict):  # ModelOutput is an OrderedDict holding its non-None fields
        for key, item in value.items():
            if isinstance(item, torch.Tensor):
                return item, lambda new, key=key: _replace_in_mapping(value, key, new)
        return None, _unchanged(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        for field in dataclasses.fields(value):
            item = getattr(value, field.name)
            if isinstance(item, torch.Tensor):
                return item, lambda new, f=field.name: dataclasses.replace(value, **{f: new})
    return None, _unchanged(value)


def _unchanged(value: Any) -> Callable[[torch.Tensor], Any]:
    return lambda new: value


def _replace_in_sequence(seq: tuple | list, i: int, new: torch.Tensor) -> Any:
    items = list(seq)
    items[i] = new
    if isinstance(seq, list):
        return items
    if hasattr(seq, "_fields"):  # namedtuple
        return type(seq)(*items)
    return type(seq)(items) if type(seq) is not tuple else tuple(items)


def _replace_in_mapping(mapping: dict, key: Any, new: torch.Tensor) -> Any:
    if hasattr(mapping, "__dataclass_fields__"):  # ModelOutput: item and attribute stay in sync
        mapping[key] = new
        return mapping
    out = type(mapping)(mapping)
    out[key] = new
    return out


def run_points(points: list[BridgePoint], x: torch.Tensor) -> torch.Tensor:
    """Thread ``x`` through each point in order (each may observe or replace it)."""
    for point in points:
        x = point(x)
    return x


# ------------------------------------------------------------------ sites
class Site:
    """One boundary of one submodule, with the points that fire there and its (lazy) torch hook."""

    def __init__(self, module: nn.Module, kind: SiteKind, d_head: int | None = None) -> None:
        if kind == "heads" and not d_head:
            raise ValueError("a 'heads' site needs d_head to split the last axis into heads")
        self.module = module
        self.kind = kind
        self.d_head = d_head
        self.points: list[BridgePoint] = []
        self.handle: RemovableHandle | None = None

    def attach(self, point: BridgePoint) -> None:
        self.points.append(point)
        point.listener = self.sync

    def sync(self) -> None:
        """Register the torch hook if any point listens, remove it if none does."""
        active = any(p.fwd_hooks or p.bwd_hooks for p in self.points)
        if active and self.handle is None:
            if self.kind == "in":
                self.handle = self.module.register_forward_pre_hook(self._pre_hook, with_kwargs=True)
            else:
                self.handle = self.module.register_forward_hook(self._post_hook)
        elif not active and self.handle is not None:
            self.handle.remove()
            self.handle = None

    def _pre_hook(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        for i, arg in enumerate(args):
            if isinstance(arg, torch.Tensor):
                new = run_points(self.points, arg)
                if new is arg:
                    return None
                return (*args[:i], new, *args[i + 1 :]), kwargs
        key = "hidden_states" if isinstance(kwargs.get("hidden_states"), torch.Tensor) else None
        if key is None:
            key = next((k for k, v in kwargs.items() if isinstance(v, torch.Tensor)), None)
        if key is None:
            return None
        new = run_points(self.points, kwargs[key])
        if new is kwargs[key]:
            return None
        return args, {**kwargs, key: new}

    def _post_hook(self, module: nn.Module, args: tuple, output: Any) -> Any:
        main, put_back = find_main(output)
        if main is None:
            return None
        if self.kind == "heads":
            # [..., n_heads * d_head] -> [..., n_heads, d_head] for the hooks, and back.
            # Always put the hooks' tensor back, even unchanged: ``split`` is a view the module does not
            # use, so a hook that keeps it (to differentiate w.r.t. it, as attribution patching does) must
            # see the tensor the rest of the forward reads, or its gradient is silently None.
            split = main.unflatten(-1, (-1, self.d_head))
            return put_back(run_points(self.points, split).flatten(-2))
        new = run_points(self.points, main)
        return None if new is main else put_back(new)
