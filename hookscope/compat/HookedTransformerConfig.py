"""``transformer_lens.HookedTransformerConfig``: the module path of TL's config class; the implementation is
:mod:`hookscope.compat.config.hooked_transformer_config`."""

from hookscope.compat.config import HookedTransformerConfig

__all__ = ["HookedTransformerConfig"]
