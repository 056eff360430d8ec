"""Offline English speech synthesis with espeak-ng (``pip install espeakng-loader``), for controlled stimuli.

Speech models need speech to study; this makes it from text, with no network and no system package:
``espeakng-loader`` ships the espeak-ng library and its data. The output is a mono float32 waveform at
16 kHz (resampled with ``soxr`` when installed, else with :func:`hookscope.audio.resample`).

espeak-ng is a process-wide singleton and not thread-safe: calls are serialised here. The same text twice in
one process may give slightly different waveforms (espeak-ng keeps state); a fresh process is repeatable.
"""

from __future__ import annotations

import ctypes
import threading
from typing import Any

import numpy as np
import torch

from hookscope.audio import SAMPLE_RATE, resample

_LOCK = threading.Lock()
_STATE: dict[str, Any] = {}
_SYNCHRONOUS, _POS_CHARACTER, _CHARS_UTF8, _RATE = 2, 1, 1, 1
_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


def _engine() -> tuple[Any, int]:
    if "lib" not in _STATE:
        try:
            import espeakng_loader
        except ImportError as err:
            raise ImportError("speech synthesis needs espeak-ng: pip install espeakng-loader") from err
        lib = ctypes.CDLL(espeakng_loader.get_library_path())
        lib.espeak_Initialize.restype = ctypes.c_int
        rate = lib.espeak_Initialize(_SYNCHRONOUS, 0, espeakng_loader.get_data_path().encode(), 0)
        if rate <= 0:
            raise RuntimeError(f"espeak-ng failed to initialise (returned {rate})")
        chunks: list[np.ndarray] = []

        def on_audio(wav: Any, n: int, events: Any) -> int:
            if wav and n > 0:
                chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
            return 0

        callback = _CALLBACK(on_audio)  # kept referenced for the life of the process
        lib.espeak_SetSynthCallback(callback)
        _STATE.update(lib=lib, rate=rate, chunks=chunks, callback=callback, voice=None)
    return _STATE["lib"], _STATE["rate"]


def synthesize(text: str, voice: str = "en-us", words_per_minute: int = 160) -> np.ndarray:
    """Speech for ``text``: mono float32 ``[samples]`` at 16 kHz.

    Args:
        voice: an espeak-ng voice ("en", "en-us", "en+f3", "en-us+m3"...).
        words_per_minute: speaking rate (espeak-ng's default is 175).
    """
    if not isinstance(text, str) or not text.strip():
        raise ValueError("synthesize needs a non-empty string")
    with _LOCK:
        lib, rate = _engine()
        if lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise ValueError(f"espeak-ng has no voice {voice!r} (try 'en', 'en-us', 'en+f3')")
        lib.espeak_SetParameter(_RATE, int(words_per_minute), 0)
        chunks: list[np.ndarray] = _STATE["chunks"]
        chunks.clear()
        data = text.encode("utf-8")
        status = lib.espeak_Synth(data, len(data) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
        if status != 0:
            raise RuntimeError(f"espeak-ng could not synthesise the text (status {status})")
        wave = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int16)
        chunks.clear()
    audio = wave.astype(np.float32) / 32768.0
    if rate == SAMPLE_RATE or audio.size == 0:
        return audio
    try:
        import soxr

        return soxr.resample(audio, rate, SAMPLE_RATE).astype(np.float32)
    except ImportError:
        return resample(torch.from_numpy(audio), rate, SAMPLE_RATE).numpy()
