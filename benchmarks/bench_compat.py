"""hookscope.compat.HookedTransformer vs the native Decoder vs plain HF, on the same weights.

Run: ``PYTHONPATH=. python benchmarks/bench_compat.py [--repeats 20] [--device cpu] [--tl-python PATH]``.
GPT-2-small-shaped random weights (12 layers, d_model 768), batch 1 x 16 and 4 x 128: a bare forward and
``run_with_cache`` of every hook (names_filter=None). The compat model is the loaded native model itself
(adopted, from_pretrained_no_processing), so the ratio compat / native is the cost of the TL layer alone.
Times are medians of interleaved runs; figures are ratios to HF (and compat / native).
``--tl-python``: the interpreter of an environment with TransformerLens installed; its own
``HookedTransformer`` on a random model of the same shape is timed there against HF (see tl_subprocess.py)
and added as two columns; without it they read "skipped".
"""

from __future__ import annotations

import argparse

import torch
import transformers
from timing import median_seconds
from tl_subprocess import transformer_lens_times

import hookscope
from hookscope.compat import HookedTransformer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--tl-python", default=None, help="Python of an environment with transformer-lens")
    args = parser.parse_args()
    tl = None
    if args.tl_python:
        tl = transformer_lens_times(args.tl_python, args.repeats, args.device, torch.get_num_threads())
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(attn_implementation="sdpa")).eval().to(args.device)
    native = hookscope.load(hf, device=args.device)
    compat = HookedTransformer.from_pretrained_no_processing("gpt2", hf_model=hf, device=args.device)
    print(f"GPT-2 small shape (random), {torch.get_num_threads()} threads, {args.device}")
    print("TransformerLens: " + (f"{tl['version']} via {args.tl_python}" if tl else "skipped: pass --tl-python PATH"))
    print("shape    | HF fwd ms | native/HF | compat/HF | compat/native | native cache/HF | compat cache/HF "
          "| TL fwd/HF | TL cache/HF")
    for batch, pos in ((1, 16), (4, 128)):
        ids = torch.randint(0, 50000, (batch, pos), device=args.device)
        with torch.inference_mode():
            torch.testing.assert_close(compat(ids), native(ids))  # same numbers, or the timing means nothing
            s = median_seconds(
                {
                    "hf": lambda i=ids: hf(i),
                    "native": lambda i=ids: native(i),
                    "compat": lambda i=ids: compat(i),
                    "native_cache": lambda i=ids: native.run_with_cache(i),
                    "compat_cache": lambda i=ids: compat.run_with_cache(i),
                },
                args.repeats, args.device,
            )
        t = tl[f"{batch}x{pos}"] if tl else None
        tl_cols = (f"{t['tl'] / t['hf']:9.3f} | {t['tl_cache'] / t['hf']:11.3f}" if t
                   else f"{'skipped':>9} | {'skipped':>11}")
        print(f"{batch}x{pos:<6} | {1e3 * s['hf']:9.2f} | {s['native'] / s['hf']:9.3f} | {s['compat'] / s['hf']:9.3f} "
              f"| {s['compat'] / s['native']:13.3f} | {s['native_cache'] / s['hf']:15.3f} "
              f"| {s['compat_cache'] / s['hf']:15.3f} | {tl_cols}")


if __name__ == "__main__":
    main()
