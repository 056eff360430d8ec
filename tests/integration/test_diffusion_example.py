"""examples/diffusion_steps.py runs end to end (short training) and writes what it promises."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "diffusion_steps.py"


def run(args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # this checkout's hookscope, whatever is installed
    return subprocess.run([sys.executable, str(EXAMPLE), *args], capture_output=True, text=True, timeout=1200,
                          cwd=ROOT, env=env)


@pytest.mark.slow
def test_diffusion_example_trains_samples_and_writes_figures(tmp_path: Path) -> None:
    args = ["--train-steps", "150", "--sample-steps", "8", "--per-class", "2", "--out", str(tmp_path),
            "--checkpoint", str(tmp_path / "dit.safetensors")]
    out = run(args)
    assert out.returncode == 0, out.stderr[-2000:]
    text = out.stdout
    assert "judge accuracy on held-out real digits" in text and "lens:" in text
    assert text.count("class embedding 1->7 from step") >= 5
    for figure in ("samples.png", "lens.png", "steered.png"):
        assert (tmp_path / figure).stat().st_size > 2000
    again = run(args)
    assert again.returncode == 0 and "loaded" in again.stdout
    same = [line for line in text.splitlines() if line.startswith("judge accuracy on")]
    assert same == [line for line in again.stdout.splitlines() if line.startswith("judge accuracy on")]
