"""A diffusion transformer trained on scikit-learn's 8x8 digits, looked at step by step.

1. Trains a small class-conditional DiT from scratch (DDPM noise-prediction loss, 10% null labels for
   classifier-free guidance) on ``sklearn.datasets.load_digits`` (1,797 images, offline).
2. Samples digits of every class and scores them with an independent judge: a logistic regression
   trained on real digits (its accuracy on held-out real digits is printed for comparison).
3. Per-step activations: the residual-stream norm of every block at every denoising step.
4. Per-step lens: the clean image each block's residual already implies, at every step.
5. Steering at chosen steps: from step s on, the class embedding of every block is replaced by another
   class's; the judge shows from which step on the image no longer changes class (when it is decided).

Usage: python examples/diffusion_steps.py [--train-steps 2500] [--out figures/] [--checkpoint dit.safetensors]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression

import hookscope
from hookscope.analysis.diffusion import dit_lens
from hookscope.components.noise_schedule import NoiseSchedule

CFG = hookscope.DiTConfig(n_layers=4, n_heads=4, d_head=16, in_channels=1, out_channels=1, sample_size=8,
                          patch_size=2, n_classes=10, d_mlp=128)


def digits() -> tuple[torch.Tensor, torch.Tensor]:
    """Images ``[1797, 1, 8, 8]`` scaled from 0..16 to [-1, 1], and their labels."""
    data = load_digits()
    images = torch.tensor(data.images, dtype=torch.float32)[:, None] / 8.0 - 1.0
    return images, torch.tensor(data.target)


def train(model: hookscope.DiT, images: torch.Tensor, labels: torch.Tensor, steps: int, seed: int) -> float:
    """Plain DDPM training: predict the noise added at a random timestep; returns the last losses' mean.

    The model ends with an exponential moving average of its weights (decay 0.995), which samples
    markedly cleaner than the last iterate after a short run.
    """
    schedule = NoiseSchedule(n_train_timesteps=CFG.n_train_timesteps)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.0)
    ema = {k: v.detach().clone() for k, v in model.state_dict().items()}
    lr_at = lambda i: min(1.0, (i + 1) / 200) * 0.5 * (1 + np.cos(np.pi * i / steps))  # noqa: E731
    losses = []
    model.train()
    for i in range(steps):
        idx = torch.randint(len(images), (128,), generator=gen)
        x0, y = images[idx], labels[idx].clone()
        y[torch.rand(len(y), generator=gen) < 0.1] = CFG.n_classes  # null label: guidance needs it
        t = torch.randint(CFG.n_train_timesteps, (len(y),), generator=gen)
        noise = torch.randn(x0.shape, generator=gen)
        loss = F.mse_loss(model(schedule.add_noise(x0, noise, t), t, y), noise)
        for group in opt.param_groups:
            group["lr"] = 2e-3 * lr_at(i)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            for k, v in model.state_dict().items():
                ema[k].lerp_(v, 0.005)
        losses.append(loss.item())
    model.load_state_dict(ema)
    model.eval()
    return float(np.mean(losses[-100:]))


def judge() -> tuple[LogisticRegression, float]:
    """Logistic regression on real digits (pixels 0..16); returns it and its held-out accuracy."""
    data = load_digits()
    x, y = data.data, data.target
    order = np.random.default_rng(0).permutation(len(x))
    train_idx, test_idx = order[:1400], order[1400:]
    clf = LogisticRegression(max_iter=2000).fit(x[train_idx], y[train_idx])
    return clf, float(clf.score(x[test_idx], y[test_idx]))


def to_pixels(images: torch.Tensor) -> np.ndarray:
    """[-1, 1] images ``[n, 1, 8, 8]`` -> the judge's 0..16 pixel rows ``[n, 64]``."""
    return ((images.clamp(-1, 1) + 1) * 8.0).reshape(len(images), -1).numpy()


