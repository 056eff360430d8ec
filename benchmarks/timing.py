"""One timing helper for every benchmark: interleaved repetitions, median seconds per callable."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def sync(device: str) -> None:
    """Wait for queued GPU work so a timer measures it (no-op on CPU)."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def median_seconds(
    fns: dict[str, Callable[[], object]], repeats: int, device: str = "cpu", warmup: bool = True
) -> dict[str, float]:
    """Median wall seconds of each callable; runs are interleaved so machine noise hits all alike."""
    if warmup:
        for fn in fns.values():  # allocator, kernel selection, lazy imports
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(ts) for name, ts in times.items()}
