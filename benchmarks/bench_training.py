"""Training throughput: ``hookscope.training.train`` on a native decoder vs a plain PyTorch loop on HF's
``GPT2LMHeadModel``, same weights, same config (no dropout on either side), same AdamW, schedule, clipping
and batch.

Run: ``PYTHONPATH=. python benchmarks/bench_training.py [--steps 20] [--batch 8] [--pos 128] [--compile]``.
Each side runs ``--warmup`` steps untimed, then ``--steps`` timed steps; the sides alternate ``--rounds``
times and the median tokens/s of each is printed with the ratio hookscope / HF (above 1: hookscope is
faster). hookscope's time includes everything ``train`` does per step (batch selection, collation, loss,
logging, the progress bar switched off).

Measured (shared 2-core CPU, 1 thread, defaults): HF 1879 tokens/s, hookscope 1888 tokens/s (1.00x);
with ``--compile`` HF 1359, hookscope 875 (0.64x: compiling does not pay on this CPU for either side).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
import transformers

import hookscope
from hookscope.training import TrainingConfig, lr_factor, train


def _hf_model(d_model: int, n_layers: int, vocab: int, n_ctx: int) -> transformers.GPT2LMHeadModel:
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_embd=d_model, n_layer=n_layers, n_head=d_model // 64, vocab_size=vocab,
                                  n_positions=n_ctx, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                                  bos_token_id=0, eos_token_id=0)
    return transformers.GPT2LMHeadModel(cfg)


def plain_loop(model: torch.nn.Module, rows: torch.Tensor, config: TrainingConfig, steps: int) -> float:
    """The loop a user writes by hand on HF; returns seconds for ``steps`` steps."""
    decay = [p for p in model.parameters() if p.ndim >= 2]
    rest = [p for p in model.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                             {"params": rest, "weight_decay": 0.0}], lr=config.lr, betas=config.betas)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, config))
    model.train()
    gen = torch.Generator().manual_seed(0)
    t0 = time.perf_counter()
    for _ in range(steps):
        batch = rows[torch.randint(0, len(rows), (config.batch_size,), generator=gen)]
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm or float("inf"))
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
    return time.perf_counter() - t0


def hookscope_loop(model: torch.nn.Module, rows: torch.Tensor, config: TrainingConfig, steps: int) -> float:
    t0 = time.perf_counter()
    train(model, rows, TrainingConfig(**{**config.to_dict(), "steps": steps}))
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--pos", type=int, default=128)
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--compile", action="store_true", help="torch.compile both models")
    args = parser.parse_args()
    hf = _hf_model(args.d_model, args.layers, args.vocab, args.pos)
    native = hookscope.load(copy.deepcopy(hf))
    hf_runner = torch.compile(hf) if args.compile else hf
    rows = torch.randint(0, args.vocab, (256, args.pos), generator=torch.Generator().manual_seed(0))
    config = TrainingConfig(steps=1, batch_size=args.batch, lr=3e-4, warmup_steps=0, progress=False,
                            compile=args.compile)
    tokens = args.steps * args.batch * args.pos
    print(f"GPT-2 shape d_model {args.d_model}, {args.layers} layers, vocab {args.vocab}; batch {args.batch} x "
          f"{args.pos}; {torch.get_num_threads()} threads; compile={args.compile}")
    plain_loop(hf_runner, rows, config, args.warmup)
    hookscope_loop(native, rows, config, args.warmup)
    ours, theirs = [], []
    for _ in range(args.rounds):
        theirs.append(tokens / plain_loop(hf_runner, rows, config, args.steps))
        ours.append(tokens / hookscope_loop(native, rows, config, args.steps))
    o, t = statistics.median(ours), statistics.median(theirs)
    print(f"HF GPT2LMHeadModel, plain loop : {t:10.0f} tokens/s")
    print(f"hookscope.training.train       : {o:10.0f} tokens/s")
    print(f"ratio hookscope / HF           : {o / t:10.2f}x")


if __name__ == "__main__":
    main()
