"""The batched engine under activation and path patching: many patched runs share one forward batch.

A patched run is the corrupted input with a few activations replaced. ``n`` runs are stacked along the batch
axis (run ``i`` owns rows ``i*b .. (i+1)*b - 1``); one hook per hook name edits only the rows of the runs that
patch there, so runs patching different layers share a batch. On a native decoder every run in a chunk shares
the corrupted computation before the earliest layer it patches, so the chunk starts there
(``start_at_layer``) from the cached corrupted residual stream instead of recomputing it ``n`` times.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from hookscope.hooks import StopForward
from hookscope.models.decoder import Decoder

Edit = Callable[[torch.Tensor, int], torch.Tensor | None]  # (activation rows of one run, run) -> new or None
_BLOCK = re.compile(r"^blocks\.(\d+)\.")
DEFAULT_MEMORY_BUDGET = 1 << 30  # bytes of activations one patched batch may hold


@dataclass(frozen=True, kw_only=True)
class PatchRun:
    """One patched run: for each hook name, a function that edits that activation's rows of this run."""

    edits: dict[str, Callable[[torch.Tensor], torch.Tensor | None]]


def repeat_batch(x: Any, n: int) -> Any:
    """Stack ``n`` copies of a model input along the batch axis (tensors, or a dict of them)."""
    if isinstance(x, torch.Tensor):
        x = x if x.ndim > 1 or x.is_floating_point() else x[None]
        return x.repeat(n, *([1] * (x.ndim - 1)))
    if isinstance(x, dict):
        return {k: repeat_batch(v, n) if isinstance(v, torch.Tensor) else v for k, v in x.items()}
    raise TypeError(f"model input must be a tensor or a dict of keyword tensors, got {type(x).__name__}")


def call_model(model: Any, inputs: Any, **kwargs: Any) -> Any:
    return model(**inputs, **kwargs) if isinstance(inputs, dict) else model(inputs, **kwargs)


