"""``transformer_lens.cache.key_value_cache``: TL 3's name for :class:`HookedTransformerKeyValueCache`."""

from hookscope.compat.past_key_value_caching import HookedTransformerKeyValueCache

TransformerLensKeyValueCache = HookedTransformerKeyValueCache

__all__ = ["TransformerLensKeyValueCache"]
