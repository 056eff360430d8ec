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
"""

from __future__ import annotations

import torch
from torch import nn

from hookscope.components.embed import Unembed

__all__ = ["relayout_target", "stream_layout"]


def relayout_target(weight: torch.Tensor) -> str | None:
    """The layout a CPU float ``[out, in]`` matrix should move to, or None when it has it already (or is
    not one this applies to): "column" for ``out >= in``, "row" for ``out < in`` (see the module docstring).
    """
    if weight.dim() != 2 or weight.device.type != "cpu" or weight.dtype not in (torch.float32, torch.float64):
        return None
    if min(weight.shape) < 2:
        return None
    if weight.shape[0] >= weight.shape[1]:
        return None if weight.t().is_contiguous() else "column"
    return None if weight.is_contiguous() else "row"


def stream_layout(model: nn.Module) -> int:
    """Store every ``nn.Linear`` weight and unembedding matrix in its faster layout, in place: column-major
    when ``out >= in``, row-major otherwise.

    The modules' parameters keep their identity, shape and values (see the module docstring for why).
    Returns how many matrices were re-laid. Other parameters (embeddings that are not tied to an
    unembedding, norms, biases, convolutions) are left as they are.
    """
    seen: set[int] = set()
    count = 0
    for module in model.modules():
        weight = module._parameters.get("weight") if isinstance(module, (nn.Linear, Unembed)) else None
        if weight is None or id(weight) in seen:
            continue
        seen.add(id(weight))
        target = relayout_target(weight)
        if target is None:
            continue
        with torch.no_grad():  # [out, in]; column-major: strides (1, out)
            weight.data = weight.data.t().contiguous().t() if target == "column" else weight.data.contiguous()
        count += 1
    return count
