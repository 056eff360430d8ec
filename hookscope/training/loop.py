"""``train(model, data, config)``: AdamW, warm-up + cosine, clipping, accumulation, eval, checkpoints, DDP.

The loss is the sum of token losses over the global batch divided by the number of scored tokens, whatever
the split into processes and micro-batches, so 2 processes give the same loss (and update) as one.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from hookscope.extensions import implementation
from hookscope.models.lm_loss import IGNORE_INDEX
from hookscope.training.checkpoint import (
    checkpoint_dir,
    config_changes,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from hookscope.training.config import TrainingConfig
from hookscope.training.data import CausalLMCollator, batch_indices, token_rows
from hookscope.training.distributed import World, join_world, no_sync, wrap_for_world

logger = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """What a run logged: one entry per step (``step``, ``loss``, ``lr``, ``tokens``, ``tokens_per_s``, and
    ``eval_loss`` where evaluated), plus the n-gram ``baselines`` given to :func:`train`."""

    log: list[dict] = field(default_factory=list)
    baselines: dict[str, float] = field(default_factory=dict)
    out_dir: str | None = None

    @property
    def losses(self) -> list[float]:
        return [entry["loss"] for entry in self.log]

    @property
    def eval_losses(self) -> list[tuple[int, float]]:
        return [(e["step"], e["eval_loss"]) for e in self.log if "eval_loss" in e]

    def plot(self, path: str | Path | None = None) -> Any:
        """The loss curve with its baselines (a matplotlib figure; saved as PNG when ``path`` is given)."""
        return implementation("plot_loss_curve")(self.log, self.baselines, path)


def lr_factor(step: int, config: TrainingConfig) -> float:
    """Multiplier of ``config.lr`` for the update of step ``step`` (0-based): linear warm-up, then cosine."""
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    cosine = 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
    return config.min_lr_ratio + (1.0 - config.min_lr_ratio) * cosine


def _optimizer(model: torch.nn.Module, config: TrainingConfig) -> torch.optim.AdamW:
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters")
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": config.weight_decay},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=config.lr, betas=config.betas, eps=config.adam_eps)


def logits_of(output: Any) -> torch.Tensor:
    """The logits in a model's output: a tensor, an object with ``.logits`` or a tuple starting with them."""
    if isinstance(output, torch.Tensor):
        return output
    logits = getattr(output, "logits", None)
    if logits is None and isinstance(output, (tuple, list)) and output:
        logits = output[0]
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"the model returned {type(output).__name__}; train() needs logits (a tensor, or an "
                        "output with .logits)")
    return logits


def token_loss_sum(model: Any, batch: dict[str, torch.Tensor], bf16: bool) -> torch.Tensor:
    """Summed cross-entropy of the scored targets (``-100`` ignored), in float32 (float64 for float64 models)."""
    device_type = batch["input_ids"].device.type
    with torch.autocast(device_type, dtype=torch.bfloat16, enabled=bf16):
        logits = logits_of(model(batch["input_ids"]))  # [batch, pos, d_vocab]
    targets = batch["targets"]
    logits = logits if logits.dtype == torch.float64 else logits.float()  # half precisions: loss in float32
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX, reduction="sum")


@torch.no_grad()
def evaluate(model: Any, rows: Any, config: TrainingConfig, collator: Any = None) -> float:
    """Mean token loss over token ``rows`` (anything :func:`train` takes as data); a fixed generator for
    masked-LM corruption, next-token prediction when no ``collator`` is given."""
    rows, collator = token_rows(rows), collator or CausalLMCollator()
    was_training = model.training
    model.eval()
    total, count = torch.zeros((), dtype=torch.float64), 0
    gen = torch.Generator().manual_seed(config.seed)
    device = next(model.parameters()).device
    for start in range(0, len(rows), config.eval_batch_size):
        part = _collate(collator, rows[start:start + config.eval_batch_size], gen)
        batch = {k: v.to(device) for k, v in part.items()}
        total += token_loss_sum(model, batch, config.bf16).double().cpu()
        count += int((batch["targets"] != IGNORE_INDEX).sum())
    model.train(was_training)
    return float(total / count) if count else float("nan")  # nothing scored: no loss to report


