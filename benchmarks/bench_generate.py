"""Greedy generation speed: hookscope ``model.generate`` vs HF ``generate`` on the same weights, one run.

Run: ``PYTHONPATH=. python benchmarks/bench_generate.py [--smollm2] [--device cuda] [--dtype bfloat16]``.
GPT-2-small-shaped random weights (12 layers, d_model 768, vocab 50257) or, with ``--smollm2``, the packaged
SmolLM2-135M (HF side: ``model.to_hf()``, the same weights). Both decode ``--new`` tokens greedily with no
EOS (every run produces exactly that many tokens) from a ``--prompt``-token prompt, with a KV cache; HF
uses its default attention (sdpa). Reported: new tokens per second (median of interleaved repeats, so drift
hits all alike), the ratio to HF, and the cost of caching every block's residual stream at every step
(``return_cache=...hook_resid_post``). The outputs are checked equal to HF's (fp32 only: bf16 rounding may
flip near-ties).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
import transformers
from timing import median_seconds

import hookscope


def _models(kind: str, dtype: torch.dtype, device: str) -> tuple[torch.nn.Module, torch.nn.Module, str]:
    if kind == "smollm2":
        model = hookscope.load("smollm2-135m", progress=False)
        hf = model.to_hf()
        label = "SmolLM2-135M (packaged)"
    elif kind == "narrow":  # per-step overhead dominates: 12 layers of width 64
        torch.manual_seed(0)
        hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_embd=64, n_head=4, vocab_size=2048))
        model = hookscope.load(hf, progress=False)
        label = "GPT-2 12 layers, width 64, vocab 2048 (random; per-step overhead)"
    else:
        torch.manual_seed(0)
        hf = transformers.GPT2LMHeadModel(transformers.GPT2Config())  # GPT-2 small shape, random weights
        model = hookscope.load(hf, progress=False)
        label = "GPT-2 small shape (random)"
    hf = hf.to(device=device, dtype=dtype).eval()
    model = model.to(device=device, dtype=dtype).eval()
    return hf, model, label


def _median_tok_s(fns: dict[str, Callable[[], object]], n_tokens: int, repeats: int, device: str) -> dict:
    return {name: n_tokens / t for name, t in median_seconds(fns, repeats, device).items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--smollm2", action="store_true")
    parser.add_argument("--narrow", action="store_true", help="a width-64 GPT-2: time per-step overhead")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--new", type=int, default=128)
    parser.add_argument("--prompt", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--compile", action="store_true", help="also time generate(compile=True)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    hf, model, label = _models("smollm2" if args.smollm2 else "narrow" if args.narrow else "gpt2", dtype, args.device)
    resid = [f"blocks.{i}.hook_resid_post" for i in range(model.cfg.n_layers)]
    threads = f"{torch.get_num_threads()} threads" if args.device == "cpu" else args.device
    print(f"{label}, {args.dtype}, {threads}, prompt {args.prompt} + {args.new} new tokens, greedy")
    print("| batch | HF tok/s | hookscope tok/s | ratio | + resid cache tok/s | resid cache cost |")
    print("|---|---|---|---|---|---|")
    for batch in (int(b) for b in args.batches.split(",")):
        gen = torch.Generator().manual_seed(batch)
        tokens = torch.randint(100, 1000, (batch, args.prompt), generator=gen).to(args.device)
        mask = torch.ones_like(tokens)

        def run_hf() -> torch.Tensor:
            with torch.no_grad():
                return hf.generate(tokens, attention_mask=mask, max_new_tokens=args.new, do_sample=False,
                                   eos_token_id=None, pad_token_id=0)

        def run_ours() -> torch.Tensor:
            return model.generate(tokens, args.new, eos_token_id=[])

        def run_cached() -> object:
            return model.generate(tokens, args.new, eos_token_id=[], return_cache=resid)

        def run_compiled() -> torch.Tensor:
            return model.generate(tokens, args.new, eos_token_id=[], compile=True)

        if dtype == torch.float32:
            same = torch.equal(run_hf(), run_ours())
            if not same:
                print(f"WARNING: batch {batch}: hookscope's tokens differ from HF's")
        n_new = batch * args.new
        fns = {"hf": run_hf, "ours": run_ours, "cached": run_cached}
        if args.compile:
            if not torch.equal(run_compiled(), run_ours()):  # also compiles, outside the timing
                print(f"WARNING: batch {batch}: compiled decoding gave other tokens")
            fns["compiled"] = run_compiled
        tps = _median_tok_s(fns, n_new, args.repeats, args.device)
        compiled = ""
        if args.compile:
            compiled = f" compile=True: {tps['compiled']:.1f} tok/s, {tps['compiled'] / tps['hf']:.2f}x |"
        print(f"| {batch} | {tps['hf']:.1f} | {tps['ours']:.1f} | {tps['ours'] / tps['hf']:.2f}x | "
              f"{tps['cached']:.1f} | {tps['ours'] / tps['cached'] - 1:+.0%} |{compiled}")


if __name__ == "__main__":
    main()
