"""TransformerLens's public layout over hookscope: replace ``transformer_lens`` by ``hookscope.compat`` in imports.

``HookedTransformer`` is a native :class:`~hookscope.models.decoder.Decoder` with TransformerLens's
signatures, defaults (BOS prepended, right padding, weight processing in ``from_pretrained``) and
``ActivationCache`` methods; nothing here is a second model implementation. See the docs page
"Coming from TransformerLens" for the name table and every deliberate difference.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

_EXPORTS: dict[str, str] = {
    "HookedTransformer": "hookscope.compat.hooked_transformer",
    "HookedTransformerConfig": "hookscope.compat.config",
    "ActivationCache": "hookscope.compat.activation_cache",
    "HookedRootModule": "hookscope.compat.hook_points",
    "HookPoint": "hookscope.compat.hook_points",
    "HookedTransformerKeyValueCache": "hookscope.compat.past_key_value_caching",
    "HookedEncoder": "hookscope.compat.encoders",
    "HookedEncoderDecoder": "hookscope.compat.encoders",
    "FactoredMatrix": "hookscope.factored_matrix",
    "SVDInterpreter": "hookscope.analysis.svd_interpreter",
}
_SUBMODULES = ("utils", "hook_points", "past_key_value_caching", "config", "loading_from_pretrained", "cache",
               "patching", "head_detector", "utilities", "components")
# TL's CamelCase module paths (``transformer_lens.HookedTransformer``...): importable submodules named like the
# class they hold. As in TL's package, the package attribute of that name stays the class.
_CLASS_MODULES = ("HookedTransformer", "HookedTransformerConfig", "ActivationCache", "FactoredMatrix",
                  "SVDInterpreter", "HookedEncoder", "HookedEncoderDecoder", "HookedRootModule")

__all__ = [*_EXPORTS, *_SUBMODULES]


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        module = importlib.import_module(f"hookscope.compat.{name}")
        globals()[name] = module
        return module
    if name not in _EXPORTS:
        raise AttributeError(f"module 'hookscope.compat' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


class _CompatPackage(types.ModuleType):
    """The package's module type: importing ``hookscope.compat.HookedTransformer`` (the module) does not rebind
    the package attribute ``HookedTransformer`` (the class), as TransformerLens's ``__init__`` arranges."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _CLASS_MODULES and isinstance(value, types.ModuleType):
            return  # the import system binding the submodule; the module stays reachable in sys.modules
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _CompatPackage


if TYPE_CHECKING:  # pragma: no cover
    from hookscope.analysis.svd_interpreter import SVDInterpreter
    from hookscope.compat.activation_cache import ActivationCache
    from hookscope.compat.config import HookedTransformerConfig
    from hookscope.compat.encoders import HookedEncoder, HookedEncoderDecoder
    from hookscope.compat.hook_points import HookedRootModule, HookPoint
    from hookscope.compat.hooked_transformer import HookedTransformer
    from hookscope.compat.past_key_value_caching import HookedTransformerKeyValueCache
    from hookscope.factored_matrix import FactoredMatrix
