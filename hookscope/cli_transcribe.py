"""``hookscope transcribe FILE.wav``: speech to text with a hooked Whisper (packaged tiny.en by default)."""

from __future__ import annotations

import argparse
import sys
import time


def add_transcribe_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register the ``transcribe`` subcommand on the ``hookscope`` parser."""
    p = subparsers.add_parser(
        "transcribe", help="transcribe speech audio files (WAV, FLAC, OGG) with Whisper"
    )
    p.add_argument("files", nargs="+", metavar="FILE", help="audio files; resampled to 16 kHz, mixed to mono")
    p.add_argument("--model", default="whisper-tiny.en", help="packaged name, HF Whisper folder, or hub id")
    p.add_argument("--beams", type=int, default=1, help="beam width (1: greedy, the default)")
    p.add_argument("--max-new-tokens", type=int, default=None, help="tokens per 30-s window (default 224)")
    p.add_argument("--dtype", default=None, help="float32 (default), bfloat16, float64")
    p.add_argument("--device", default=None, help="cpu (default), cuda, ...")
    p.set_defaults(func=run_transcribe)
    return p


def run_transcribe(args: argparse.Namespace) -> int:
    """Print one transcript per file (prefixed with the file name when there are several)."""
    import hookscope

    if args.beams < 1:
        raise ValueError(f"--beams must be >= 1, got {args.beams}")
    model = hookscope.load(args.model, dtype=args.dtype, device=args.device, progress=False)
    if not hasattr(model, "transcribe"):
        raise ValueError(f"{args.model} is a {type(model).__name__}, not a speech model; use a Whisper model")
    for path in args.files:
        start = time.perf_counter()
        text = model.transcribe(path, num_beams=args.beams, max_new_tokens=args.max_new_tokens)
        prefix = f"{path}: " if len(args.files) > 1 else ""
        sys.stdout.write(f"{prefix}{text}\n")
        sys.stdout.flush()
        if getattr(args, "verbose", False):
            sys.stderr.write(f"({path}: {time.perf_counter() - start:.2f} s)\n")
    return 0
