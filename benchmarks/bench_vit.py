"""hookscope ViT vs HF ViT (SDPA) on the same random weights at ViT-Base shape.

Run: ``PYTHONPATH=. python benchmarks/bench_vit.py [--batch 16] [--repeats 2] [--device cpu|cuda]``.
ViT-Base/16 shape: 224x224 images, 12 layers, d_model 768, 12 heads, d_mlp 3072, 1000 classes.
Measured: a plain forward (no hooks: our SDPA path), ``run_with_cache`` of the residual stream only,
and ``run_with_cache`` of every hook (the explicit attention path: scores and patterns materialised).
Times are medians of interleaved runs (after a warm-up on CUDA); figures are ratios ours / HF
(below 1: faster).
"""

from __future__ import annotations

import argparse

import torch
import transformers
from timing import median_seconds

import hookscope


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.manual_seed(0)
    cfg = transformers.ViTConfig(num_labels=1000, attn_implementation="sdpa")  # ViT-Base/16 defaults
    hf = transformers.ViTForImageClassification(cfg).eval().to(args.device)
    model = hookscope.load(hf, device=args.device)
    pixels = torch.randn(args.batch, 3, 224, 224, device=args.device)
    resid = lambda n: n.endswith("hook_resid_post")  # noqa: E731
    with torch.inference_mode():
        ref = hf(pixel_values=pixels).logits
        diff = (model(pixels) - ref).abs().max().item()
        times = median_seconds(
            {
                "hf": lambda: hf(pixel_values=pixels),
                "ours": lambda: model(pixels),
                "ours_cache_resid": lambda: model.run_with_cache(pixels, names_filter=resid),
                "ours_cache_all": lambda: model.run_with_cache(pixels),
            },
            args.repeats, args.device,
        )
    print(f"ViT-Base/16, batch {args.batch} of 224x224, {args.device}, {torch.get_num_threads()} threads; "
          f"max |logit diff| vs HF {diff:.2e}")
    print(f"  HF sdpa forward                 {times['hf']:.3f} s")
    for name, label in (("ours", "forward, no hooks"), ("ours_cache_resid", "run_with_cache resid_post"),
                        ("ours_cache_all", "run_with_cache every hook")):
        print(f"  hookscope {label:<26} {times[name]:.3f} s  ratio {times[name] / times['hf']:.2f}")


if __name__ == "__main__":
    main()
