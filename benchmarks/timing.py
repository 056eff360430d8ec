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
    fns: dict[str, Callable[[], object]], repeats: int, device: str = "cpu", warmup: bool = True,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, float]:
    """Median seconds of each callable; runs are interleaved so machine noise hits all alike.

    ``clock``: wall time by default; ``time.process_time`` counts this process's CPU time only, which
    a machine shared with other jobs disturbs far less (single-threaded CPU runs only).
    """
    if warmup:
        for fn in fns.values():  # allocator, kernel selection, lazy imports
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            sync(device)
            start = clock()
            fn()
            sync(device)
            times[name].append(clock() - start)
    return {name: statistics.median(ts) for name, ts in times.items()}
