"""Batched activation patching and attribution patching on the packaged SmolLM2-135M (20 tokens).

Prints: a full layer x position residual-stream patching sweep (``get_act_patch_resid_pre``, 30 x 20 = 600
patched runs) against the same number of one-at-a-time hooked forwards (TransformerLens's loop; goal <= 0.3x),
against TransformerLens's own ``get_act_patch_resid_pre`` on the same weights when ``--tl-python`` names an
interpreter that has transformer-lens (tl_patching.py runs there), and attribution patching over every head
and position in forward-equivalents (goal <= 3).

Usage: python benchmarks/bench_patching.py [--baseline-runs N] [--repeats N] [--sweep-repeats N] [--tl-python PATH]
(``--baseline-runs``: how many one-at-a-time forwards to time; the total is scaled to all 600. 0 = all.)
Times are CPU seconds of the process on one thread, so other load on the machine does not skew the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import tempfile
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
    parser.add_argument("--tl-python", default=None, help="a Python interpreter with transformer-lens installed: "
                        "times TransformerLens's get_act_patch_resid_pre there on the same weights")
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
        _sweeps(model, clean, corrupted, metric, (a, b), cache, args)
    _attribution(model, clean, corrupted, metric, args.repeats)


def _sweeps(model, clean, corrupted, metric, answers, cache, args) -> None:
    n_layers, n_pos = model.cfg.n_layers, clean.shape[1]
    total = n_layers * n_pos
    result: list[torch.Tensor] = []
    sweep = min(_timed(lambda: result.append(get_act_patch_resid_pre(model, corrupted, cache, metric)))
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
    _transformer_lens(model, corrupted, clean, answers, result[-1], sweep, sample, args.tl_python)


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


def _transformer_lens(model, corrupted: torch.Tensor, clean: torch.Tensor, answers: tuple[int, int],
                      ours: torch.Tensor, ours_seconds: float, sample: list[tuple[int, int]], tl_python: str | None
                      ) -> None:
    """TransformerLens's own get_act_patch_resid_pre on the same weights, in the interpreter ``tl_python``
    (tl_patching.py there), which has transformer-lens installed; hookscope's venv need not have it."""
    if not tl_python:
        print("  TransformerLens: skipped: no --tl-python PATH (an interpreter with transformer-lens) given")
        return
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    with tempfile.TemporaryDirectory(prefix="hookscope-tl-") as folder:
        model.to_hf().save_pretrained(folder)  # the same weights, in Hugging Face's format
        spec = os.path.join(folder, "inputs.json")
        with open(spec, "w") as f:
            json.dump({"clean": clean.tolist(), "corrupted": corrupted.tolist(), "answers": list(answers),
                       "indices": [list(i) for i in sample]}, f)
        script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tl_patching.py")
        done = subprocess.run([tl_python, script, folder, spec], capture_output=True, text=True,
                              env={**os.environ, "OMP_NUM_THREADS": "1"}, check=False)
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        print(f"  TransformerLens: skipped: {tl_python} failed ({tail[0]})")
        return
    got = json.loads(lines[-1])
    theirs = got["seconds"] * ours.numel() / len(sample)
    diff = max(abs(value - ours[layer, pos].item()) for value, (layer, pos) in zip(got["result"], sample, strict=True))
    print(f"  TransformerLens {got['version']} get_act_patch_resid_pre: {theirs:7.2f} CPU s ({len(sample)} timed, "
          f"scaled to {ours.numel()}; one forward {got['forward_seconds'] * 1000:.0f} ms); hookscope batched: "
          f"{ours_seconds / theirs:.3f}x its time; max |difference| of the {len(sample)} results {diff:.1e}")


if __name__ == "__main__":
    main()
