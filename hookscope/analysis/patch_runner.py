"""The batched engine under activation and path patching: many patched runs share one forward batch.

A patched run is the corrupted input with a few activations replaced. ``n`` runs are stacked along the batch
axis (run ``i`` owns rows ``i*b .. (i+1)*b - 1``); one hook per hook name edits only the rows of the runs that
patch there, so runs patching different layers share a batch. On a native decoder a run equals the corrupted
run before the first block it patches, so the batch grows block by block: each run joins it there, from the
cached corrupted residual stream, instead of recomputing the blocks before; and, the model being causal, a
run's logits before the first position its edits change are the corrupted run's, so only later positions are
unembedded (each edit is applied once to a copy of the corrupted activation to find that position). When the
metric reads an intermediate activation (``metric_hook``), every forward stops once it has fired."""

from __future__ import annotations

import bisect
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from hookscope.hooks import StopForward
from hookscope.models.decoder import Decoder
from hookscope.names import position_axis

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
        metric: ``logits [batch, ...] -> scalar`` applied to each run's own rows (with ``metric_hook``: the
            activation there, or a dict name -> activation for several names).
        batch_size: runs per forward (None: as many as ``memory_budget`` allows).
        memory_budget: bytes of activations a chunk may hold (estimated from one corrupted forward).
        logits_to_keep: native decoders only: unembed just the last this many positions (the metric then
            sees ``[batch, logits_to_keep, d_vocab]``); for metrics that read only the final positions this
            saves the unembedding of every other position in every patched run.
        metric_hook: hook name(s) whose activations the metric reads instead of the logits: every forward
            stops once they have fired, and runs that patch only blocks after them are not run at all (they
            cannot change what the metric reads, so they get the corrupted run's metric).
    """

    def __init__(
        self, model: Any, inputs: Any, metric: Callable[[Any], Any], *, batch_size: int | None = None,
        memory_budget: int = DEFAULT_MEMORY_BUDGET, logits_to_keep: int | None = None,
        metric_hook: str | Sequence[str] | None = None,
    ) -> None:
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be a positive number of patched runs per forward, got {batch_size}")
        self.model, self.inputs, self.metric = model, inputs, metric
        self.kwargs: dict[str, Any] = {}
        if logits_to_keep is not None:
            if not isinstance(model, Decoder):
                raise ValueError(f"logits_to_keep needs a native decoder, not {type(model).__name__}")
            if metric_hook is not None:
                raise ValueError("logits_to_keep cuts the logits, but with metric_hook= the metric reads no logits")
            self.kwargs["logits_to_keep"] = logits_to_keep
        self.metric_names = [metric_hook] if isinstance(metric_hook, str) else list(metric_hook or ())
        if metric_hook is not None and not self.metric_names:
            raise ValueError("metric_hook must name at least one hook")
        check_names(model, self.metric_names)
        blocks = [block_of(n) for n in self.metric_names]
        self.last_block = max(blocks) if blocks and None not in blocks else None  # of the metric's reads
        self.b = batch_size_of(inputs)
        # native decoders on token ids start each chunk late (below); not when the metric reads a hook outside
        # the blocks (``hook_embed``, ``ln_final.*``), whose order relative to a block the names do not tell
        self.skip = (isinstance(model, Decoder) and isinstance(inputs, torch.Tensor) and not inputs.is_floating_point()
                     and (self.last_block is not None or not self.metric_names))
        with torch.no_grad():
            out = self._reference_run()
        self.baseline = float(self._metrics(out, 1)[0])  # an unpatched run's metric
        out_bytes = sum(t.numel() * t.element_size() for t in (out.values() if isinstance(out, dict) else [out]))
        per_run = 4 * out_bytes + self._resid_bytes()
        self.chunk = batch_size or max(1, min(256, memory_budget // max(per_run, 1)))

    def _reference_run(self) -> Any:
        """The corrupted forward: its residual stream entering each block (native decoders; chunks start from
        it) and what the metric reads (logits, or the ``metric_hook`` activations)."""
        names = [f"blocks.{i}.hook_resid_pre" for i in range(len(self.model.blocks))] if self.skip else []
        if self.last_block is not None:
            names = names[:self.last_block + 1]
        seen: dict[str, torch.Tensor] = {}
        hooks = [(n, _store_hook(seen)) for n in names] + [(n, _capture_hook(seen, self.metric_names))
                                                           for n in self.metric_names]
        with self.model.hooks(hooks):
            try:
                out = output_logits(call_model(self.model, self.inputs, **self.kwargs))
            except StopForward:
                out = None
        self.resid = [seen[n] for n in names]
        self.reference = {n: seen[n] for n in self.metric_names if n in seen}
        self.ref_acts = dict(zip(names, self.resid, strict=True))  # corrupted activations by name (grows lazily)
        self.logits = out if not self.metric_names and not self.kwargs else None  # for the causal prefix
        if not self.metric_names:
            return out
        missing = [n for n in self.metric_names if n not in seen]
        if missing:
            raise RuntimeError(f"metric_hook {missing} never fired during the corrupted forward")
        return seen[self.metric_names[0]] if len(self.metric_names) == 1 else {n: seen[n] for n in self.metric_names}

    def _resid_bytes(self) -> int:
        """Rough bytes one run's forward holds besides its output: a few dozen residual-sized tensors (no
        grad, so one block's intermediates at a time), plus the patched activation copies."""
        d_model = getattr(getattr(self.model, "cfg", None), "d_model", 1024)
        tokens = isinstance(self.inputs, torch.Tensor) and not self.inputs.is_floating_point()
        n_pos = self.inputs.shape[-1] if tokens else 256
        p = next(self.model.parameters(), None)
        return 32 * self.b * n_pos * d_model * (p.element_size() if p is not None else 4)

    def run(self, runs: Sequence[PatchRun]) -> list[float]:
        """Each run's metric, in order."""
        results: list[float] = [self.baseline] * len(runs)
        last = self.last_block
        # runs that patch nothing, or only blocks after the last one the metric reads: the corrupted metric
        todo = [i for i in range(len(runs)) if runs[i].edits and (last is None or self._first_block(runs[i]) <= last)]
        order = sorted(todo, key=lambda i: self._first_block(runs[i]))  # chunks start late
        with torch.no_grad():
            for start in range(0, len(order), self.chunk):
                ids = order[start:start + self.chunk]
                for i, value in zip(ids, self._run_chunk([runs[i] for i in ids]), strict=True):
                    results[i] = value
        return results

    def _first_block(self, run: PatchRun) -> int:
        blocks = [block_of(name) for name in run.edits]
        return min((b if b is not None else -1) for b in blocks) if blocks else 10**9

    def _run_chunk(self, chunk: list[PatchRun]) -> list[float]:
        """The metric of each run of a chunk sorted by first patched block."""
        n = len(chunk)
        seen: dict[str, torch.Tensor] = {}
        hooks = self._edit_hooks(chunk) + [(m, _capture_hook(seen, self.metric_names)) for m in self.metric_names]
        starts = [self._first_block(r) for r in chunk]
        growing = self.skip and starts[0] >= 0
        firsts = self._first_positions(chunk) if growing and self.logits is not None else None
        with self.model.hooks(hooks):
            try:
                if growing:
                    out = self._growing_forward(starts, firsts)
                else:
                    out = output_logits(call_model(self.model, repeat_batch(self.inputs, n), **self.kwargs))
            except StopForward:
                out = None
        if self.metric_names:
            missing = [m for m in self.metric_names if m not in seen]
            if missing:
                raise RuntimeError(f"metric_hook {missing} never fired during the patched forward")
            for m, act in seen.items():  # runs that joined after this hook fired read the corrupted value there
                if act.shape[0] < n * self.b:
                    seen[m] = torch.cat([act, repeat_batch(self.reference[m], n - act.shape[0] // self.b)])
            out = seen[self.metric_names[0]] if len(self.metric_names) == 1 else seen
        return self._metrics(out, n)

    def _metrics(self, out: Any, n: int) -> list[float]:
        """The metric of each of ``n`` runs stacked in ``out`` (a tensor, or a dict of tensors)."""
        if isinstance(out, dict):
            split = {k: v.reshape(n, self.b, *v.shape[1:]) for k, v in out.items()}
            return [float(self.metric({k: v[i] for k, v in split.items()})) for i in range(n)]
        split = out.reshape(n, self.b, *out.shape[1:])
        return [float(self.metric(split[i])) for i in range(n)]

    def _growing_forward(self, starts: list[int], firsts: list[int] | None) -> torch.Tensor:
        """Native decoders, block by block: each run joins the batch (from the cached corrupted residual
        stream) at the first block it patches, so no block runs for a run that does not differ there yet.
        ``starts`` is sorted; the rows of run ``i`` stay ``i*b .. (i+1)*b - 1``. With ``firsts`` (each run's
        first changed position) only later positions are unembedded (:meth:`_prefix_head`)."""
        x, joined, n_blocks = None, 0, len(self.model.blocks)
        for layer in range(starts[0], n_blocks):
            k = bisect.bisect_right(starts, layer)  # runs patching at or before this block
            if k > joined:
                new = repeat_batch(self.resid[layer], k - joined)
                x, joined = (new if x is None else torch.cat([x, new])), k
            x = self.model(x, start_at_layer=layer, stop_at_layer=layer + 1)
        if firsts is not None:
            return self._prefix_head(x, firsts)
        return output_logits(self.model(x, start_at_layer=n_blocks, **self.kwargs))

    def _first_positions(self, chunk: list[PatchRun]) -> list[int]:
        """Each run's first position that any of its edits changes, found by applying the edits to the
        corrupted activations. A decoder is causal: every earlier position, in every later activation and in
        the logits, then equals the corrupted run's. 0 where the position axis is unknown."""
        n_pos = self.inputs.shape[-1]
        refs = self._reference_acts({name for run in chunk for name in run.edits})
        firsts = []
        for run in chunk:
            first = n_pos
            for name, edit in run.edits.items():
                ref = refs.get(name)
                axis = None if ref is None else position_axis(name, ref.ndim)
                if axis is None:
                    first = 0
                    break
                piece = ref.clone()
                new = edit(piece)
                new = piece if new is None else new
                if not isinstance(new, torch.Tensor) or new.shape != ref.shape:
                    first = 0  # the patched run itself will report the bad edit
                    break
                changed = (new != ref).movedim(axis, 0).flatten(1).any(1).nonzero()  # [positions changed, 1]
                first = min(first, int(changed[0, 0]) if len(changed) else n_pos)
            firsts.append(first)
        return firsts

    def _reference_acts(self, names: set[str]) -> dict[str, torch.Tensor]:
        """The corrupted run's activations at ``names`` (one more corrupted forward for names not yet seen)."""
        missing = sorted(n for n in names if n not in self.ref_acts)
        if missing:
            seen: dict[str, torch.Tensor] = {}
            with self.model.hooks([(n, _capture_hook(seen, missing)) for n in missing]):
                try:
                    call_model(self.model, self.inputs)
                except StopForward:
                    pass
            self.ref_acts.update(seen)
        return self.ref_acts

    def _prefix_head(self, x: torch.Tensor, firsts: list[int]) -> torch.Tensor:
        """Logits ``[n*b, pos, d_vocab]`` of the final residual ``x``: the corrupted run's logits before each
        run's first changed position (equal there, the model being causal), the unembedding of ``x`` after."""
        n_pos = x.shape[1]
        logits = self.logits.repeat(len(firsts), *([1] * (self.logits.ndim - 1)))
        first = torch.tensor(firsts, device=x.device).repeat_interleave(self.b)  # [n*b]
        fresh = torch.arange(n_pos, device=x.device)[None, :] >= first[:, None]  # [n*b, pos]
        if bool(fresh.any()):  # every fresh position as its own one-position sequence: the head is per position
            logits[fresh] = output_logits(self.model(x[fresh][:, None], start_at_layer=len(self.model.blocks)))[:, 0]
        return logits

    def _edit_hooks(self, chunk: list[PatchRun]) -> list[tuple[str, Callable]]:
        by_name: dict[str, list[tuple[int, Callable]]] = {}
        for i, run in enumerate(chunk):
            for name, edit in run.edits.items():
                by_name.setdefault(name, []).append((i, edit))
        return [(name, _batched_hook(edits, self.b)) for name, edits in by_name.items()]

    def capture(self, runs: Sequence[PatchRun], names: Sequence[str]) -> list[dict[str, torch.Tensor]]:
        """Each patched run's activations at ``names`` (``[batch, ...]`` each); the forward stops once all fired."""
        results: list[dict[str, torch.Tensor]] = [{} for _ in runs]
        with torch.no_grad():
            for start in range(0, len(runs), self.chunk):
                ids = list(range(start, min(start + self.chunk, len(runs))))
                for i, got in zip(ids, self._capture_chunk([runs[i] for i in ids], names), strict=True):
                    results[i] = got
        return results

    def _capture_chunk(self, chunk: list[PatchRun], capture: Sequence[str]) -> list[dict[str, torch.Tensor]]:
        n, b = len(chunk), self.b
        seen: dict[str, torch.Tensor] = {}
        hooks = self._edit_hooks(chunk) + [(name, _capture_hook(seen, capture)) for name in capture]
        start = min(self._first_block(r) for r in chunk)
        with self.model.hooks(hooks):
            try:
                if self.skip and 0 <= start < len(self.resid):
                    self.model(repeat_batch(self.resid[start], n), start_at_layer=start, **self.kwargs)
                else:
                    call_model(self.model, repeat_batch(self.inputs, n), **self.kwargs)
            except StopForward:
                pass
        missing = [c for c in capture if c not in seen]
        if missing:
            raise RuntimeError(f"hooks {missing} never fired during the patched forward")
        return [{k: v.reshape(n, b, *v.shape[1:])[i] for k, v in seen.items()} for i in range(n)]


def _store_hook(seen: dict[str, torch.Tensor]) -> Callable:
    def hook(act: torch.Tensor, hook: Any) -> None:
        seen[hook.name] = act.detach()

    return hook


def _capture_hook(seen: dict[str, torch.Tensor], wanted: Sequence[str]) -> Callable:
    def hook(act: torch.Tensor, hook: Any) -> None:
        seen[hook.name] = act.detach().clone()
        if all(w in seen for w in wanted):
            raise StopForward  # nothing after the last captured activation is needed

    return hook


def _batched_hook(edits: list[tuple[int, Callable]], b: int) -> Callable:
    def hook(act: torch.Tensor, hook: Any) -> torch.Tensor:
        n = act.shape[0] // b
        if act.shape[0] != n * b or any(i >= n for i, _ in edits):
            raise ValueError(f"{hook.name}: batch {act.shape[0]} does not hold the patched runs' rows ({b} each)")
        act = act.clone(memory_format=torch.contiguous_format)
        runs = act.view(n, b, *act.shape[1:])
        for i, edit in edits:
            piece = runs[i]
            new = edit(piece)
            if new is not None and new is not piece:
                runs[i] = new
        return act

    return hook
