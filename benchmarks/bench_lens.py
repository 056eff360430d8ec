"""partial_forward cost per depth, and the logit lens on SmolLM2 beside a plain HF forward (one run).

Usage: python benchmarks/bench_lens.py [--repeats N]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

# SmolLM2's activations produce denormal floats that slow CPU kernels ~20x (HF and ours alike). The
# flush-to-zero flag is per thread and worker threads lose it, so this benchmark runs on one thread.
torch.set_num_threads(1)
torch.set_flush_denormal(True)


def median_time(fn: Callable[[], object], repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        torch.set_flush_denormal(True)  # something in between can turn it off again (seen after HF loads)
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def _status_kb(field: str) -> int:
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(field)


def peak_extra_mib(fn: Callable[[], object]) -> float:
    """Peak resident memory above the current level while ``fn`` runs (Linux: resets VmHWM first)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = _status_kb("VmRSS")
    fn()
    return (_status_kb("VmHWM") - before) / 1024


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    import hookscope

    model = hookscope.load("smollm2-135m", progress=False)
    hf = model.to_hf()  # the same weights in transformers' own LlamaForCausalLM (sdpa attention)
    text = " ".join(["The history of Paris spans more than two thousand years of continuous settlement."] * 5)
    tokens = model.to_tokens(text)[:, :64]
    n = model.cfg.n_layers
    with torch.no_grad():
        full = median_time(lambda: model(tokens), args.repeats)
        t_hf = median_time(lambda: hf(tokens), args.repeats)
    print(f"SmolLM2-135M, {tokens.shape[1]} tokens: hookscope forward {full * 1e3:.1f} ms, HF {t_hf * 1e3:.1f} ms")
    print("partial_forward to layer k of", n, "(time / full forward; ideal k/n):")
    for k in (1, n // 4, n // 2, 3 * n // 4, n):
        name = f"blocks.{k - 1}.hook_resid_post"
        t = median_time(lambda name=name: hookscope.partial_forward(model, tokens, [name]), args.repeats)
        print(f"  k={k:2d}  {t / full:5.2f}   (ideal {k / n:4.2f})")
    t_lens = median_time(lambda: hookscope.logit_lens(model, tokens), args.repeats)
    with torch.no_grad():
        lens_mem = peak_extra_mib(lambda: hookscope.logit_lens(model, tokens))
        hf_mem = peak_extra_mib(lambda: hf(tokens))
    print(f"logit lens (all {n + 1} rows x {tokens.shape[1]} positions): {t_lens * 1e3:.1f} ms = "
          f"{t_lens / t_hf:.2f}x an HF forward; peak memory above resident {lens_mem:.0f} MiB "
          f"vs {hf_mem:.0f} MiB for the HF forward")

if __name__ == "__main__":
    main()
