"""``transformer_lens.config`` (TL 3's home of the configs): :class:`HookedTransformerConfig`."""

from hookscope.compat.config.hooked_transformer_config import HookedTransformerConfig

__all__ = ["HookedTransformerConfig"]
