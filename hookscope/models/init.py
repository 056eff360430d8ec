"""Random initialisation for models built from a config alone (to train from scratch).

Kept apart from construction on purpose: loading pretrained weights never pays for (or depends on) a
random draw; only a model built to be trained calls :func:`init_weights`, once.
"""

from __future__ import annotations

import torch
from torch import nn

from hookscope.components.norm import LayerNorm, OffsetRMSNorm, RMSNorm

_NORMS = (LayerNorm, RMSNorm)


@torch.no_grad()
def init_weights(model: nn.Module, seed: int = 0, init_range: float = 0.02) -> nn.Module:
    """Draw every parameter as TransformerLens's "gpt2" init does, reproducibly from ``seed``.

    Matrices and embeddings (any parameter with 2 or more axes) get ``normal(0, init_range)``; biases get 0;
    norm weights get 1 (0 for Gemma's ``1 + weight`` RMSNorm, which then scales by 1). The numbers are
    drawn on the CPU from a generator seeded with ``seed`` and copied to each parameter's device and dtype,
    so the same seed gives the same model on any device. A tied parameter is drawn once.

    Returns:
        ``model`` itself, initialised in place.
    """
    if init_range <= 0:
        raise ValueError(f"init_range must be positive, got {init_range}")
    gen = torch.Generator(device="cpu").manual_seed(seed)
    seen: set[int] = set()
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if id(param) in seen:
                continue
            seen.add(id(param))
            if param.device.type == "meta":
                raise ValueError("init_weights needs materialised parameters; the model is on the meta device "
                                 "(call model.to_empty(device=...) first)")
            if isinstance(module, _NORMS) and name == "weight":
                param.fill_(0.0 if isinstance(module, OffsetRMSNorm) else 1.0)
            elif param.ndim >= 2:
                drawn = torch.empty(param.shape, dtype=torch.float32).normal_(0.0, init_range, generator=gen)
                param.copy_(drawn.to(param.dtype))
            else:
                param.zero_()
    return model
