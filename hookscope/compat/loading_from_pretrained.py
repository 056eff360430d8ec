"""``transformer_lens.loading_from_pretrained``: official model names and their aliases."""

from __future__ import annotations

from hookscope.compat.pretrained import OFFICIAL_NAMES, get_official_model_name

OFFICIAL_MODEL_NAMES: list[str] = list(OFFICIAL_NAMES)
MODEL_ALIASES: dict[str, list[str]] = {name: list(aliases) for name, aliases in OFFICIAL_NAMES.items()}

__all__ = ["MODEL_ALIASES", "OFFICIAL_MODEL_NAMES", "get_official_model_name"]
