"""Float64 models without HF's float32 islands, for derivative and identity checks at float64 precision."""

from __future__ import annotations

import torch

from hookscope.components.norm import OffsetRMSNorm, RMSNorm


class _Float64RMSNorm(RMSNorm):
    def _normalize(self, x: torch.Tensor) -> torch.Tensor:
        variance = x.pow(2).mean(-1, keepdim=True)
        if self.hook_scale.has_hooks:
            return x / self.hook_scale(torch.sqrt(variance + self.eps))
        return x * torch.rsqrt(variance + self.eps)


class _Float64OffsetRMSNorm(OffsetRMSNorm):
    _normalize = _Float64RMSNorm._normalize

    def _affine(self, normed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return normed * (1.0 + self.weight)


def pure_float64(model):
    """Drop the float32 steps HF keeps in a float64 model (RMSNorm and softmax in float32).

    Any rounding change upstream flips float32 roundings there (1e-7), which would hide logic errors at the
    1e-10 float64 tolerance; the float32 runs check the model with its real numerics.
    """
    for module in model.modules():
        if isinstance(module, OffsetRMSNorm):
            module.__class__ = _Float64OffsetRMSNorm
        elif isinstance(module, RMSNorm):
            module.__class__ = _Float64RMSNorm
        if hasattr(module, "softmax_dtype"):
            module.softmax_dtype = None
    return model