def _collate(collator: Any, rows: torch.Tensor, generator: torch.Generator) -> dict[str, torch.Tensor]:
    batch = collator(rows, generator)
    if not isinstance(batch, dict) or not {"input_ids", "targets"} <= batch.keys():
        got = sorted(batch) if isinstance(batch, dict) else type(batch).__name__
        raise TypeError(f"the collator must return a dict with 'input_ids' and 'targets' tensors, got {got}")
    return batch


def _step_generator(config: TrainingConfig, step: int) -> torch.Generator:
    return torch.Generator().manual_seed((config.seed * 2_654_435_761 + step) % (2**63))


def _train_step(
    model: Any, rows: torch.Tensor, step: int, config: TrainingConfig, collator: Any, world: World,
    device: torch.device,
) -> tuple[torch.Tensor, int]:
    """Forward and backward of one global batch (this process's share); returns (loss sum, scored tokens)."""
    global_rows = rows[batch_indices(len(rows), step, config.batch_size, config.seed)]
    batch = _collate(collator, global_rows, _step_generator(config, step))  # the same on every process
    n_scored = int((batch["targets"] != IGNORE_INDEX).sum())
    share = config.batch_size // world.size
    micro = share // config.grad_accum_steps
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    for k in range(config.grad_accum_steps):
        lo = world.rank * share + k * micro
        part = {name: t[lo:lo + micro].to(device) for name, t in batch.items()}
        with no_sync(model, skip=k < config.grad_accum_steps - 1):
            local = token_loss_sum(model, part, config.bf16)
            # DDP averages gradients over processes: scale so the result is d(sum / n_scored)
            (local * world.size / max(n_scored, 1)).backward()
        loss_sum += local.detach()
    return loss_sum, n_scored


def _check_world(config: TrainingConfig, world: World) -> None:
    if config.batch_size % (world.size * config.grad_accum_steps):
        raise ValueError(f"batch_size ({config.batch_size}) must divide into {world.size} processes x "
                         f"{config.grad_accum_steps} accumulation steps")


def _resume(config: TrainingConfig, model: torch.nn.Module, optimizer: Any, scheduler: Any) -> tuple[int, list]:
    if config.out_dir is None or not config.resume:
        return 0, []
    path = latest_checkpoint(config.out_dir)
    if path is None:
        return 0, []
    changed = config_changes(path, config.to_dict())
    if changed:
        logger.warning("resuming %s under other settings (%s): the run will not be the one it continues",
                       path, "; ".join(changed))
    step, log = load_checkpoint(path, model, optimizer, scheduler)
    logger.info("resumed from %s at step %d", path, step)
    return step, log


