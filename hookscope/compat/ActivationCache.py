"""``transformer_lens.ActivationCache``: the module path of TL's cache class; the implementation is
:mod:`hookscope.compat.activation_cache`."""

from hookscope.compat.activation_cache import ActivationCache

__all__ = ["ActivationCache"]