def save_grid(images: torch.Tensor, path: Path, title: str) -> None:
    """Images ``[rows, cols, 8, 8]`` as one figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, cols = images.shape[:2]
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 0.8, rows * 0.8 + 0.4), squeeze=False)
    for r in range(rows):
        for c in range(cols):
            axes[r][c].imshow(images[r, c].numpy(), cmap="gray_r", vmin=-1, vmax=1)
            axes[r][c].axis("off")
    fig.suptitle(title, fontsize=9)
    fig.savefig(path, dpi=80, bbox_inches="tight")
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--train-steps", type=int, default=2500)
    parser.add_argument("--sample-steps", type=int, default=50)
    parser.add_argument("--per-class", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=2.0)
    parser.add_argument("--out", type=Path, default=Path("diffusion_figures"))
    parser.add_argument("--checkpoint", type=Path, default=None, help="load it if it exists, else save there")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    images, labels = digits()
    model = hookscope.DiT(CFG)
    if args.checkpoint is not None and args.checkpoint.exists():
        from safetensors.torch import load_file

        model.load_state_dict(load_file(str(args.checkpoint)))
        model.eval()
        print(f"loaded {args.checkpoint}")
    else:
        start = time.perf_counter()
        loss = train(model, images, labels, args.train_steps, args.seed)
        print(f"trained {args.train_steps} steps in {time.perf_counter() - start:.0f} s; final loss {loss:.4f}")
        if args.checkpoint is not None:
            from safetensors.torch import save_file

            save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(args.checkpoint))

    # 2. samples of every class, judged by a classifier trained on real digits
    clf, real_acc = judge()
    k, steps, g = args.per_class, args.sample_steps, args.guidance
    wanted = torch.arange(10).repeat_interleave(k)
    samples = model.sample(len(wanted), steps, class_labels=wanted, guidance_scale=g, seed=args.seed)
    predicted = clf.predict(to_pixels(samples))
    per_class = [(predicted[wanted.numpy() == c] == c).mean() for c in range(10)]
    print(f"judge accuracy on held-out real digits: {real_acc:.3f}")
    print(f"judge accuracy on {len(wanted)} sampled digits ({steps} DDIM steps, guidance {g}): "
          f"{(predicted == wanted.numpy()).mean():.3f}")
    print("per class: " + " ".join(f"{c}:{a:.2f}" for c, a in enumerate(per_class)))
    save_grid(samples[:, 0].reshape(10, k, 8, 8)[:, :10], args.out / "samples.png", "samples, one row per class")

    # 3 + 4. per-step activations and the per-step lens, for one sample of each class
    names = [f"blocks.{i}.hook_resid_post" for i in range(CFG.n_layers)] + ["blocks.0.hook_cond"]
    _, cache = model.sample(10, steps, class_labels=torch.arange(10), guidance_scale=g, seed=1, return_cache=names)
    norms = torch.stack([cache[n][:, :10].norm(dim=-1).mean(dim=(1, 2)) for n in names[:-1]])  # [layer, step]
    shown = [*range(0, steps, max(1, steps // 5)), steps - 1]
    print("residual norm per block (rows) at steps " + ", ".join(map(str, shown)) + ":")
    for i, row in enumerate(norms):
        print(f"  block {i}: " + " ".join(f"{row[s]:.2f}" for s in shown))
    final = cache["sampler.pred_x0"][-1]
    print("lens: mean |predicted clean image - final sample| per block (rows) at the same steps:")
    lens_rows = []
    for layer in range(CFG.n_layers):
        lens = dit_lens(model, cache, layer, guidance_scale=g)  # [step, n, 1, 8, 8]
        gap = (lens - final).abs().mean(dim=(1, 2, 3, 4))
        print(f"  block {layer}: " + " ".join(f"{gap[s]:.3f}" for s in shown))
        lens_rows.append(lens[shown, 3, 0])  # the digit 3, at the shown steps
    save_grid(torch.stack(lens_rows), args.out / "lens.png", "lens of digit 3: blocks (rows) x steps (columns)")

    # 5. steering: from step s on, every block's class embedding says `target` instead of `source`
    source, target, n = 1, 7, 50
    names = [f"blocks.{i}.cond.hook_class_embed" for i in range(CFG.n_layers)]

    def to_target(emb: torch.Tensor, hook) -> torch.Tensor:
        table = model.get_submodule(hook.name.rsplit(".", 1)[0]).class_table.weight
        emb = emb.clone()
        emb[:n] = table[target]  # the conditional rows (with guidance the null-class rows follow)
        return emb

    rows = []
    for switch in sorted({round(f * steps) for f in (0, 0.2, 0.4, 0.6, 0.8, 0.9, 0.96, 1.0)}):
        late = range(switch, steps)
        hooks = [(name, hookscope.at_steps(to_target, late)) for name in names] if switch < steps else []
        out = model.sample(n, steps, class_labels=source, guidance_scale=g, seed=2, fwd_hooks=hooks)
        judged = clf.predict(to_pixels(out))
        rows.append(out[:10, 0])
        print(f"class embedding {source}->{target} from step {switch:2d} of {steps}: judged {target}: "
              f"{(judged == target).mean():.2f}, judged {source}: {(judged == source).mean():.2f}")
    save_grid(torch.stack(rows), args.out / "steered.png",
              f"class {source} switched to {target} from later and later steps (rows)")
    print(f"figures written to {args.out}/")


if __name__ == "__main__":
    main()
