"""Methods that a lower layer offers and an upper layer implements.

The layers point one way (hooks <- components <- models <- convert <- loading; generation, analysis and
viz above models): a model may not import ``convert`` or ``generation``, and an analysis result may not
import ``viz``, not even inside a function. Users still expect ``model.generate(...)``,
``model.to_hf()`` and ``result.plot()``. Such a method calls :func:`implementation` with a name; the
package root (``hookscope/__init__.py``, the only module that names both sides) declares which function
implements each name as a ``"module:function"`` string, imported on first use. A lower layer thus
knows the name and the documented signature, never the module that implements it.

This module imports nothing from hookscope, so every layer may use it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

_TARGETS: dict[str, str] = {}
_RESOLVED: dict[str, Callable[..., Any]] = {}


def provide(targets: Mapping[str, str]) -> None:
    """Declare implementations: ``{"name": "package.module:function"}`` (a later declaration wins)."""
    for name, target in targets.items():
        module, sep, attr = target.partition(":")
        if not sep or not module or not attr:
            raise ValueError(f"implementation of {name!r} must be 'module:function', got {target!r}")
        _TARGETS[name] = target
        _RESOLVED.pop(name, None)


def implementation(name: str) -> Callable[..., Any]:
    """The function that implements ``name``, importing its module the first time."""
    found = _RESOLVED.get(name)
    if found is not None:
        return found
    target = _TARGETS.get(name)
    if target is None:
        known = ", ".join(sorted(_TARGETS)) or "none"
        raise LookupError(f"no implementation of {name!r} is declared (declared: {known})")
    module, _, attr = target.partition(":")
    found = getattr(importlib.import_module(module), attr)
    _RESOLVED[name] = found
    return found
