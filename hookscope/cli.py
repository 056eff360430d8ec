"""The ``hookscope`` command: ``hookscope lens PROMPT`` (the main job) and friends."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import hookscope


def _lens(args: argparse.Namespace) -> int:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    from hookscope.analysis.lens import logit_lens

    if not args.prompt.strip():
        raise ValueError("the prompt is empty: give the lens some text")
    print(f"Loading {args.model} ...", flush=True)
    model = hookscope.load(args.model, dtype=args.dtype, device=args.device)
    result = logit_lens(
        model, args.prompt, include_subblocks=args.sublayers, metric=args.metric, target=args.target,
        top_k=args.top_k,
    )
    print(result.table())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    fig = result.plot()
    fig.savefig(out / "lens.png", dpi=120)
    plt.close(fig)
    result.to_html(out / "lens.html")
    print(f"\nWrote {out / 'lens.png'} and {out / 'lens.html'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hookscope", description=hookscope.__doc__)
    parser.add_argument("--version", action="version", version=f"hookscope {hookscope.__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress")
    sub = parser.add_subparsers(dest="command")
    lens = sub.add_parser("lens", help="logit lens of a prompt: a table here, PNG and HTML files")
    lens.add_argument("prompt")
    lens.add_argument("--model", default="smollm2-135m", help="packaged name, local folder, .gguf, or hub id")
    lens.add_argument("--metric", default="probs", choices=["probs", "logits", "logprobs", "kl", "rank"])
    lens.add_argument("--sublayers", action="store_true", help="a row after attention and after MLP")
    lens.add_argument("--target", default=None, help="a token to track, e.g. ' Paris'")
    lens.add_argument("--top-k", type=int, default=5)
    lens.add_argument("--out", default="hookscope-out", help="folder for lens.png and lens.html")
    lens.add_argument("--dtype", default=None, help="float32 (default), bfloat16, float64")
    lens.add_argument("--device", default=None, help="cpu (default), cuda, ...")
    lens.set_defaults(func=_lens)
    _add_optional_commands(sub)
    return parser


def _add_optional_commands(sub: argparse._SubParsersAction) -> None:
    """Subcommands that live in their own modules (audio needs soundfile)."""
    from hookscope.cli_sae import add_sae_parser

    add_sae_parser(sub)
    try:
        from hookscope.cli_transcribe import add_transcribe_parser
    except ImportError:
        return
    add_transcribe_parser(sub)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except (ValueError, KeyError, FileNotFoundError, RuntimeError) as err:
        print(f"hookscope: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
