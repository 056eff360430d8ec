"""hookscope DiT vs diffusers ``DiTTransformer2DModel`` on the same random weights: a forward and a sample.

Run: ``PYTHONPATH=. python benchmarks/bench_dit.py [--quick] [--steps 50] [--repeats 3] [--device cpu|cuda]``.
Default shape: DiT-S/2 on 32x32x4 latents (12 layers, d_model 384, 6 heads, 256 patches, 1000 classes),
batch 4; ``--quick``: 4 layers on 16x16 latents. Measured: one forward (no hooks), and a ``--steps``-step
DDIM sample (no guidance) three ways: diffusers' model in a loop over diffusers' ``DDIMScheduler``,
``model.sample`` with no cache, and ``model.sample`` caching one hook (``blocks.{mid}.hook_resid_post``)
at every step. Both samplers start from the same noise and must agree to float32 rounding (checked).
Times are medians of interleaved runs; the ratios are ours / diffusers (below 1: faster).
"""

from __future__ import annotations

import argparse

import diffusers
import torch
from timing import median_seconds

import hookscope


def diffusers_sample(ref: torch.nn.Module, n: int, steps: int, labels: torch.Tensor, shape: tuple) -> torch.Tensor:
    """DDIM over diffusers' model and scheduler, from the noise ``model.sample(seed=0)`` starts with."""
    sched = diffusers.DDIMScheduler(num_train_timesteps=1000)
    sched.set_timesteps(steps)
    x = torch.randn((n, *shape), generator=torch.Generator().manual_seed(0)).to(labels.device)
    c = shape[0]
    for t in sched.timesteps:
        eps = ref(x, timestep=t.expand(n).to(labels.device), class_labels=labels).sample[:, :c]
        x = sched.step(eps, t, x).prev_sample
    return x


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    layers, side = (4, 16) if args.quick else (12, 32)
    torch.manual_seed(0)
    ref = diffusers.DiTTransformer2DModel(
        num_attention_heads=6, attention_head_dim=64, in_channels=4, out_channels=8, num_layers=layers,
        sample_size=side, patch_size=2, num_embeds_ada_norm=1000,
    ).eval().to(args.device)
    model = hookscope.load(ref, device=args.device)
    n, shape = args.batch, (4, side, side)
    x = torch.randn(n, *shape, device=args.device)
    t = torch.full((n,), 500, device=args.device)
    labels = torch.arange(n, device=args.device)
    name = f"blocks.{layers // 2}.hook_resid_post"
    with torch.inference_mode():
        fwd_diff = (model(x, t, labels) - ref(x, timestep=t, class_labels=labels).sample).abs().max().item()
        ours = model.sample(n, args.steps, class_labels=labels, clip_sample=True, seed=0)
        theirs = diffusers_sample(ref, n, args.steps, labels, shape)
        sample_diff = (ours - theirs).abs().max().item()
        times = median_seconds(
            {
                "diffusers forward": lambda: ref(x, timestep=t, class_labels=labels),
                "ours forward": lambda: model(x, t, labels),
                "diffusers sample": lambda: diffusers_sample(ref, n, args.steps, labels, shape),
                "ours sample": lambda: model.sample(n, args.steps, class_labels=labels, seed=0),
                "ours sample + cache": lambda: model.sample(
                    n, args.steps, class_labels=labels, seed=0, return_cache=[name]
                ),
            },
            args.repeats,
            args.device,
        )
    print(f"DiT {layers} layers, {side}x{side}x4 latents, batch {n}, {args.steps} DDIM steps, {args.device}")
    print(f"max |ours - diffusers|: forward {fwd_diff:.2e}, sample {sample_diff:.2e}")
    print(f"forward: diffusers {times['diffusers forward'] * 1e3:.1f} ms, "
          f"ours / diffusers {times['ours forward'] / times['diffusers forward']:.3f}")
    base = times["diffusers sample"]
    print(f"sample: diffusers {base:.2f} s, ours / diffusers {times['ours sample'] / base:.3f}, "
          f"caching {name} every step: {times['ours sample + cache'] / base:.3f} "
          f"(+{(times['ours sample + cache'] / times['ours sample'] - 1) * 100:.1f}% over ours)")


if __name__ == "__main__":
    main()
