"""Steering while generating: add a direction to the residual stream at one layer at every step.

The direction is the difference of the mean residual streams of two prompts (a contrastive pair).
Usage: python examples/steering.py [--model smollm2-135m] [--layer 12] [--scale 6]
"""

from __future__ import annotations

import argparse

import torch

import hookscope


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--layer", type=int, default=12)
    parser.add_argument("--scale", type=float, default=6.0)
    parser.add_argument("--tokens", type=int, default=20)
    args = parser.parse_args()
    model = hookscope.load(args.model, progress=False)
    name = f"blocks.{args.layer}.hook_resid_post"
    acts = {}
    for word in ("love", "hate"):
        _, cache = model.run_with_cache(f"I {word} you because", names_filter=name)
        acts[word] = cache[name][0].mean(0)
    direction = acts["love"] - acts["hate"]
    direction = direction / direction.norm()

    def steer(resid: torch.Tensor, hook) -> torch.Tensor:
        return resid + args.scale * direction * resid.norm(dim=-1, keepdim=True) / resid.shape[-1] ** 0.5

    prompt = "I think that you are"
    plain = model.generate(prompt, args.tokens, return_type="str")
    with model.hooks(fwd_hooks=[(name, steer)]):
        steered = model.generate(prompt, args.tokens, return_type="str")
    print(f"plain:   {plain!r}\nsteered: {steered!r}")


if __name__ == "__main__":
    main()
