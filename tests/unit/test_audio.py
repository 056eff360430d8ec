"""Audio input: band-limited resampling against analytic sines, waveform preparation, features, errors."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from hookscope.audio import chunks, load_audio, log_mel, prepare_waveform, resample


@pytest.mark.parametrize(("orig", "new"), [(44100, 16000), (22050, 16000), (8000, 16000), (48000, 16000)])
def test_resample_reproduces_a_sine(orig: int, new: int) -> None:
    freq, seconds = 440.0, 0.5
    x = torch.sin(2 * math.pi * freq * torch.arange(int(orig * seconds), dtype=torch.float64) / orig)
    y = resample(x, orig, new)
    assert y.shape[-1] == math.ceil(new * x.shape[-1] / orig)
    expected = torch.sin(2 * math.pi * freq * torch.arange(y.shape[-1], dtype=torch.float64) / new)
    middle = slice(200, y.shape[-1] - 200)  # away from the zero-padded edges
    assert (y[middle] - expected[middle]).abs().max() < 2e-3


def test_resample_removes_content_above_the_new_nyquist() -> None:
    x = torch.sin(2 * math.pi * 10_000 * torch.arange(44100, dtype=torch.float64) / 44100)  # 10 kHz
    y = resample(x, 44100, 16000)  # new Nyquist: 8 kHz
    assert y[500:-500].abs().max() < 0.02


def test_resample_same_rate_is_identity() -> None:
    x = torch.randn(100)
    assert resample(x, 16000, 16000) is x


def test_prepare_waveform_mixes_channels_and_needs_a_rate() -> None:
    stereo = np.stack([np.ones(1000), -np.ones(1000) * 0.5], axis=1)
    mono = prepare_waveform(stereo, 16000)
    assert mono.shape == (1000,) and mono.dtype == np.float32 and np.allclose(mono, 0.25)
    with pytest.raises(ValueError, match="sample_rate"):
        prepare_waveform(np.zeros(10), None)
    with pytest.raises(ValueError, match="mono waveform"):
        prepare_waveform(np.zeros((2, 3, 4)), 16000)


def test_load_audio_reads_resamples_and_reports_bad_files(tmp_path: Path) -> None:
    path = tmp_path / "tone.wav"
    soundfile.write(path, np.sin(np.arange(8000) / 5).astype(np.float32), 8000)
    assert load_audio(path).shape == (16000,)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_audio(tmp_path / "missing.wav")
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"not audio at all")
    with pytest.raises(ValueError, match="could not read"):
        load_audio(bad)


def test_log_mel_is_whisper_shaped_and_chunks_cover_the_audio() -> None:
    audio = np.random.default_rng(0).standard_normal(16000 * 3).astype(np.float32) * 0.1
    feats = log_mel(audio)
    assert feats.shape == (80, 3000) and feats.dtype == torch.float32
    parts = chunks(np.zeros(16000 * 65, dtype=np.float32))
    assert [len(p) for p in parts] == [480000, 480000, 80000]
