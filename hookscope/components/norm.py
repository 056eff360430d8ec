"""Normalisation layers with ``hook_scale`` (the divisor, ``[batch, pos, 1]``) and ``hook_normalized``.

``hook_normalized`` is the layer's output (after the weight and bias): the vector the next sub-layer
reads, which is what lens-style analyses need. The fused kernel runs unless ``hook_scale`` is hooked.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hookscope.hooks import HookPoint


class LayerNorm(nn.Module):
    """LayerNorm over the last axis, mirroring ``torch.nn.LayerNorm`` (as HF GPT-2/NeoX/BERT use it).

    ``affine=False``: no weight and no bias (``elementwise_affine=False``, as adaLN models use it).
    """

    def __init__(self, d: int, eps: float, bias: bool = True, affine: bool = True) -> None:
        super().__init__()
        self.eps = eps
        self.weight: nn.Parameter | None = nn.Parameter(torch.ones(d)) if affine else None
        bias = bias and affine
        self.bias: nn.Parameter | None = nn.Parameter(torch.zeros(d)) if bias else None
        self.hook_scale = HookPoint()  # [batch, pos, 1]
        self.hook_normalized = HookPoint()  # [batch, pos, d]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.hook_scale.has_hooks:
            centred = x - x.mean(-1, keepdim=True)
            scale = (centred.pow(2).mean(-1, keepdim=True) + self.eps).sqrt()
            hooked = self.hook_scale(scale)
            if hooked is not scale:  # edited by a hook: normalise with the edited scale
                return self.hook_normalized(self._affine(centred / hooked))
        out = F.layer_norm(x, (x.shape[-1],), self.weight, self.bias, self.eps)
        return self.hook_normalized(out)

    def _affine(self, normed: torch.Tensor) -> torch.Tensor:
        out = normed * self.weight if self.weight is not None else normed
        if self.bias is not None:
            out = out + self.bias
        return out

    # The norm as an affine map for a FIXED scale: ``norm(x) = linear_part(x, scale_of(x)) + offset``.
    # Residual-stream analyses (hookscope.analysis.residual) apply ``linear_part`` with the cached scale
    # of the whole stream to each component, so the components still sum; they never test the norm's type.
    def scale_of(self, x: torch.Tensor) -> torch.Tensor:
        """The divisor this norm would use for ``x`` (what ``hook_scale`` shows): ``[..., 1]``."""
        centred = x - x.mean(-1, keepdim=True)
        return (centred.pow(2).mean(-1, keepdim=True) + self.eps).sqrt()

    def linear_part(self, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """``x`` centred, divided by ``scale`` and times the weight: linear in ``x`` (the bias is left out)."""
        return (x - x.mean(-1, keepdim=True)) / scale * self.weight.to(x.dtype)

    @property
    def offset(self) -> torch.Tensor | None:
        """What the norm adds after its linear part (the bias), or None."""
        return self.bias


class RMSNorm(nn.Module):
    """RMSNorm as HF Llama computes it: in float32 whatever the input dtype, weight applied after the cast back."""

    def __init__(self, d: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d))
        self.hook_scale = HookPoint()  # [batch, pos, 1]
        self.hook_normalized = HookPoint()  # [batch, pos, d]

    def _normalize(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.to(torch.float32)
        if not self.hook_scale.has_hooks:
            # one kernel computing HF's x * rsqrt(mean(x^2) + eps) bit for bit (tested), not five ops
            return F.rms_norm(x32, x32.shape[-1:], eps=self.eps)
        variance = x32.pow(2).mean(-1, keepdim=True)
        scale = torch.sqrt(variance + self.eps)
        hooked = self.hook_scale(scale)
        if hooked is not scale:  # edited by a hook: normalise with the edited scale
            return x32 / hooked
        # HF multiplies by rsqrt; dividing by sqrt would differ in the last bit
        return x32 * torch.rsqrt(variance + self.eps)

    def _affine(self, normed32: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return self.weight * normed32.to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.hook_normalized(self._affine(self._normalize(x), x.dtype))

    # The norm as a linear map for a fixed scale (see LayerNorm.scale_of): RMSNorm does not centre.
    def scale_of(self, x: torch.Tensor) -> torch.Tensor:
        """The divisor this norm would use for ``x`` (what ``hook_scale`` shows): ``[..., 1]``."""
        return (x.pow(2).mean(-1, keepdim=True) + self.eps).sqrt()

    def effective_weight(self) -> torch.Tensor:
        """The per-channel factor applied after dividing by the scale."""
        return self.weight

    def linear_part(self, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """``x`` divided by ``scale`` and times the weight: linear in ``x``."""
        return x / scale * self.effective_weight().to(x.dtype)

    @property
    def offset(self) -> torch.Tensor | None:
        """RMSNorm adds nothing after its linear part."""
        return None


class OffsetRMSNorm(RMSNorm):
    """Gemma's RMSNorm: scales by ``(1 + weight)`` in float32, then casts back (HF Gemma2RMSNorm)."""

    def __init__(self, d: int, eps: float) -> None:
        super().__init__(d, eps)
        nn.init.zeros_(self.weight)

    def _affine(self, normed32: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return (normed32 * (1.0 + self.weight.float())).to(dtype)

    def effective_weight(self) -> torch.Tensor:
        return 1.0 + self.weight.float()  # as HF Gemma: (1 + w) in float32


class LayerNormPre(nn.Module):
    """LayerNorm without weight or bias (TransformerLens ``LNPre``): centre, divide by the scale, nothing else.

    What TransformerLens leaves after folding a LayerNorm's weight into the next layer; also a norm to
    train with. ``d`` is accepted for a uniform constructor and unused (no parameters).
    """

    def __init__(self, d: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.hook_scale = HookPoint()  # [batch, pos, 1]
        self.hook_normalized = HookPoint()  # [batch, pos, d]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        centred = x - x.mean(-1, keepdim=True)
        scale = self.hook_scale((centred.pow(2).mean(-1, keepdim=True) + self.eps).sqrt())
        return self.hook_normalized(centred / scale)

    def scale_of(self, x: torch.Tensor) -> torch.Tensor:
        """The divisor this norm would use for ``x`` (what ``hook_scale`` shows): ``[..., 1]``."""
        centred = x - x.mean(-1, keepdim=True)
        return (centred.pow(2).mean(-1, keepdim=True) + self.eps).sqrt()

    def linear_part(self, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """``x`` centred and divided by ``scale``: linear in ``x``."""
        return (x - x.mean(-1, keepdim=True)) / scale

    @property
    def offset(self) -> torch.Tensor | None:
        return None


class RMSNormPre(nn.Module):
    """RMSNorm without a weight (TransformerLens ``RMSPre``): ``x / sqrt(mean(x^2) + eps)``."""

    def __init__(self, d: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.hook_scale = HookPoint()  # [batch, pos, 1]
        self.hook_normalized = HookPoint()  # [batch, pos, d]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # half precisions normalise in float32 (as TransformerLens); float64 stays float64
        x32 = x if x.dtype in (torch.float32, torch.float64) else x.to(torch.float32)
        scale = self.hook_scale(torch.sqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps))
        return self.hook_normalized((x32 / scale).to(x.dtype))

    def scale_of(self, x: torch.Tensor) -> torch.Tensor:
        """The divisor this norm would use for ``x`` (what ``hook_scale`` shows): ``[..., 1]``."""
        return (x.pow(2).mean(-1, keepdim=True) + self.eps).sqrt()

    def linear_part(self, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """``x`` divided by ``scale``: linear in ``x``."""
        return x / scale

    @property
    def offset(self) -> torch.Tensor | None:
        return None


class NoNorm(nn.Identity):
    """No normalisation (TransformerLens ``normalization_type=None``): the input passes unchanged, no hooks."""

    def __init__(self, d: int, eps: float) -> None:
        super().__init__()


NORMS: dict[str, type[nn.Module]] = {
    "layernorm": LayerNorm, "rmsnorm": RMSNorm, "rmsnorm_plus_one": OffsetRMSNorm,
    "layernorm_pre": LayerNormPre, "rmsnorm_pre": RMSNormPre, "none": NoNorm,
}


def make_norm(kind: str, d: int, eps: float, bias: bool = True) -> nn.Module:
    """Build the norm a config names; ``bias`` applies to LayerNorm only."""
    if kind == "layernorm":
        return LayerNorm(d, eps, bias=bias)
    if kind not in NORMS:
        raise ValueError(f"unknown norm {kind!r}; choose one of {sorted(NORMS)}")
    return NORMS[kind](d, eps)
