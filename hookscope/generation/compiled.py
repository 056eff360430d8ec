"""Decode steps through ``torch.compile`` (``generate(..., compile=True)``).

A decode step of a small model is partly Python and kernel-launch overhead; compiling the step removes most
of it and fuses the elementwise ops between the matrix products. What is compiled is the model's
:class:`~hookscope.generation.lean.LeanStep` (the forward without hook points: a smaller graph with fewer
guards), or the model's forward for a model without one. The prompt (prefill) still runs eagerly, so input
validation and its errors stay as they are.

Compiled once per shape bucket, not per call: the step is compiled with dynamic shapes, so the growing
cached length, other prompt lengths and other ``max_new_tokens`` reuse the same graph; a new batch size
class (1 or more, which PyTorch specialises), a padding mask or another model adds one compilation. The
compiled function lives as long as the model (a second ``generate`` call compiles nothing).

On a CUDA device the fixed-shape step (:meth:`~hookscope.generation.lean.LeanStep.fixed_shape`: the whole
cache buffer attended with the unwritten positions masked, the write position a tensor) is compiled with
static shapes and ``mode="reduce-overhead"``: CUDA graphs replay each step's kernels in one launch, one
recording per batch size and cache length serving every step; the KV cache buffers are marked as static
addresses so the graphs may write them in place. On the CPU the dynamic-shape step runs and nothing
CUDA-specific does. (No GPU was available when this was written: the fixed-shape step is tested on the CPU,
the CUDA graphs are not.)

Hooks: a compiled step runs only while no hook is attached to the model (nor a PyTorch module hook), checked
before every step, so a hook attached during generation (from a stream, a callback or another hook) fires
from the next step on; hooks are arbitrary Python, and an eager step is the one that certainly runs them as
written.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from hookscope.components.layout import stream_layout
from hookscope.components.masks import positions_from_mask
from hookscope.generation.lean import LeanStep, lean_step
from hookscope.hooks import hooks_active

logger = logging.getLogger(__name__)

# The torch.compile backend; tests swap in a counting backend to count compilations without inductor.
BACKEND: str | Callable[..., Any] = "inductor"
# model -> {kind of step: its compiled function}
_compiled: weakref.WeakKeyDictionary[Any, dict[str, Callable[..., Any]]] = weakref.WeakKeyDictionary()


def _decode_step(model: Any, tokens: torch.Tensor, mask: torch.Tensor | None, kv_cache: Any) -> torch.Tensor:
    return model(tokens, mask, kv_cache=kv_cache, logits_to_keep=1)


def _lean_decode_step(step: LeanStep, tokens: torch.Tensor, mask: torch.Tensor | None, kv_cache: Any) -> torch.Tensor:
    return step(tokens, mask, kv_cache)


def _fixed_shape_step(
    step: LeanStep, tokens: torch.Tensor, positions: torch.Tensor, index: torch.Tensor,
    key_valid: torch.Tensor | None, kv_cache: Any,
) -> torch.Tensor:
    return step.fixed_shape(tokens, positions, index, key_valid, kv_cache)


def plan(on_cuda: bool, has_lean: bool) -> tuple[str, Callable[..., Any], dict[str, Any]]:
    """Which step to compile and how: ``(kind, function, torch.compile options)``.

    On a CUDA device with a lean step: the fixed-shape step, static shapes and ``mode="reduce-overhead"``
    (CUDA graphs replay it; one recording per batch size and cache length). Elsewhere the lean step (or the
    forward) with dynamic shapes, so growing lengths reuse one graph.
    """
    graphs = {"mode": "reduce-overhead"} if on_cuda and BACKEND == "inductor" else {}
    if on_cuda and has_lean:
        return "fixed_shape", _fixed_shape_step, {"dynamic": False, **graphs}
    if has_lean:
        return "lean", _lean_decode_step, {"dynamic": True}
    return "forward", _decode_step, {"dynamic": True, **graphs}


class CompiledStep:
    """``step(tokens, mask, kv_cache) -> logits`` for the cached steps of one model.

    Runs the compiled function while nothing could observe the step (no hooks) and the model's own forward
    otherwise (``used_compiled`` counts the compiled steps). ``lean``: the model's lean step, which ``fn``
    compiles (``fn(lean, ...)``), or None: ``fn`` compiles the forward (``fn(model, ...)``). ``kind``: what
    :func:`plan` chose ("fixed_shape" calls ``fn`` with the step's positions and write index as tensors).
    """

    def __init__(
        self, model: Any, fn: Callable[..., Any], on_cuda: bool = False, lean: LeanStep | None = None,
        kind: str = "lean",
    ) -> None:
        self.model, self.fn, self.on_cuda, self.lean = model, fn, on_cuda, lean
        self.kind = kind if lean is not None else "forward"
        self.points = model.hook_points()
        self.used_compiled = 0
        self._static: set[int] = set()

    def _observed(self) -> bool:
        return not self.lean.usable() if self.lean is not None else hooks_active(self.points)

    def __call__(self, tokens: torch.Tensor, mask: torch.Tensor | None, kv_cache: Any) -> torch.Tensor:
        if self._observed() or (self.kind == "fixed_shape" and tokens.shape[1] != 1):
            return _decode_step(self.model, tokens, mask, kv_cache)
        if self.on_cuda and id(kv_cache) not in self._static:
            _mark_cache_static(kv_cache)
            self._static.add(id(kv_cache))
        self.used_compiled += 1
        if self.kind == "fixed_shape":
            return self._fixed_shape(tokens, mask, kv_cache)
        return self.fn(self.lean if self.lean is not None else self.model, tokens, mask, kv_cache)

    def _fixed_shape(self, tokens: torch.Tensor, mask: torch.Tensor | None, kv_cache: Any) -> torch.Tensor:
        """The step's varying numbers as tensors of fixed shapes: write index, positions, padding mask."""
        n, batch = kv_cache.length, tokens.shape[0]
        index = torch.full((1,), n, dtype=torch.long, device=tokens.device)
        if mask is None:
            positions, key_valid = index.expand(batch)[:, None], None
        else:
            positions = positions_from_mask(mask)[:, -1:].contiguous()  # [batch, 1], the same strides each step
            key_valid = F.pad(mask, (0, kv_cache.max_len - mask.shape[1]), value=1)  # [batch, max_len]
        logits = self.fn(self.lean, tokens, positions, index, key_valid, kv_cache)
        kv_cache.advance(1)
        return logits


def _mark_cache_static(kv_cache: Any) -> None:
    """Tell the compiler the cache buffers keep their address: a CUDA graph may then write them in place
    (written in place each step, they would otherwise make it skip graph capture as mutated inputs)."""
    tensors = [kv_cache.keys, kv_cache.values]
    for i in range(kv_cache.keys.shape[0]):
        layer = kv_cache.layer(i)
        tensors += [layer.k, layer.v]
    for t in tensors:
        torch._dynamo.mark_static_address(t)


def compiled_layout(model: Any) -> None:
    """Re-lay a CPU model's weights for the compiled step's products, when hookscope chose their layout.

    MKL's eager matrix-vector product streams an ``out >= in`` weight fastest column-major (what
    :func:`hookscope.load` stores), the compiled step's reduction streams every weight fastest row-major
    (16M Llama, batch 1: 1.68x -> 2.45x HF's tokens/s). Models hookscope did not lay out (``Decoder(cfg)``,
    ``load(..., decode_layout=False)``) keep their layout; their column-major weights then take MKL's
    product in the compiled step too. ``stream_layout(model)`` puts the eager layout back.
    """
    if getattr(model, "decode_layout", None) == "eager":
        n = stream_layout(model, "compiled")
        logger.info("compile=True: %d weight matrices stored row-major for the compiled decode step", n)


def on_cuda(model: Any) -> bool:
    return next(model.parameters()).device.type == "cuda"


def compiled_step(model: Any) -> CompiledStep:
    """The compiled decode step of ``model`` (compiled on first use, then kept with the model).

    On the CPU the step streams (:class:`~hookscope.generation.lean.LeanStep`'s ``streaming``), and a model
    whose weights :func:`hookscope.load` laid out for eager decoding gets them re-laid (in place,
    once) the way those products stream fastest (see :func:`compiled_layout`).
    """
    cuda = on_cuda(model)
    if not cuda:
        compiled_layout(model)
    lean = lean_step(model, streaming=not cuda)
    kind, target, options = plan(cuda, lean is not None)
    fns = _compiled.setdefault(model, {})
    if kind not in fns:
        fns[kind] = torch.compile(target, backend=BACKEND, **options)
    return CompiledStep(model, fns[kind], on_cuda=cuda, lean=lean, kind=kind)
