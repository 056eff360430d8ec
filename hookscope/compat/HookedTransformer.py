"""``transformer_lens.HookedTransformer``: the module path of TL's class (``from ... .HookedTransformer import
HookedTransformer``); the implementation is :mod:`hookscope.compat.hooked_transformer`."""

from hookscope.compat.activation_cache import ActivationCache
from hookscope.compat.config import HookedTransformerConfig
from hookscope.compat.hooked_transformer import HookedTransformer, Output
from hookscope.compat.past_key_value_caching import HookedTransformerKeyValueCache
from hookscope.compat.pretrained import DTYPE_FROM_STRING

__all__ = ["DTYPE_FROM_STRING", "ActivationCache", "HookedTransformer", "HookedTransformerConfig",
           "HookedTransformerKeyValueCache", "Output"]
