"""Model methods implemented by the layers above the models (export in ``convert``, decoding in
``generation``), reached through :mod:`hookscope.extensions` so that no model imports those layers."""

from __future__ import annotations

from typing import Any

from hookscope.extensions import implementation


class ExportMixin:
    """``model.to_hf()``: the equivalent transformers model (see :func:`hookscope.to_hf`)."""

    def to_hf(self) -> Any:
        """The equivalent transformers model with this model's weights (the conversion rules run backwards).

        Same as :func:`hookscope.to_hf` (``hookscope.convert.export.to_hf``).
        """
        return implementation("to_hf")(self)
