"""Every error hookscope raises on purpose, in one hierarchy.

``except hookscope.HookscopeError`` catches them all; ``except hookscope.LoadError`` catches every failure
of :func:`hookscope.load` (a missing source, an unsupported architecture, weights that do not convert, a
bad dtype or device). Each class also derives from the built-in exception callers used to catch before
(``ValueError``, ``FileNotFoundError``, ``TypeError``, ``RuntimeError``), so existing ``except`` clauses keep
working. This module imports nothing: every layer may raise these.
"""

from __future__ import annotations


class HookscopeError(Exception):
    """Base class of every error hookscope raises on purpose."""


class LoadError(HookscopeError, ValueError):
    """A source could not be loaded; the message says why and what to do."""


class SourceNotFoundError(LoadError, FileNotFoundError):
    """The name, path or hub id given to ``load()`` leads to no model (or misses a file it needs)."""


class SourceTypeError(LoadError, TypeError):
    """``load()`` was given something that is not a name, a path or a transformers model."""


class ConversionError(LoadError):
    """Weights or config could not be converted exactly; the message lists what is wrong."""


class ConfigError(HookscopeError, ValueError):
    """A model config holds a value the model cannot be built with."""


class UnsupportedConfigError(ConversionError, ConfigError):
    """A source model's config holds a value hookscope cannot reproduce exactly (the message names it):
    both a failure of ``load()`` (:class:`ConversionError`) and a :class:`ConfigError`."""


class WeightProcessingError(HookscopeError, ValueError):
    """A weight-processing option (fold_ln, centring, refactoring) cannot be applied to this model exactly."""


class InputCheckError(HookscopeError, ValueError, AssertionError):
    """An argument failed a check (a shape, an index, a name) that TransformerLens makes with ``assert``.

    A ``ValueError`` for hookscope code, and an ``AssertionError`` so that TL code ported to
    :mod:`hookscope.compat` (``except AssertionError``, ``pytest.raises(AssertionError)``) still catches it.
    """


class ShapeMismatchError(HookscopeError, ValueError, RuntimeError):
    """Tensor shapes that do not broadcast together; also a ``RuntimeError``, the type torch raises for it."""


class HookError(HookscopeError, RuntimeError):
    """A hook misbehaved: it raised, or returned a tensor of the wrong shape, dtype or device."""


class HookNameError(HookscopeError, KeyError):
    """A hook name (or names filter entry) matches no hook point; the message lists the closest names."""

    def __str__(self) -> str:  # KeyError would print the message quoted
        return str(self.args[0]) if self.args else ""


__all__ = [
    "ConfigError",
    "ConversionError",
    "HookError",
    "HookNameError",
    "HookscopeError",
    "InputCheckError",
    "LoadError",
    "ShapeMismatchError",
    "SourceNotFoundError",
    "SourceTypeError",
    "UnsupportedConfigError",
    "WeightProcessingError",
]
