"""The SAELens half of ``bench_sae.py``'s side-by-side: run by the interpreter given as ``--saelens-python``.

It never imports hookscope. It trains SAELens's own ``TopKTrainingSAE`` / ``StandardTrainingSAE`` with
``SAETrainer`` on the activations in a safetensors file (the same rows, batch order and hyper-parameters as
hookscope's run), times ``fit()``, saves the inference SAE (``save_inference_model``) and prints one JSON line
with the wall and CPU time and SAELens's own explained variance and L0 on the held-out rows.

Usage: python saelens_side.py --acts acts.safetensors --arch topk --d-sae 2304 --k 32 --lr 1e-3
       --batch 512 --steps 100 --out folder
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Iterator

import torch
from safetensors.torch import load_file


def batches(train: torch.Tensor, batch: int, seed: int) -> Iterator[torch.Tensor]:
    """Endless batches: each pass over ``train`` in a fresh seeded order."""
    gen = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(len(train), generator=gen)
        for i in range(0, len(order) - batch + 1, batch):
            yield train[order[i : i + batch]]


def build(args: argparse.Namespace, d_in: int):  # -> a SAELens TrainingSAE
    from sae_lens import StandardTrainingSAE, StandardTrainingSAEConfig, TopKTrainingSAE, TopKTrainingSAEConfig

    common = {"d_in": d_in, "d_sae": args.d_sae, "dtype": "float32", "device": "cpu",
              "normalize_activations": args.normalize}
    if args.arch == "topk":
        cfg = TopKTrainingSAEConfig(k=args.k, aux_loss_coefficient=args.aux_k_coefficient, **common)
        return TopKTrainingSAE(cfg)
    cfg = StandardTrainingSAEConfig(l1_coefficient=args.l1, **common)
    return StandardTrainingSAE(cfg)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--acts", required=True, help="safetensors with 'train' [n, d_in] and 'held_out' [m, d_in]")
    p.add_argument("--arch", choices=["topk", "standard"], default="topk")
    p.add_argument("--d-sae", type=int, required=True)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--l1", type=float, default=5.0)
    p.add_argument("--aux-k-coefficient", type=float, default=1 / 32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--dead-feature-window", type=int, default=200)
    p.add_argument("--normalize", default="expected_average_only_in")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    torch.manual_seed(args.seed)
    from sae_lens import SAETrainer
    from sae_lens.config import SAETrainerConfig

    data = load_file(args.acts)
    train, held_out = data["train"].float(), data["held_out"].float()
    sae = build(args, train.shape[1])
    cfg = SAETrainerConfig(
        total_training_samples=args.batch * args.steps, train_batch_size_samples=args.batch, lr=args.lr,
        lr_end=args.lr, dead_feature_window=args.dead_feature_window, feature_sampling_window=10**9,
        n_batches_for_norm_estimate=1,  # hookscope estimates the scale on its first batch too
    )
    trainer = SAETrainer(cfg, sae, batches(train, args.batch, args.seed))
    start, cpu_start = time.perf_counter(), time.process_time()
    trained = trainer.fit()
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    trained.save_inference_model(args.out)
    trained.eval()
    with torch.no_grad():
        acts = trained.encode(held_out)
        recons = trained.decode(acts)
    err = (held_out - recons).pow(2).sum()
    total = (held_out - held_out.mean(0)).pow(2).sum()
    print(json.dumps({
        "seconds": seconds, "cpu_seconds": cpu_seconds, "rows_per_s": args.batch * args.steps / seconds,
        "rows_per_cpu_s": args.batch * args.steps / cpu_seconds,
        "explained_variance": float(1 - err / total), "l0": float((acts != 0).sum(-1).float().mean()),
    }))


if __name__ == "__main__":
    main()
