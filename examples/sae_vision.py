"""Vision SAE end to end: train a small ViT from scratch on scikit-learn's 8x8 digits, train a TopK SAE on its
middle residual stream, evaluate it (explained variance, L0, accuracy with the SAE spliced in), write feature
views, and steer classification with a mean-difference vector and with an SAE latent.

Usage: python examples/sae_vision.py [--epochs 40] [--d-sae 512] [--k 16] [--out sae-vision]
Needs scikit-learn (its bundled digits; nothing is downloaded). The SAE is written to --out (SAELens's format).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F

import hookscope
from hookscope.models.vit_config import ViTConfig
from hookscope.sae import SAETrainingConfig, harvest, mean_difference, steered, train_sae
from hookscope.sae.evaluate import classification_change, reconstruction_metrics
from hookscope.sae.steering import feature_direction
from hookscope.viz.feature_view import feature_page
from hookscope.viz.sae_views import image_cards


def digits() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """scikit-learn's 1,797 digits as ``[n, 1, 8, 8]`` in 0..1: 1,400 to train, the rest to test (fixed split)."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32)[:, None] / 16.0
    y = torch.tensor(data.target)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    x, y = x[order], y[order]
    return x[:1400], y[:1400], x[1400:], y[1400:]


def train_vit(x: torch.Tensor, y: torch.Tensor, epochs: int, seed: int = 0) -> hookscope.ViT:
    """A 3-layer ViT over 2x2 patches (16 patches + class token), trained with AdamW and cross-entropy."""
    torch.manual_seed(seed)
    cfg = ViTConfig(d_model=64, n_layers=3, n_heads=4, d_head=16, d_mlp=128, image_size=(8, 8), patch_size=2,
                    n_channels=1, head="class", n_classes=10, norm_eps=1e-6)
    model = hookscope.ViT(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    gen = torch.Generator().manual_seed(seed)
    steps = epochs * (len(x) // 64)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=gen)
        for i in range(len(x) // 64):
            idx = order[i * 64 : (i + 1) * 64]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return model.eval()


@torch.no_grad()
def accuracy(model: hookscope.ViT, x: torch.Tensor, y: torch.Tensor) -> float:
    return float((model(x).argmax(-1) == y).float().mean())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--layer", type=int, default=1)
    p.add_argument("--d-sae", type=int, default=512)
    p.add_argument("--k", type=int, default=16)
    p.add_argument("--sae-epochs", type=float, default=10.0)
    p.add_argument("--out", default="sae-vision")
    args = p.parse_args()
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)  # denormal activations slow CPU kernels many times over
    x_train, y_train, x_test, y_test = digits()
    model = train_vit(x_train, y_train, args.epochs)
    hook = f"blocks.{args.layer}.hook_resid_post"
    acts = harvest(model, hook, x_train, batch_size=200, progress=False)  # every position: class token + 16 patches
    cfg = SAETrainingConfig(architecture="topk", d_sae=args.d_sae, k=args.k, batch_size=256, lr=2e-3,
                            training_tokens=int(len(acts) * args.sae_epochs), lr_warmup_steps=20,
                            lr_decay_steps=int(len(acts) * args.sae_epochs) // 256 // 5, buffer_size=8192,
                            dead_feature_window=200, seed=0, progress=False)
    sae = train_sae(None, hook, acts, cfg)
    out = Path(args.out)
    sae.save(out)
    test_acts = harvest(model, hook, x_test, batch_size=200, progress=False)
    metrics = {"vit_test_accuracy": accuracy(model, x_test, y_test), "hook": hook,
               "held_out": reconstruction_metrics(sae, test_acts),
               "spliced": classification_change(model, sae, x_test, y_test)}

    # steering: the mean difference "images of a 3" minus "images of an 8", added to every 8 in the test set
    src, dst = 8, 3
    direction = mean_difference(model, hook, list(x_train[y_train == dst][:100, None]),
                                list(x_train[y_train == src][:100, None]))
    eights = x_test[y_test == src]
    with torch.no_grad():
        before = model(eights).softmax(-1)[:, dst].mean()
        with steered(model, hook, direction, strength=1.0):
            after_logits = model(eights)
    metrics["steer_8_to_3"] = {"p3_before": float(before), "p3_after": float(after_logits.softmax(-1)[:, dst].mean()),
                               "classified_3_after": float((after_logits.argmax(-1) == dst).float().mean())}
    # an SAE latent: the one whose decoder direction most raises the "0" logit through the rest of the model
    with torch.no_grad():
        lat = sae.encode(test_acts).reshape(len(x_test), 17, -1)[:, 0]  # class-token latents
        j = int((lat * (y_test[:, None] == 0)).mean(0).sub(lat.mean(0)).argmax())
        base = model(eights).softmax(-1)[:, 0].mean()
        with steered(model, hook, feature_direction(sae, j), strength=float(test_acts.norm(dim=-1).mean())):
            moved = model(eights).softmax(-1)[:, 0].mean()
    metrics["steer_latent_to_0"] = {"latent": j, "p0_before": float(base), "p0_after": float(moved)}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    print(json.dumps(metrics, indent=2))
    density = sae.encode(test_acts).gt(0).float().mean(0)
    latents = [*density.argsort(descending=True)[[5, 20, 50, 100]].tolist(), j]
    feature_page(image_cards(model, sae, x_test, latents, grid=(4, 4)), title="ViT digits SAE features",
                 path=out / "features.html")
    print(f"feature views: {out / 'features.html'}")


if __name__ == "__main__":
    main()
