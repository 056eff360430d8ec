"""Harvesting activations at one hook of any hooked model, and a shuffling store that serves them in batches.

The forward of every batch stops as soon as the hook has fired (a :class:`~hookscope.hooks.StopForward`
raised by the capturing hook), so later layers never run, for native and ``wrap()``-ed models alike.
Under ``torchrun`` each process harvests every ``world_size``-th batch; the batches are formed before they
are shared out, so the result (gathered in batch order) equals a one-process harvest bit for bit.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from hookscope.hooks import HookedModule, StopForward

RunFn = Callable[[HookedModule, Any], Any]
SelectFn = Callable[[torch.Tensor, Any], torch.Tensor]
MANIFEST = "manifest.json"


def pack_text(model: Any, texts: Sequence[str], context_size: int, prepend_bos: bool = True) -> torch.Tensor:
    """Tokenise ``texts`` and pack them into rows of ``context_size`` tokens ``[n_rows, context_size]``.

    Texts are joined with the tokenizer's EOS (or BOS) between them; each row starts with BOS when
    ``prepend_bos`` (as SAELens packs), the ragged tail is dropped.
    """
    tok = getattr(model, "tokenizer", None)
    if tok is None:
        raise ValueError("pack_text needs a model with a tokenizer (or pass token ids yourself)")
    if context_size < 2:
        raise ValueError(f"context_size must be >= 2, got {context_size}")
    sep = tok.eos_token_id if tok.eos_token_id is not None else tok.bos_token_id
    bos = tok.bos_token_id if prepend_bos and tok.bos_token_id is not None else None
    stream: list[int] = []
    for text in texts:
        if not isinstance(text, str):
            raise TypeError(f"pack_text takes strings; got a {type(text).__name__}")
        stream.extend(tok(text, add_special_tokens=False)["input_ids"])
        if sep is not None:
            stream.append(sep)
    body = context_size - (bos is not None)
    n_rows = len(stream) // body
    if n_rows == 0:
        raise ValueError(f"{len(stream)} tokens are fewer than one row of {context_size}")
    rows = torch.tensor(stream[: n_rows * body], dtype=torch.long).view(n_rows, body)
    if bos is not None:
        rows = torch.cat([torch.full((n_rows, 1), bos, dtype=torch.long), rows], dim=1)
    return rows


def _batches(data: Any, batch_size: int) -> list[Any]:
    """A tensor is cut into batches along axis 0; any other iterable is taken as a list of batches."""
    if isinstance(data, torch.Tensor):
        if data.ndim == 0 or len(data) == 0:
            raise ValueError("harvesting needs a non-empty batch of inputs")
        return list(data.split(batch_size))
    if isinstance(data, (str, bytes)):
        raise TypeError("pass a list of batches (or a tensor of inputs), not a single string")
    batches = list(data)
    if not batches:
        raise ValueError("harvesting needs at least one batch of inputs")
    return batches


def _default_run(model: HookedModule, batch: Any) -> Any:
    if isinstance(batch, dict):
        return model(**batch)
    if isinstance(batch, tuple):
        return model(*batch)
    return model(batch)


def runner_for(model: HookedModule, hook_name: str) -> RunFn:
    """How to run a batch: an encoder hook of an encoder-decoder (``model.encode``) runs the encoder alone."""
    if hook_name.startswith("encoder") and callable(getattr(model, "encode", None)):
        return lambda m, batch: m.encode(*batch) if isinstance(batch, tuple) else m.encode(batch)  # type: ignore[attr-defined]
    return _default_run


def activations_at(
    model: HookedModule, hook_name: str, batch: Any, run: RunFn | None = None, select: SelectFn | None = None,
    skip_first_positions: int = 0, head_index: int | None = None,
) -> torch.Tensor:
    """The activation rows ``[n, d]`` of one batch at ``hook_name`` (the forward stops after the hook).

    Args:
        run: how to call the model on a batch (default: ``model(batch)``; for ``encoder.*`` hooks of a
            model with an ``encode`` method, ``model.encode(batch)``, so Whisper needs no decoder tokens).
        select: turns the raw activation (e.g. ``[batch, pos, d_model]``) and the batch into rows;
            default: every position, after dropping the first ``skip_first_positions``.
        head_index: of a ``[batch, pos, head_index, d_head]`` activation (``hook_z``), keep only this
            head's ``[..., d_head]`` (a single-head SAE's input); by default the heads are concatenated.
    """
    if hook_name not in model.hook_dict:
        raise KeyError(model.unknown_name_message(hook_name))
    seen: list[torch.Tensor] = []

    def capture(x: torch.Tensor, hook: Any) -> None:
        seen.append(x.detach())
        raise StopForward

    with model.hooks(fwd_hooks=[(hook_name, capture)]), torch.no_grad():
        try:
            (run or runner_for(model, hook_name))(model, batch)
        except StopForward:
            pass
    if not seen:
        raise RuntimeError(f"the forward finished without reaching {hook_name!r}")
    act = seen[0]
    if head_index is not None:
        if act.ndim != 4 or not 0 <= head_index < act.shape[2]:
            raise ValueError(
                f"head_index={head_index} needs a [batch, pos, head_index, d_head] activation with that head; "
                f"{hook_name!r} gives shape {tuple(act.shape)}"
            )
        act = act[:, :, head_index]  # [batch, pos, d_head]
    if select is not None:
        rows = select(act, batch)
    else:
        if act.ndim >= 3 and skip_first_positions:
            act = act[:, skip_first_positions:]
        if act.ndim == 4:  # [batch, pos, head_index, d_head] -> heads concatenated
            act = act.flatten(-2)
        rows = act.reshape(-1, act.shape[-1])
    return rows


def _dist() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def harvest(
    model: HookedModule, hook_name: str, data: Any, *, batch_size: int = 8, dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu", shard_dir: str | Path | None = None, progress: bool = True,
    run: RunFn | None = None, select: SelectFn | None = None, skip_first_positions: int = 0,
    head_index: int | None = None,
) -> torch.Tensor:
    """All activation rows ``[n, d]`` of ``data`` at ``hook_name``, in data order.

    Args:
        data: a tensor of inputs (cut into ``batch_size`` batches), or an iterable of ready batches.
        dtype / device: of the returned rows (and of the shards).
        shard_dir: write one safetensors shard per batch here, plus a manifest; a later call with the
            same folder, hook and batch count reads the shards instead of running the model.
        progress: show a progress bar (rank 0 only).
        run / select / skip_first_positions / head_index: see :func:`activations_at`.
    """
    batches = _batches(data, batch_size)
    rank, world = _dist()
    folder = Path(shard_dir) if shard_dir is not None else None
    if folder is not None and _manifest_matches(folder, hook_name, len(batches), head_index):
        return read_shards(folder).to(device=device, dtype=dtype)
    mine: dict[int, torch.Tensor] = {}
    for i in tqdm(range(rank, len(batches), world), disable=not progress or rank != 0, desc=f"harvest {hook_name}"):
        rows = activations_at(model, hook_name, batches[i], run, select, skip_first_positions, head_index).to(dtype)
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)
            save_file({"activations": rows.contiguous().cpu()}, str(folder / f"batch_{i:06d}.safetensors"))
        mine[i] = rows.cpu()
    if world > 1:
        gathered: list[Any] = [None] * world
        torch.distributed.all_gather_object(gathered, mine)
        for part in gathered:
            mine.update(part)
    if folder is not None and rank == 0:
        manifest = {"hook_name": hook_name, "n_batches": len(batches), "head_index": head_index}
        (folder / MANIFEST).write_text(json.dumps(manifest))
    if world > 1:
        torch.distributed.barrier()
    return torch.cat([mine[i] for i in range(len(batches))]).to(device=device, dtype=dtype)


def _manifest_matches(folder: Path, hook_name: str, n_batches: int, head_index: int | None) -> bool:
    path = folder / MANIFEST
    if not path.is_file():
        return False
    meta = json.loads(path.read_text())
    return (meta.get("hook_name") == hook_name and meta.get("n_batches") == n_batches
            and meta.get("head_index") == head_index)


def read_shards(folder: str | Path) -> torch.Tensor:
    """The rows of every shard in ``folder`` (memory-mapped safetensors), in batch order."""
    paths = sorted(Path(folder).glob("batch_*.safetensors"))
    if not paths:
        raise FileNotFoundError(f"no activation shards (batch_*.safetensors) in {folder}")
    parts = []
    for path in paths:
        with safe_open(str(path), framework="pt") as f:
            parts.append(f.get_tensor("activations"))
    return torch.cat(parts)


class ActivationStore:
    """Shuffled batches of activation rows from a stream of chunks, through a mixing buffer.

    The buffer holds up to ``buffer_size`` rows; when full it is shuffled and its first half is served in
    batches, so rows from different inputs (and positions) mix, without holding the whole data set.

    Args:
        chunks: an iterable of row tensors ``[n, d]`` (a harvested tensor counts as one chunk).
        batch_size: rows per served batch.
        buffer_size: rows the mixing buffer holds (>= 2 * batch_size).
        seed: of the shuffle.
        loop: start the stream again when it ends (the chunks must be re-iterable).
    """

    def __init__(
        self, chunks: Iterable[torch.Tensor] | torch.Tensor, batch_size: int, buffer_size: int = 65536,
        seed: int = 0, loop: bool = True,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.chunks = [chunks] if isinstance(chunks, torch.Tensor) else chunks
        self.batch_size = batch_size
        self.buffer_size = max(buffer_size, 2 * batch_size)
        self.gen = torch.Generator().manual_seed(seed)
        self.loop = loop

    def _rows(self) -> Iterator[torch.Tensor]:
        while True:
            produced = False
            for chunk in self.chunks:
                produced = produced or len(chunk) > 0
                yield chunk
            if not (self.loop and produced):
                return

    def __iter__(self) -> Iterator[torch.Tensor]:
        buffer: torch.Tensor | None = None
        for chunk in self._rows():
            buffer = chunk if buffer is None else torch.cat([buffer, chunk])
            while len(buffer) >= self.buffer_size:
                buffer = buffer[torch.randperm(len(buffer), generator=self.gen)]
                half = (self.buffer_size // 2 // self.batch_size) * self.batch_size
                out, buffer = buffer[:half], buffer[half:]
                yield from out.split(self.batch_size)
        if buffer is not None and len(buffer):
            buffer = buffer[torch.randperm(len(buffer), generator=self.gen)]
            yield from buffer.split(self.batch_size)
