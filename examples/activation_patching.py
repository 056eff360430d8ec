"""Activation patching: which layer's residual stream carries "France" -> " Paris"?

Runs a clean prompt and a corrupted one, then patches the clean residual stream at each layer (last
position) into the corrupted run and reports how much of the " Paris" logit comes back.
Usage: python examples/activation_patching.py [--model smollm2-135m] [--layers N]
"""

from __future__ import annotations

import argparse

import torch

import hookscope


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--layers", type=int, default=None, help="only patch the first N layers")
    args = parser.parse_args()
    model = hookscope.load(args.model, progress=False)
    clean = model.to_tokens("The capital of France is")
    corrupt = model.to_tokens("The capital of Italy is")
    if clean.shape != corrupt.shape:
        raise SystemExit("the two prompts must have the same number of tokens")
    paris = model.to_single_token(" Paris")
    with torch.no_grad():
        clean_logits, cache = model.run_with_cache(clean, names_filter=lambda n: n.endswith("hook_resid_pre"))
        corrupt_logits = model(corrupt)
    base, top = float(corrupt_logits[0, -1, paris]), float(clean_logits[0, -1, paris])
    print(f"' Paris' logit: clean {top:.2f}, corrupted {base:.2f}")
    for layer in range(args.layers or model.cfg.n_layers):
        def patch(resid: torch.Tensor, hook, layer: int = layer) -> torch.Tensor:
            resid = resid.clone()
            resid[:, -1] = cache["resid_pre", layer][:, -1]
            return resid

        with torch.no_grad():
            logits = model.run_with_hooks(corrupt, fwd_hooks=[(f"blocks.{layer}.hook_resid_pre", patch)])
        recovered = (float(logits[0, -1, paris]) - base) / (top - base)
        print(f"layer {layer:2d}: {recovered:6.1%} of the clean ' Paris' logit recovered")


if __name__ == "__main__":
    main()
