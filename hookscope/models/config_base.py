"""What every family's frozen config shares: its checks (one wording for all) and ``to_dict``."""

from __future__ import annotations

from dataclasses import asdict
from numbers import Integral
from typing import Any

from hookscope.components.activations import ACTIVATIONS
from hookscope.errors import ConfigError


class FamilyConfig:
    """Mixin for the family config dataclasses (a converted one keeps its source in ``hf_config``)."""

    def to_dict(self) -> dict[str, Any]:
        """The fields as a plain dict (without the source ``hf_config``)."""
        d = asdict(self)  # type: ignore[call-overload]
        d.pop("hf_config", None)
        return d

    def _require_positive(self, *names: str) -> None:
        """Sizes and counts: whole numbers above zero."""
        for name in names:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, Integral):
                raise ConfigError(f"{type(self).__name__}.{name} must be an integer, got {value!r}")
            if value <= 0:
                raise ConfigError(f"{type(self).__name__}.{name} must be positive, got {value}")

    def _require_activation(self, *names: str) -> None:
        for name in names:
            value = getattr(self, name)
            if value not in ACTIVATIONS:
                raise ConfigError(f"unknown {name} {value!r}; choose one of {sorted(ACTIVATIONS)}")
