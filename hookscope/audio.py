"""Audio in for speech models: read a file, mix to mono, resample to 16 kHz, make Whisper's log-mel features.

Files are read with ``soundfile`` (WAV, FLAC, OGG...; install ``hookscope[audio]``). Resampling is a
windowed-sinc (Hann window) band-limited interpolation in torch, so no scipy or
torchaudio is needed. Features come from transformers' ``WhisperFeatureExtractor`` with Whisper's
standard parameters (16 kHz, 25 ms window, 10 ms hop, 30-s windows), so they are exactly what HF feeds
its Whisper models.
"""

from __future__ import annotations

import math
import os
from functools import lru_cache
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

SAMPLE_RATE = 16_000
CHUNK_SECONDS = 30
CHUNK_SAMPLES = SAMPLE_RATE * CHUNK_SECONDS


def load_audio(path: str | os.PathLike, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Mono float32 waveform ``[samples]`` of an audio file, resampled to ``sample_rate``."""
    try:
        import soundfile
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("reading audio files needs soundfile: pip install 'hookscope[audio]'") from err
    if os.path.isdir(path):
        raise IsADirectoryError(f"{os.fspath(path)!r} is a folder; pass the path of one audio file")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"audio file {os.fspath(path)!r} does not exist")
    try:
        data, rate = soundfile.read(os.fspath(path), dtype="float32", always_2d=True)
    except (RuntimeError, soundfile.LibsndfileError) as err:
        raise ValueError(f"could not read {os.fspath(path)!r} as audio: {err}") from None
    return prepare_waveform(data.mean(axis=1), rate, sample_rate)


def prepare_waveform(audio: Any, rate: int | None, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """A 1-D float32 waveform at ``sample_rate`` from ``[samples]`` or ``[samples, channels]``."""
    x = audio.detach().cpu().numpy() if isinstance(audio, torch.Tensor) else np.asarray(audio)
    if x.dtype.kind not in "biuf":
        raise TypeError(f"a waveform must be an array of numbers (or pass a file path), got {type(audio).__name__} "
                        f"of {x.dtype}")
    if x.ndim == 2:
        x = x.mean(axis=1) if x.shape[1] <= 8 else x.mean(axis=0)  # channels are the short axis
    if x.ndim != 1 or x.size == 0:
        what = "an empty waveform" if x.size == 0 else f"shape {x.shape}"
        raise ValueError(f"expected a mono waveform [samples] or [samples, channels], got {what}")
    if rate is None:
        raise ValueError(f"pass sample_rate= with a waveform array (Whisper expects {SAMPLE_RATE} Hz)")
    if not np.isfinite(x).all():
        raise ValueError("the waveform holds NaN or infinite samples")
    x = x.astype(np.float32)
    if rate != sample_rate:
        x = resample(torch.from_numpy(x), rate, sample_rate).numpy()
    return x


def resample(
    x: torch.Tensor, orig_rate: int, new_rate: int, zeros: int = 6, rolloff: float = 0.99
) -> torch.Tensor:
    """Band-limited resampling of ``x [..., samples]`` from ``orig_rate`` to ``new_rate`` Hz.

    Each output sample is a windowed-sinc interpolation of ``2 * zeros`` input neighbours (per phase of
    the reduced ratio), the cut-off at ``rolloff`` times the lower Nyquist frequency to suppress aliasing.
    """
    if orig_rate <= 0 or new_rate <= 0:
        raise ValueError(f"sample rates must be positive, got {orig_rate} and {new_rate}")
    g = math.gcd(int(orig_rate), int(new_rate))
    up, down = int(new_rate) // g, int(orig_rate) // g
    if up == down:
        return x
    shape = x.shape
    flat = x.reshape(-1, shape[-1]).to(torch.float64)
    kernel, width = _sinc_kernel(up, down, zeros, rolloff)  # [up, taps]
    padded = F.pad(flat[:, None], (width, width + down))
    out = F.conv1d(padded, kernel[:, None], stride=down)  # [batch, up, frames]
    out = out.transpose(1, 2).reshape(flat.shape[0], -1)
    n_out = math.ceil(up * shape[-1] / down)
    return out[:, :n_out].reshape(*shape[:-1], n_out).to(x.dtype)


@lru_cache(maxsize=16)
def _sinc_kernel(up: int, down: int, zeros: int, rolloff: float) -> tuple[torch.Tensor, int]:
    cutoff = min(up, down) * rolloff  # in units of the reduced input rate
    width = math.ceil(zeros * down / cutoff)
    taps = torch.arange(-width, width + down, dtype=torch.float64)[None] / down  # input offsets
    phase = -torch.arange(up, dtype=torch.float64)[:, None] / up  # output phases
    t = ((taps + phase) * cutoff).clamp(-zeros, zeros)
    window = torch.cos(t * math.pi / zeros / 2) ** 2
    sinc = torch.where(t == 0, torch.ones_like(t), torch.sin(math.pi * t) / (math.pi * t))
    return sinc * window * cutoff / down, width


@lru_cache(maxsize=4)
def _feature_extractor(n_mels: int) -> Any:
    from transformers import WhisperFeatureExtractor

    return WhisperFeatureExtractor(feature_size=n_mels, sampling_rate=SAMPLE_RATE)


def log_mel(audio: np.ndarray, n_mels: int = 80) -> torch.Tensor:
    """Whisper log-mel features ``[n_mels, 3000]`` of 16-kHz mono audio (padded or cut to 30 s)."""
    fe = _feature_extractor(n_mels)
    feats = fe(np.asarray(audio, dtype=np.float32), sampling_rate=SAMPLE_RATE, return_tensors="np")
    return torch.from_numpy(feats["input_features"][0])


def chunks(audio: np.ndarray) -> list[np.ndarray]:
    """Consecutive 30-s windows of a 16-kHz waveform (the last one shorter; at least one window)."""
    return [audio[i : i + CHUNK_SAMPLES] for i in range(0, max(len(audio), 1), CHUNK_SAMPLES)]
