"""``transformer_lens.HookedEncoderDecoder``: the module path of TL's T5 class; the implementation is
:mod:`hookscope.compat.encoders`."""

from hookscope.compat.encoders import HookedEncoderDecoder

__all__ = ["HookedEncoderDecoder"]
