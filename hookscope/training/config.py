"""TrainingConfig: every choice the training loop makes, typed and validated once."""

from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass


@dataclass(frozen=True, kw_only=True)
class TrainingConfig:
    """Settings of :func:`hookscope.training.train`.

    ``batch_size`` is the GLOBAL batch (rows per optimizer step, summed over every process and every
    accumulation micro-step), so changing the number of processes or ``grad_accum_steps`` changes
    neither the data seen nor the loss (up to float rounding).

    Attributes:
        steps: optimizer steps to reach (a resumed run continues up to this number).
        batch_size: rows per optimizer step over all processes.
        grad_accum_steps: micro-batches per optimizer step on each process.
        lr: peak learning rate (AdamW), reached after ``warmup_steps`` of linear warm-up, then cosine decay to
            ``lr * min_lr_ratio`` at ``steps``.
        weight_decay, betas, adam_eps: AdamW's. Weight decay applies to matrices only (not biases, norms).
        max_grad_norm: clip the global gradient norm to this (None: no clipping).
        seed: seeds the data order, masking and any dropout; the same seed gives the same run.
        eval_every: evaluate on ``eval_data`` every this many steps (and at the end); None: never.
        eval_batch_size: rows per evaluation forward.
        bf16: run forwards under ``torch.autocast`` in bfloat16 (parameters and optimizer stay float32).
        out_dir: where the JSON log, the loss-curve PNG and checkpoints go (None: keep nothing on disk).
        checkpoint_every: save a checkpoint every this many steps (and at the end) in ``out_dir``.
        resume: start from the newest checkpoint in ``out_dir`` when there is one.
        progress: show a tqdm bar with the loss and tokens/s.
        compile: run the model through ``torch.compile``. Off by default: on CPU it did not pay
            (``benchmarks/bench_training.py --compile``: 0.64x of the eager HF loop, and HF's own loop slowed
            from 1879 to 1359 tokens/s compiled); try it on a GPU, where fused kernels can win.
    """

    steps: int
    batch_size: int = 8
    grad_accum_steps: int = 1
    lr: float = 1e-3
    warmup_steps: int = 0
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8
    max_grad_norm: float | None = 1.0
    seed: int = 0
    eval_every: int | None = None
    eval_batch_size: int = 16
    bf16: bool = False
    out_dir: str | None = None
    checkpoint_every: int | None = None
    resume: bool = True
    progress: bool = True
    compile: bool = False

    def __post_init__(self) -> None:
        self._check_types()
        for name in ("steps", "batch_size", "grad_accum_steps", "eval_batch_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"TrainingConfig.{name} must be positive, got {getattr(self, name)}")
        for name in ("eval_every", "checkpoint_every"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"TrainingConfig.{name} must be positive or None, got {value}")
        if self.lr <= 0:
            raise ValueError(f"TrainingConfig.lr must be positive, got {self.lr}")
        if not 0 <= self.warmup_steps <= self.steps:
            raise ValueError(f"warmup_steps must lie in [0, steps={self.steps}], got {self.warmup_steps}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"min_lr_ratio must lie in [0, 1], got {self.min_lr_ratio}")
        if self.batch_size % self.grad_accum_steps:
            raise ValueError(f"batch_size ({self.batch_size}) must be a multiple of grad_accum_steps "
                             f"({self.grad_accum_steps})")
        if self.checkpoint_every is not None and self.out_dir is None:
            raise ValueError("checkpoint_every needs out_dir (where the checkpoints go)")
        if self.max_grad_norm is not None and self.max_grad_norm <= 0:
            raise ValueError(f"max_grad_norm must be positive or None, got {self.max_grad_norm}")

    def _check_types(self) -> None:
        ints = ("steps", "batch_size", "grad_accum_steps", "warmup_steps", "seed", "eval_batch_size")
        for name in (*ints, "eval_every", "checkpoint_every"):
            value = getattr(self, name)
            if value is None and name not in ints:
                continue
            if not isinstance(value, numbers.Integral) or isinstance(value, bool):
                raise TypeError(f"TrainingConfig.{name} must be an int, got {value!r}")
            object.__setattr__(self, name, int(value))  # numpy ints become plain ints (JSON logs, checkpoints)
        for name in ("lr", "min_lr_ratio", "weight_decay", "adam_eps", "max_grad_norm"):
            value = getattr(self, name)
            if value is None and name == "max_grad_norm":
                continue
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
                raise TypeError(f"TrainingConfig.{name} must be a finite number, got {value!r}")
            object.__setattr__(self, name, float(value))
        for name in ("bf16", "resume", "progress", "compile"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"TrainingConfig.{name} must be True or False, got {getattr(self, name)!r}")
        betas = tuple(self.betas) if isinstance(self.betas, (tuple, list)) else ()
        if len(betas) != 2 or not all(isinstance(b, numbers.Real) and 0 <= b < 1 for b in betas):
            raise ValueError(f"TrainingConfig.betas must be two numbers in [0, 1), got {self.betas!r}")
        object.__setattr__(self, "betas", tuple(float(b) for b in betas))

    def to_dict(self) -> dict:
        return asdict(self)
