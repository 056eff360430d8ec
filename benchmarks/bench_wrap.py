"""Wrapped vs raw forward time on a GPT-2-small-shaped random model (no hooks, then a residual cache).

Run: ``PYTHONPATH=. python benchmarks/bench_wrap.py [--pos 128] [--repeats 30]``. Prints the ratios of
median times, measured interleaved (raw, wrapped, raw, ...) so drift affects both alike.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import transformers

import hookscope


def _median_ms(fns: dict[str, Callable[[], object]], repeats: int, cuda: bool) -> dict[str, float]:
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            if cuda:  # kernels run asynchronously: wait for them before reading the clock
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - start)
    return {name: 1e3 * statistics.median(ts) for name, ts in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pos", type=int, default=128)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config()).eval().to(args.device)  # 124M, sdpa
    wrapped = hookscope.wrap(model)
    ids = torch.randint(0, model.config.vocab_size, (args.batch, args.pos), device=args.device)
    resid = [f"blocks.{i}.hook_resid_post" for i in range(model.config.n_layer)]
    with torch.inference_mode():
        for _ in range(3):  # warm-up
            model(ids)
            wrapped(ids)
        ms = _median_ms(
            {
                "raw": lambda: model(ids),
                "wrapped": lambda: wrapped(ids),
                "wrapped+cache(resid_post)": lambda: wrapped.run_with_cache(ids, names_filter=resid),
                "wrapped+cache(pattern)": lambda: wrapped.run_with_cache(
                    ids, names_filter=lambda n: n.endswith("hook_pattern")
                ),
            },
            args.repeats,
            cuda=ids.is_cuda,
        )
    print(f"GPT-2 small shape, batch {args.batch} x pos {args.pos}, {torch.get_num_threads()} threads")
    for name, value in ms.items():
        print(f"  {name:28s} {value:8.2f} ms   ratio {value / ms['raw']:.3f}")


if __name__ == "__main__":
    main()