def train(
    model: torch.nn.Module, data: Any, config: TrainingConfig, *, eval_data: Any = None, collator: Any = None,
    baselines: dict[str, float] | None = None, probe: Callable[[torch.nn.Module], dict[str, float]] | None = None,
) -> TrainResult:
    """Train ``model`` in place on packed token rows.

    Args:
        model: a native decoder or BERT (with its MLM head), or any module (e.g. ``wrap()``'ed) whose
            ``model(input_ids)`` returns logits ``[batch, pos, d_vocab]`` or an output with ``.logits``.
        data: token rows ``[n_rows, pos]`` (see :func:`~hookscope.training.data.token_rows`).
        config: the :class:`TrainingConfig`.
        eval_data: token rows for the eval loss every ``config.eval_every`` steps.
        collator: turns a batch of rows into ``input_ids`` and ``targets``; default next-token prediction,
            :class:`~hookscope.training.data.MaskedLMCollator` for BERT.
        baselines: named reference losses (e.g. :func:`~hookscope.training.ngram.ngram_losses`) drawn on
            the loss curve.
        probe: called on the model (in eval mode, without gradients) every ``config.eval_every`` steps; the
            numbers it returns go into that step's log entry (e.g. an induction score over training).

    Under ``torchrun`` each process runs this with the same arguments; they share the global batch (DDP).
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"train() needs a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(config, TrainingConfig):
        raise TypeError(f"config must be a TrainingConfig, got {type(config).__name__}")
    rows, collator = token_rows(data), collator or CausalLMCollator()
    eval_rows = None if eval_data is None else token_rows(eval_data)
    device = next(model.parameters()).device
    world = join_world(device)
    try:
        _check_world(config, world)
        torch.manual_seed(config.seed)
        optimizer = _optimizer(model, config)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, config))
        start, log = _resume(config, model, optimizer, scheduler)
        runner = wrap_for_world(model, world, device)
        runner = torch.compile(runner) if config.compile else runner
        model.train()
        evals = _Evals(eval_rows, collator, probe)
        _loop(runner, model, rows, evals, config, collator, world, device, optimizer, scheduler, start, log)
        result = TrainResult(log, dict(baselines or {}), config.out_dir)
        if world.is_main and config.out_dir is not None:
            _write_outputs(result, Path(config.out_dir))
        return result
    finally:
        world.close()


@dataclass(frozen=True)
class _Evals:
    rows: torch.Tensor | None
    collator: Any
    probe: Callable[[torch.nn.Module], dict[str, float]] | None

    def run(self, model: torch.nn.Module, config: TrainingConfig) -> dict[str, float]:
        found: dict[str, float] = {}
        if self.rows is not None:
            found["eval_loss"] = evaluate(model, self.rows, config, self.collator)
        if self.probe is not None:
            was_training = model.training
            model.eval()
            with torch.no_grad():
                found.update(_probe_numbers(self.probe(model)))
            model.train(was_training)
        return found


def _probe_numbers(found: Any) -> dict[str, float]:
    try:
        return {str(k): float(v) for k, v in found.items()}
    except (AttributeError, TypeError, ValueError) as err:
        raise TypeError(f"the probe must return a dict of numbers, got {found!r:.200}") from err


def _loop(
    runner: Any, model: torch.nn.Module, rows: torch.Tensor, evals: _Evals, config: TrainingConfig,
    collator: Any, world: World, device: torch.device, optimizer: Any, scheduler: Any, start: int, log: list,
) -> None:
    tokens_per_step = config.batch_size * rows.shape[1]
    bar = tqdm(total=config.steps, initial=start, disable=not (config.progress and world.is_main), unit="step")
    t0 = time.perf_counter()
    for step in range(start, config.steps):
        lr = optimizer.param_groups[0]["lr"]
        loss_sum, n_scored = _train_step(runner, rows, step, config, collator, world, device)
        if config.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        loss = float(world.all_sum(loss_sum)) / max(n_scored, 1)
        if not math.isfinite(loss):
            raise FloatingPointError(f"the loss is {loss} at step {step + 1}; lower the learning rate")
        elapsed = time.perf_counter() - t0
        entry = {"step": step + 1, "loss": loss, "lr": lr, "tokens": (step + 1) * tokens_per_step,
                 "tokens_per_s": (step + 1 - start) * tokens_per_step / max(elapsed, 1e-9)}
        last = step + 1 == config.steps
        if config.eval_every and ((step + 1) % config.eval_every == 0 or last) and world.is_main:
            found = evals.run(model, config)
            entry.update(found)
            logger.info("step %d: train loss %.4f, %s", step + 1, loss,
                        ", ".join(f"{k} {v:.4f}" for k, v in found.items()))
        log.append(entry)
        bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{entry['tokens_per_s']:.0f}")
        bar.update(1)
        every = config.checkpoint_every
        if config.out_dir is not None and every and ((step + 1) % every == 0 or last) and world.is_main:
            save_checkpoint(checkpoint_dir(config.out_dir, step + 1), model, optimizer, scheduler, step + 1, log,
                            config.to_dict())
    bar.close()


def _write_outputs(result: TrainResult, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "log.json").write_text(json.dumps({"log": result.log, "baselines": result.baselines}, indent=1))
    result.plot(out_dir / "loss_curve.png")
