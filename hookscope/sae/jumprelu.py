"""JumpReLU with straight-through pseudo-derivatives for its threshold (Rajamanoharan et al., 2024).

``jumprelu(z, t) = z * H(z - t)`` and the L0 count ``step(z, t) = H(z - t)`` have zero gradient with respect
to ``t`` almost everywhere; training replaces the Dirac delta of ``H`` by a rectangle of width
``bandwidth``: ``d/dt jumprelu = -(t / bw) * rect((z - t) / bw)`` and ``d/dt step = -(1 / bw) * rect(...)``.
The gradient with respect to ``z`` is the true one (``H(z - t)`` and 0).
"""

from __future__ import annotations

from typing import Any

import torch

BANDWIDTH = 1e-3


def _rect(u: torch.Tensor) -> torch.Tensor:
    return ((u > -0.5) & (u < 0.5)).to(u.dtype)


class _JumpReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, z: torch.Tensor, t: torch.Tensor, bw: float) -> torch.Tensor:
        ctx.save_for_backward(z, t)
        ctx.bw = bw
        return z * (z > t)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        z, t = ctx.saved_tensors
        bw = ctx.bw
        grad_z = grad * (z > t)
        grad_t = (-(t / bw) * _rect((z - t) / bw) * grad).reshape(-1, t.shape[-1]).sum(0)
        return grad_z, grad_t, None


class _Step(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, z: torch.Tensor, t: torch.Tensor, bw: float) -> torch.Tensor:
        ctx.save_for_backward(z, t)
        ctx.bw = bw
        return (z > t).to(z.dtype)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        z, t = ctx.saved_tensors
        bw = ctx.bw
        grad_t = (-(1.0 / bw) * _rect((z - t) / bw) * grad).reshape(-1, t.shape[-1]).sum(0)
        return torch.zeros_like(z), grad_t, None


def jumprelu(z: torch.Tensor, threshold: torch.Tensor, bandwidth: float = BANDWIDTH) -> torch.Tensor:
    """``z * (z > threshold)`` with the straight-through threshold gradient."""
    return _JumpReLU.apply(z, threshold, bandwidth)


def step(z: torch.Tensor, threshold: torch.Tensor, bandwidth: float = BANDWIDTH) -> torch.Tensor:
    """``(z > threshold)`` as a float (the L0 count) with the straight-through threshold gradient."""
    return _Step.apply(z, threshold, bandwidth)
