"""``transformer_lens.HookedRootModule`` (TL 3's module path): :class:`HookedRootModule` and :class:`HookPoint`,
the same classes as :mod:`hookscope.compat.hook_points`."""

from hookscope.compat.hook_points import HookedRootModule, HookPoint

__all__ = ["HookPoint", "HookedRootModule"]
