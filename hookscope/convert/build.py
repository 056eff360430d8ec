"""Build a native model from converted tensors without ever holding two copies of the weights.

The model is created with its parameters on the meta device (no memory), then each converted tensor
is placed into its slot as it comes out of the conversion engine.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from hookscope.components.meta import parameters_on_meta
from hookscope.convert.engine import ConversionError, RuleSet, convert_tensors

__all__ = ["build_model", "parameters_on_meta", "retie"]


def _set_parameter(model: nn.Module, name: str, tensor: torch.Tensor) -> None:
    owner_name, _, attr = name.rpartition(".")
    owner = model.get_submodule(owner_name) if owner_name else model
    old = owner._parameters.get(attr)
    if old is None:
        raise ConversionError(f"target parameter {name!r} does not exist in {type(model).__name__}")
    if tuple(old.shape) != tuple(tensor.shape):
        raise ConversionError(
            f"shape mismatch for {name}: the model expects {tuple(old.shape)}, the weights have "
            f"{tuple(tensor.shape)} (config and weights disagree: is the file from another model?)"
        )
    owner._parameters[attr] = nn.Parameter(tensor, requires_grad=old.requires_grad)


def retie(model: nn.Module, ties: Iterable[tuple[str, str]]) -> None:
    """Point each ``(alias, source)`` parameter slot at the same Parameter object again."""
    for alias, source in ties:
        owner_name, _, attr = alias.rpartition(".")
        owner = model.get_submodule(owner_name) if owner_name else model
        owner._parameters[attr] = model.get_parameter(source)


def build_model(
    make: Callable[[], nn.Module],
    source_keys: Iterable[str],
    get: Callable[[str], torch.Tensor],
    ruleset: RuleSet,
    n_layers: int,
    *,
    dtype: torch.dtype,
    device: torch.device | str,
    ties: Iterable[tuple[str, str]] = (),
    progress: Any = None,
) -> nn.Module:
    """Instantiate ``make()`` on meta, then fill every parameter from the converted source tensors."""
    with parameters_on_meta():
        model = make()
    expected = [n for n, _ in model.named_parameters()]  # tied aliases appear once
    for name, tensor in convert_tensors(source_keys, get, ruleset, n_layers, expected):
        if not tensor.is_floating_point():
            raise ConversionError(f"{name}: expected a floating-point tensor, got {tensor.dtype}")
        _set_parameter(model, name, tensor.to(device=device, dtype=dtype))
        if progress is not None:
            progress.update(1)
    retie(model, ties)
    leftover = [n for n, p in model.named_parameters() if p.device.type == "meta"]
    if leftover:
        raise ConversionError(f"parameters left unfilled after conversion: {leftover[:8]}")
    return model.to(device)  # buffers (e.g. rotary frequencies) follow the weights