def output_logits(out: Any) -> torch.Tensor:
    """The logits of a model output (a tensor, or an HF output with ``.logits``)."""
    if isinstance(out, torch.Tensor):
        return out
    logits = getattr(out, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise TypeError(f"cannot find logits in the model output ({type(out).__name__}); the metric needs them")


def batch_size_of(inputs: Any) -> int:
    if isinstance(inputs, dict):
        first = next(v for v in inputs.values() if isinstance(v, torch.Tensor))
        return first.shape[0]
    return 1 if inputs.ndim == 1 and not inputs.is_floating_point() else inputs.shape[0]


def block_of(name: str) -> int | None:
    """The decoder block a hook name fires in (``blocks.{i}.``), or None."""
    m = _BLOCK.match(name)
    return int(m.group(1)) if m else None


def check_names(model: Any, names: Sequence[str]) -> None:
    for name in names:
        if name not in model.hook_dict:
            raise KeyError(model.unknown_name_message(name))


class PatchRunner:
    """Runs lists of :class:`PatchRun` on one corrupted input, in chunks, returning each run's metric.

    Args:
        model: any hookscope model (native or wrapped).
        inputs: the corrupted input (token ids ``[batch, pos]``, or a dict of keyword tensors).
        metric: ``logits [batch, ...] -> scalar`` applied to each run's own rows.
        batch_size: runs per forward (None: as many as ``memory_budget`` allows).
        memory_budget: bytes of activations a chunk may hold (estimated from one corrupted forward).
        logits_to_keep: native decoders only: unembed just the last this many positions (the metric then
            sees ``[batch, logits_to_keep, d_vocab]``); for metrics that read only the final positions this
            saves the unembedding of every other position in every patched run.
    """

    def __init__(
        self, model: Any, inputs: Any, metric: Callable[[torch.Tensor], Any], *, batch_size: int | None = None,
        memory_budget: int = DEFAULT_MEMORY_BUDGET, logits_to_keep: int | None = None,
    ) -> None:
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be a positive number of patched runs per forward, got {batch_size}")
        self.model, self.inputs, self.metric = model, inputs, metric
        self.kwargs: dict[str, Any] = {}
        if logits_to_keep is not None:
            if not isinstance(model, Decoder):
                raise ValueError(f"logits_to_keep needs a native decoder, not {type(model).__name__}")
            self.kwargs["logits_to_keep"] = logits_to_keep
        self.b = batch_size_of(inputs)
        self.skip = isinstance(model, Decoder) and isinstance(inputs, torch.Tensor)
        with torch.no_grad():
            if self.skip:  # the corrupted residual stream entering each block: chunks start from it
                names = [f"blocks.{i}.hook_resid_pre" for i in range(len(model.blocks))]
                out, cache = model.run_with_cache(inputs, names_filter=names, **self.kwargs)
                self.resid = [cache[n] for n in names]
            else:
                out = call_model(model, inputs, **self.kwargs)
        logits = output_logits(out)
        per_run = 4 * logits.numel() * logits.element_size() + self._resid_bytes(logits)
        self.chunk = batch_size or max(1, min(256, memory_budget // max(per_run, 1)))

    def _resid_bytes(self, logits: torch.Tensor) -> int:
        """Rough bytes one run's forward holds besides its logits: a few dozen residual-sized tensors (no
        grad, so one block's intermediates at a time), plus the patched activation copies."""
        d_model = getattr(getattr(self.model, "cfg", None), "d_model", 1024)
        tokens = isinstance(self.inputs, torch.Tensor) and not self.inputs.is_floating_point()
        n_pos = self.inputs.shape[-1] if tokens else logits.shape[1]  # logits may be cut by logits_to_keep
        return 32 * self.b * n_pos * d_model * logits.element_size()

    def run(self, runs: Sequence[PatchRun]) -> list[float]:
        """Each run's metric, in order."""
        results: list[float] = [0.0] * len(runs)
        order = sorted(range(len(runs)), key=lambda i: self._first_block(runs[i]))  # chunks start late
        with torch.no_grad():
            for start in range(0, len(order), self.chunk):
                ids = order[start:start + self.chunk]
                for i, value in zip(ids, self._run_chunk([runs[i] for i in ids]), strict=True):
                    results[i] = value
        return results

    def _first_block(self, run: PatchRun) -> int:
        blocks = [block_of(name) for name in run.edits]
        return min((b if b is not None else -1) for b in blocks) if blocks else 10**9

    def capture(self, runs: Sequence[PatchRun], names: Sequence[str]) -> list[dict[str, torch.Tensor]]:
        """Each patched run's activations at ``names`` (``[batch, ...]`` each); the forward stops once all fired."""
        results: list[dict[str, torch.Tensor]] = [{} for _ in runs]
        with torch.no_grad():
            for start in range(0, len(runs), self.chunk):
                ids = list(range(start, min(start + self.chunk, len(runs))))
                for i, got in zip(ids, self._run_chunk([runs[i] for i in ids], names), strict=True):
                    results[i] = got
        return results

    def _run_chunk(self, chunk: list[PatchRun], capture: Sequence[str] = ()) -> list[Any]:
        n, b = len(chunk), self.b
        by_name: dict[str, list[tuple[int, Callable]]] = {}
        for i, run in enumerate(chunk):
            for name, edit in run.edits.items():
                by_name.setdefault(name, []).append((i, edit))
        hooks = [(name, _batched_hook(edits, n, b)) for name, edits in by_name.items()]
        seen: dict[str, torch.Tensor] = {}
        if capture:
            hooks += [(name, _capture_hook(seen, capture)) for name in capture]
        start = min((self._first_block(r) for r in chunk), default=-1)
        with self.model.hooks(hooks):
            try:
                if self.skip and 0 <= start < len(self.resid):
                    out = self.model(repeat_batch(self.resid[start], n), start_at_layer=start, **self.kwargs)
                else:
                    out = call_model(self.model, repeat_batch(self.inputs, n), **self.kwargs)
            except StopForward:
                out = None
        if capture:
            missing = [c for c in capture if c not in seen]
            if missing:
                raise RuntimeError(f"hooks {missing} never fired during the patched forward")
            return [{k: v.reshape(n, b, *v.shape[1:])[i] for k, v in seen.items()} for i in range(n)]
        logits = output_logits(out)
        logits = logits.reshape(n, b, *logits.shape[1:])
        return [float(self.metric(logits[i])) for i in range(n)]


def _capture_hook(seen: dict[str, torch.Tensor], wanted: Sequence[str]) -> Callable:
    def hook(act: torch.Tensor, hook: Any) -> None:
        seen[hook.name] = act.detach().clone()
        if all(w in seen for w in wanted):
            raise StopForward  # nothing after the last captured activation is needed

    return hook


def _batched_hook(edits: list[tuple[int, Callable]], n: int, b: int) -> Callable:
    def hook(act: torch.Tensor, hook: Any) -> torch.Tensor:
        if act.shape[0] != n * b:
            raise ValueError(f"{hook.name}: batch {act.shape[0]} is not {n} runs x {b} rows")
        act = act.clone(memory_format=torch.contiguous_format)
        runs = act.view(n, b, *act.shape[1:])
        for i, edit in edits:
            piece = runs[i]
            new = edit(piece)
            if new is not None and new is not piece:
                runs[i] = new
        return act

    return hook
