"""``transformer_lens.cache``: TL 3's home of the key-value cache (same class as ``past_key_value_caching``)."""

from hookscope.compat.cache.key_value_cache import TransformerLensKeyValueCache

__all__ = ["TransformerLensKeyValueCache"]
