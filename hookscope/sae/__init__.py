"""Sparse autoencoders over any hooked model: harvest, train, evaluate, splice, save/load (SAELens's format), steer.

Sits above the models and hooks (beside ``analysis``); nothing below imports it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS: dict[str, str] = {
    "SAE": "hookscope.sae.sae",
    "SAEConfig": "hookscope.sae.config",
    "SAETrainingConfig": "hookscope.sae.train",
    "train_sae": "hookscope.sae.train",
    "ActivationStore": "hookscope.sae.store",
    "harvest": "hookscope.sae.store",
    "activations_at": "hookscope.sae.store",
    "pack_text": "hookscope.sae.store",
    "read_shards": "hookscope.sae.store",
    "save_sae": "hookscope.sae.saelens",
    "load_sae": "hookscope.sae.saelens",
    "spliced": "hookscope.splice",
    "evaluate_sae": "hookscope.sae.evaluate",
    "reconstruction_metrics": "hookscope.sae.evaluate",
    "SAEEvaluation": "hookscope.sae.evaluate",
    "mean_difference": "hookscope.sae.steering",
    "feature_direction": "hookscope.sae.steering",
    "steering_hook": "hookscope.sae.steering",
    "steered": "hookscope.sae.steering",
}

__all__ = [
    "SAE",
    "ActivationStore",
    "SAEConfig",
    "SAEEvaluation",
    "SAETrainingConfig",
    "activations_at",
    "evaluate_sae",
    "feature_direction",
    "harvest",
    "load_sae",
    "mean_difference",
    "pack_text",
    "read_shards",
    "reconstruction_metrics",
    "save_sae",
    "spliced",
    "steered",
    "steering_hook",
    "train_sae",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'hookscope.sae' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:  # pragma: no cover
    from hookscope.sae.config import SAEConfig
    from hookscope.sae.evaluate import SAEEvaluation, evaluate_sae, reconstruction_metrics
    from hookscope.sae.sae import SAE
    from hookscope.sae.saelens import load_sae, save_sae
    from hookscope.sae.steering import feature_direction, mean_difference, steered, steering_hook
    from hookscope.sae.store import ActivationStore, activations_at, harvest, pack_text, read_shards
    from hookscope.sae.train import SAETrainingConfig, train_sae
    from hookscope.splice import spliced
