"""``transformer_lens.HookedEncoder``: the module path of TL's BERT class; the implementation is
:mod:`hookscope.compat.encoders`."""

from hookscope.compat.encoders import HookedEncoder

__all__ = ["HookedEncoder"]
