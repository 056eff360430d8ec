"""Feed-forward layers: plain (``W_in -> act -> W_out``) and gated (``act(gate) * up -> down``)."""

from __future__ import annotations

import torch
from torch import nn

from hookscope.components.activations import get_activation
from hookscope.components.norm import make_norm
from hookscope.components.views import bias_or_zeros
from hookscope.hooks import HookPoint


class _UpDownViews:
    """TransformerLens-shaped views of ``up_proj`` / ``down_proj`` (``nn.Linear``, PyTorch layout); ``b_in`` is
    the linear (up) branch's bias in a gated MLP."""

    up_proj: nn.Linear
    down_proj: nn.Linear

    @property
    def W_in(self) -> torch.Tensor:  # [d_model, d_mlp]
        return self.up_proj.weight.T

    @property
    def W_out(self) -> torch.Tensor:  # [d_mlp, d_model]
        return self.down_proj.weight.T

    @property
    def b_in(self) -> torch.Tensor:  # [d_mlp]
        return bias_or_zeros(self.up_proj.bias, self.up_proj.weight)

    @property
    def b_out(self) -> torch.Tensor:  # [d_model]
        return bias_or_zeros(self.down_proj.bias, self.down_proj.weight)


class MLP(_UpDownViews, nn.Module):
    """``out = W_out act(W_in x + b_in) + b_out`` with ``hook_pre`` and ``hook_post`` ``[batch, pos, d_mlp]``.

    ``inner_norm`` (a norm kind, e.g. "layernorm"): normalise the activations over the neurons before
    ``W_out`` (TransformerLens's SoLU MLP): ``hook_mid`` is the activation, ``ln`` the norm, ``hook_post`` its
    output.
    """

    def __init__(self, d_model: int, d_mlp: int, act: str, bias: bool = True, inner_norm: str | None = None,
                 eps: float = 1e-5) -> None:
        super().__init__()
        self.up_proj = nn.Linear(d_model, d_mlp, bias=bias)
        self.down_proj = nn.Linear(d_mlp, d_model, bias=bias)
        self.act = get_activation(act)
        self.hook_pre = HookPoint()  # [batch, pos, d_mlp]
        self.ln: nn.Module | None = None
        if inner_norm is not None:
            self.hook_mid = HookPoint()  # [batch, pos, d_mlp]
            self.ln = make_norm(inner_norm, d_mlp, eps)
        self.hook_post = HookPoint()  # [batch, pos, d_mlp]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.hook_pre(self.up_proj(x))
        if self.ln is None:
            return self.down_proj(self.hook_post(self.act(pre)))
        return self.down_proj(self.hook_post(self.ln(self.hook_mid(self.act(pre)))))


class GatedMLP(_UpDownViews, nn.Module):
    """SwiGLU / GeGLU: ``down(act(gate x) * up x)``.

    ``hook_pre`` is the gate pre-activation, ``hook_pre_linear`` the linear (up) branch, ``hook_post``
    their product (TransformerLens names).
    """

    def __init__(self, d_model: int, d_mlp: int, act: str, bias: bool = False) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(d_model, d_mlp, bias=bias)
        self.up_proj = nn.Linear(d_model, d_mlp, bias=bias)
        self.down_proj = nn.Linear(d_mlp, d_model, bias=bias)
        self.act = get_activation(act)
        self.hook_pre = HookPoint()  # [batch, pos, d_mlp]
        self.hook_pre_linear = HookPoint()  # [batch, pos, d_mlp]
        self.hook_post = HookPoint()  # [batch, pos, d_mlp]

    @property
    def W_gate(self) -> torch.Tensor:  # [d_model, d_mlp]
        return self.gate_proj.weight.T

    @property
    def b_gate(self) -> torch.Tensor:  # [d_mlp] (Llama mlp_bias=True; zeros otherwise)
        return bias_or_zeros(self.gate_proj.bias, self.gate_proj.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = self.hook_pre(self.gate_proj(x))
        up = self.hook_pre_linear(self.up_proj(x))
        return self.down_proj(self.hook_post(self.act(gate) * up))


def make_mlp(kind: str, d_model: int, d_mlp: int, act: str, bias: bool, inner_norm: str | None = None,
             eps: float = 1e-5) -> nn.Module:
    """``kind``: "plain" or "gated"; ``inner_norm``: a norm after the activation (plain only, see :class:`MLP`)."""
    if kind == "gated":
        if inner_norm is not None:
            raise ValueError("a gated MLP has no inner norm (inner_norm goes with kind='plain')")
        return GatedMLP(d_model, d_mlp, act, bias)
    if kind == "plain":
        return MLP(d_model, d_mlp, act, bias, inner_norm, eps)
    raise ValueError(f"unknown mlp kind {kind!r}; supported: 'plain', 'gated'")


__all__ = ["MLP", "GatedMLP", "make_mlp"]
