"""Machine-readable benchmark output that ``run_all.py`` turns into the README's tables.

A script that supports ``--json`` calls :func:`emit` once at the end with its tables; ``emit`` prints one
line ``BENCH-JSON {...}`` (after the script's human output). Each table has a name: ``run_all.py`` writes
it into README.md between ``<!-- bench:NAME -->`` and ``<!-- /bench:NAME -->``.
"""

from __future__ import annotations

import json
import platform
import statistics
from dataclasses import asdict, dataclass, field

import torch

MARKER = "BENCH-JSON "


@dataclass
class Table:
    """One markdown table: ``name`` (README marker), a caption line, column headers and rows of cells."""

    name: str
    caption: str
    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)


def _cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine() -> str:
    """The hardware and software the figures were taken on, for the caption."""
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({_cpu_name()})"
    return f"torch {torch.__version__}, {device}, {torch.get_num_threads()} thread(s)"


def spread(values: list[float], fmt: str = "{:.2f}") -> str:
    """``median (min-max)`` of repeated measurements, formatted."""
    med = statistics.median(values)
    if len(values) == 1:
        return fmt.format(med)
    return f"{fmt.format(med)} ({fmt.format(min(values))}-{fmt.format(max(values))})"


def emit(tables: list[Table]) -> None:
    """Print the tables as one machine-readable line for ``run_all.py``."""
    print(MARKER + json.dumps({"tables": [asdict(t) for t in tables]}), flush=True)
