"""Weight layout for fast decoding: each matrix stored the way its matrix-vector product streams fastest.

A decode step multiplies one activation row per sequence by every weight matrix; on the CPU each of those
products streams its matrix from memory once, and how fast it streams depends on the layout. For a
PyTorch ``[out, in]`` weight stored row-major (the default), MKL's matrix-vector product is a dot product
per output row; when ``out >= in`` the same product over the column-major copy (``weight.t()``
contiguous) streams the matrix 1.2-2.4x faster on the CPU measured (AMD EPYC, AVX-512, MKL; fp32: a SwiGLU
up/gate ``1024 x 384`` 9.4 -> 16 GB/s, an unembedding ``50257 x 768`` 13 -> 24 GB/s, square matrices a
little faster; fp64 alike; bf16 no different, compute-bound). For ``out < in`` it is the other way round
(``384 x 1024``: 14.6 GB/s row-major, 9.6 column-major; ``768 x 3072``: 18.8 vs 15.0). Weights converted
from GPT-2's ``Conv1D`` arrive column-major whatever their shape, the others row-major.

:func:`stream_layout` gives each weight its faster layout in place: it stays the same ``Parameter`` object
with the same shape and values, only its strides change, so ties, optimiser
references, hooks and every ``weight[...]`` read are untouched, and the hooked forward and the lean decode
step keep computing bit for bit the same function as each other. Against the other layout, products round
differently (relative ~1e-7 in fp32, ~1e-15 in fp64; often not at all for 8+ rows in fp32), the order by
which HF's kernels already differ from ours.

Costs: the re-laid matrices are copies (loading SmolLM2-135M re-lays ~400 MB of its 540 MB, ~0.3 s more
CPU time; a model loaded from an HF model object no longer shares those tensors with it); an embedding
lookup from a tied, re-laid table gathers strided rows (~5 us a token with GPT-2's table, ~0.2% of a
1 x 128 forward), and ``weight.view`` calls that merge dimensions need
``reshape`` instead. Writes in place (``weight.copy_``, ``weight[...] = ...``) keep the layout; a weight
replaced by a new tensor takes that tensor's layout (maybe slower to decode, never wrong).
:func:`hookscope.load` applies it to every model it builds on the CPU (a model moved to CUDA keeps the
strides; GPU layouts were not measured).

Compiled decoding wants the other layout: TorchInductor turns a one-row product written as a sum over ``in``
(:func:`streaming_linear`) into a loop that streams a row-major weight at 20-24 GB/s on the same CPU, where
MKL's products manage 13-20 over either layout for GPT-2-sized blocks' matrices;
``stream_layout(model, "compiled")`` (done by the first ``generate(compile=True)`` on a model laid out
here) stores the linears row-major for it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from hookscope.components.embed import Unembed

__all__ = ["relayout_target", "stream_layout", "streaming_linear"]

LAYOUTS = ("eager", "compiled")
_FLOATS = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def relayout_target(weight: torch.Tensor, for_reduction: bool = False) -> str | None:
    """The layout a CPU float ``[out, in]`` matrix should move to, or None when it has it already (or is
    not one this applies to): for MKL's products (fp32 / fp64), "column" for ``out >= in`` and "row" for
    ``out < in``; ``for_reduction`` (any float dtype): "row", what :func:`streaming_linear` streams fastest.
    """
    if weight.dim() != 2 or weight.device.type != "cpu" or min(weight.shape) < 2:
        return None
    if for_reduction:
        return None if weight.is_contiguous() or weight.dtype not in _FLOATS else "row"
    if weight.dtype not in (torch.float32, torch.float64):
        return None
    if weight.shape[0] >= weight.shape[1]:
        return None if weight.t().is_contiguous() else "column"
    return None if weight.is_contiguous() else "row"


def stream_layout(model: nn.Module, mode: str = "eager") -> int:
    """Store every ``nn.Linear`` weight and unembedding matrix in its faster layout, in place.

    ``mode="eager"`` (what :func:`hookscope.load` does): for MKL's matrix-vector products, column-major
    when ``out >= in``, row-major otherwise. ``mode="compiled"`` (what ``generate(compile=True)`` does to
    a model laid out by hookscope, on the CPU): the ``nn.Linear`` weights row-major, which the compiled
    step's :func:`streaming_linear` reads fastest; the unembedding as for "eager" (MKL's product over
    the column-major table streams as fast, and stays out of the fused kernel).

    The modules' parameters keep their identity, shape and values (see the module docstring for why);
    ``model.decode_layout`` records the mode. Returns how many matrices were re-laid. Other parameters
    (embeddings that are not tied to an unembedding, norms, biases, convolutions) are left as they are.
    """
    if mode not in LAYOUTS:
        raise ValueError(f"stream_layout: mode must be one of {LAYOUTS}, got {mode!r}")
    seen: set[int] = set()
    count = 0
    for module in model.modules():
        weight = module._parameters.get("weight") if isinstance(module, (nn.Linear, Unembed)) else None
        if weight is None or id(weight) in seen:
            continue
        seen.add(id(weight))
        target = relayout_target(weight, for_reduction=mode == "compiled" and isinstance(module, nn.Linear))
        if target is None:
            continue
        with torch.no_grad():  # [out, in]; column-major: strides (1, out)
            weight.data = weight.data.t().contiguous().t() if target == "column" else weight.data.contiguous()
        count += 1
    model.decode_layout = mode
    return count


def streaming_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` for code compiled by TorchInductor: one CPU row times a row-major
    weight becomes a sum over ``in`` that Inductor turns into one streaming loop (fused with what comes
    before and after), 1.1-1.6x faster than MKL's product over either layout on the CPU measured (fp32
    ``768 x 768``: 21.9 GB/s vs 14.0 column-major, 12.7 row-major; bf16 about 2x). Anything else (more
    rows, another layout or device) is ``F.linear``.

    Same function up to rounding: the sum runs in another order (float32 for half-precision inputs, then
    one cast back). Eagerly it would materialise ``[out, in]`` products: only compiled code calls it.
    """
    if x.device.type != "cpu" or math.prod(x.shape[:-1]) != 1 or not weight.is_contiguous():
        return F.linear(x, weight, bias)
    acc = torch.float32 if x.dtype in (torch.bfloat16, torch.float16) else x.dtype
    y = (x.unsqueeze(-2).to(acc) * weight.to(acc)).sum(-1)  # [*, 1, in] x [out, in] -> [*, out]
    if bias is not None:
        y = y + bias.to(acc)
    return y.to(x.dtype)
