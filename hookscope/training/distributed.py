"""PyTorch DDP under ``torchrun``: who am I, how many are we, and the model wrapped for it.

No home-made distribution: ``torchrun`` sets the environment, ``torch.distributed`` does the rest. Without
``torchrun`` (``WORLD_SIZE`` unset or 1) everything here is a no-op.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    owns_group: bool = False  # we initialised the process group, so we tear it down

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def all_sum(self, value: torch.Tensor) -> torch.Tensor:
        """``value`` summed over every process (itself when alone)."""
        if self.size > 1:
            value = value.clone()
            dist.all_reduce(value, op=dist.ReduceOp.SUM)
        return value

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()


def join_world(device: torch.device) -> World:
    """Join the process group ``torchrun`` describes (gloo on CPU, NCCL on CUDA), or a world of one."""
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size())
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this PyTorch build has no torch.distributed")
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return World(dist.get_rank(), dist.get_world_size(), owns_group=True)


def wrap_for_world(model: torch.nn.Module, world: World, device: torch.device) -> torch.nn.Module:
    if world.size == 1:
        return model
    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def no_sync(model: Any, skip: bool) -> contextlib.AbstractContextManager:
    """DDP's ``no_sync`` for accumulation micro-steps before the last (gradients all-reduce once per step)."""
    if skip and hasattr(model, "no_sync"):
        return model.no_sync()
    return contextlib.nullcontext()
