"""Decoder forward cost against plain Hugging Face on the same weights (ratios from one run).

Usage: python benchmarks/bench_decoder.py [--quick] [--smollm2]
Prints, for GPT-2-small-shaped random weights (and SmolLM2 with --smollm2), at batch 4 x 128 and 1 x 16:
HF forward time, then hookscope / HF for: a bare forward, run_with_cache of the residual stream, and
run_with_cache of everything; the same for TransformerLens (4.x bridge) and nnsight when they are importable
(see third_party.py). Load time and memory: benchmarks/bench_load.py.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch


def timeit(fn: Callable[[], object], repeats: int) -> float:
    """Median seconds of ``fn`` after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    times.sort()
    return times[len(times) // 2]


def gpt2_small() -> torch.nn.Module:
    import transformers as T

    torch.manual_seed(0)
    return T.GPT2LMHeadModel(T.GPT2Config()).eval()


def smollm2_hf() -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    import hookscope
    from hookscope.convert.sources import packaged_source

    hookscope.load("smollm2-135m")  # makes sure the converted folder exists
    folder = packaged_source("smollm2-135m").description
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    torch.set_flush_denormal(True)  # loading through transformers can turn it off again
    return model


def bench_forward(name: str, hf: torch.nn.Module, repeats: int, layers: Callable[[object], object]) -> None:
    from third_party import nnsight_runners, transformer_lens_runners

    import hookscope

    model = hookscope.load(hf, progress=False)
    resid = lambda n: "hook_resid" in n  # noqa: E731
    others = {"TransformerLens": transformer_lens_runners(hf), "nnsight": nnsight_runners(hf, layers)}
    for batch, pos in ((4, 128), (1, 16)):
        tokens = torch.randint(0, 1000, (batch, pos))
        with torch.no_grad():
            t_hf = timeit(lambda: hf(tokens), repeats)
            t_fwd = timeit(lambda: model(tokens), repeats)
            t_resid = timeit(lambda: model.run_with_cache(tokens, names_filter=resid), repeats)
            t_all = timeit(lambda: model.run_with_cache(tokens), repeats)
            print(f"{name:10s} {batch}x{pos:<4d} HF {t_hf * 1e3:8.1f} ms | hookscope: forward {t_fwd / t_hf:5.2f}x | "
                  f"cache resid {t_resid / t_hf:5.2f}x | cache all {t_all / t_hf:5.2f}x")
            for label, runners in others.items():
                if runners is None:
                    continue
                ratios = " | ".join(f"{kind} {timeit(lambda: run(tokens), repeats) / t_hf:5.2f}x"
                                    for kind, run in runners.items())
                print(f"{'':10s} {batch}x{pos:<4d} {label}: {ratios}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    parser.add_argument("--smollm2", action="store_true", help="also the packaged SmolLM2-135M")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (1 gives the steadiest ratios)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # denormal activations (SmolLM2) would time CPU arithmetic, not the model
    import hookscope
    import hookscope.memory

    # run_with_cache applies this on its first call; apply it up front so HF is timed under the same malloc
    hookscope.memory.keep_freed_memory()
    repeats = 3 if args.quick else 10
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU")
    hf = gpt2_small()
    bench_forward("gpt2-small", hf, repeats, lambda m: m.transformer.h)
    if args.smollm2:
        bench_forward("smollm2", smollm2_hf(), repeats, lambda m: m.model.layers)


if __name__ == "__main__":
    main()
