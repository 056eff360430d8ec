"""What every family's frozen config shares: its checks (one wording for all) and ``to_dict``."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from hookscope.components.activations import ACTIVATIONS
from hookscope.errors import ConfigError


class FamilyConfig:
    """Mixin for the family config dataclasses (each has an ``hf_config`` field: the source config)."""

    def to_dict(self) -> dict[str, Any]:
        """The fields as a plain dict (without the source ``hf_config``)."""
        d = asdict(self)  # type: ignore[call-overload]
        d.pop("hf_config")
        return d

    def _require_positive(self, *names: str) -> None:
        for name in names:
            value = getattr(self, name)
            if value <= 0:
                raise ConfigError(f"{type(self).__name__}.{name} must be positive, got {value}")

    def _require_activation(self, *names: str) -> None:
        for name in names:
            value = getattr(self, name)
            if value not in ACTIVATIONS:
                raise ConfigError(f"unknown {name} {value!r}; choose one of {sorted(ACTIVATIONS)}")
