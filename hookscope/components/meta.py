"""Building modules without allocating or initialising their parameters (for loading, or to draw once).

Components allocate parameters with ``torch.empty`` and initialise them after registration (as
``nn.Linear`` does). Inside :func:`parameters_on_meta` those tensors are meta tensors, so a model built
there holds no memory and its constructors' random initialisation costs nothing; the loader then puts
each converted tensor in its slot, and a model built to train gets real, uninitialised parameters from
:func:`materialize_parameters` and is drawn once (``hookscope.models.init.init_weights``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

# nn.init functions (they honour torch-function modes) that only fill a tensor with numbers
_INITIALISERS = {
    nn.init.normal_, nn.init.uniform_, nn.init.zeros_, nn.init.ones_, nn.init.constant_, nn.init.trunc_normal_,
    nn.init.kaiming_uniform_, nn.init.kaiming_normal_, nn.init.xavier_uniform_, nn.init.xavier_normal_,
}


class _EmptyOnMeta(TorchFunctionMode):
    """Route ``torch.empty`` (how every parameter here is allocated, as in ``nn.Linear``) to the meta device,
    and skip ``nn.init`` fills of meta tensors. A torch-function mode is thread-local: other threads
    building models meanwhile are unaffected."""

    def __torch_function__(
        self, func: Callable[..., Any], types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        kwargs = kwargs or {}
        if func is torch.empty:
            kwargs["device"] = "meta"
        elif func in _INITIALISERS:
            tensor = args[0] if args else kwargs.get("tensor")
            if getattr(tensor, "is_meta", False):
                return tensor  # numbers drawn into a meta tensor: nothing to do (skips nn.init's own work)
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


def materialize_parameters(model: nn.Module, device: torch.device | str = "cpu") -> nn.Module:
    """Give every meta parameter real, uninitialised memory on ``device`` (tied parameters stay tied).

    Unlike ``Module.to_empty`` this leaves buffers alone: they were computed from the config (rotary
    frequencies) and must keep their values.
    """
    fresh: dict[int, nn.Parameter] = {}
    for module in model.modules():
        for name, param in list(module._parameters.items()):
            if param is None or param.device.type != "meta":
                continue
            if id(param) not in fresh:
                data = torch.empty(param.shape, dtype=param.dtype, device=device)
                fresh[id(param)] = nn.Parameter(data, requires_grad=param.requires_grad)
            module._parameters[name] = fresh[id(param)]
    return model
