"""Build a native model from converted tensors without ever holding two copies of the weights.

The model is created with its parameters on the meta device (no memory), then each converted tensor
is placed into its slot as it comes out of the conversion engine.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from hookscope.convert.engine import ConversionError, RuleSet, convert_tensors


class _EmptyOnMeta(TorchFunctionMode):
    """Route ``torch.empty`` (how every parameter here is allocated, as in ``nn.Linear``) to the meta device."""

    def __torch_function__(
        self, func: Callable[..., Any], types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        kwargs = kwargs or {}
        if func is torch.empty:
            kwargs["device"] = "meta"
        return func(*args, **kwargs)


@contextlib.contextmanager
def parameters_on_meta() -> Iterator[None]:
    """Inside this context, new parameters live on the meta device; buffers are created normally.

    Parameters are allocated with ``torch.empty`` and initialised after registration (the components'
    convention), so building a model for loading allocates and fills nothing: the empty tensors are meta
    tensors and the random initialisation runs on meta. Buffers (rotary frequencies) are computed from
    the config with other factories and stay real. A parameter made any other way (``torch.ones`` of a
    norm) is moved to meta when it is registered.
    """
    original = nn.Module.register_parameter

    def register(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        original(module, name, param)
        if param is not None and param.device.type != "meta":
            module._parameters[name] = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)

    nn.Module.register_parameter = register  # type: ignore[method-assign]
    try:
        with _EmptyOnMeta():
            yield
    finally:
        nn.Module.register_parameter = original  # type: ignore[method-assign]


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
