"""Run under torchrun (2 CPU processes, gloo): harvest, a short SAE training and its resumption from a
checkpoint; rank 0 saves the results."""

from __future__ import annotations

import shutil
import sys
from dataclasses import replace
from pathlib import Path

import torch
import torch.distributed as dist

import hookscope
from hookscope.sae import SAETrainingConfig, harvest, train_sae
from tests.equivalence.decoder_configs import random_hf_model, random_tokens


def main(out_path: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    model = hookscope.load(random_hf_model("llama"))
    acts = harvest(model, "blocks.1.hook_resid_post", random_tokens(7, 6), batch_size=2, progress=False)
    cfg = SAETrainingConfig(architecture="topk", d_sae=32, k=4, training_tokens=32 * 6, batch_size=32,
                            buffer_size=64, progress=False, seed=0)
    sae = train_sae(None, None, acts, cfg)
    # a run that stops after a checkpoint and is started again ends where the uninterrupted run ends
    ckpt = Path(out_path).parent / "ckpt"
    with_ckpt = replace(cfg, checkpoint_every=2, checkpoint_dir=str(ckpt))
    train_sae(None, None, acts, with_ckpt)
    dist.barrier()
    if dist.get_rank() == 0:
        shutil.rmtree(ckpt / "step_0000006")
    dist.barrier()
    resumed = train_sae(None, None, acts, with_ckpt)
    resume_exact = all(torch.equal(a, b) for a, b in zip(sae.state_dict().values(), resumed.state_dict().values()))
    # DDP keeps the replicas equal: every rank ends with the same weights
    gathered = [torch.zeros_like(sae.W_dec) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, sae.W_dec.detach().contiguous())
    if dist.get_rank() == 0:
        torch.save({"acts": acts, "replicas_equal": all(torch.equal(g, gathered[0]) for g in gathered),
                    "resume_exact": resume_exact}, out_path)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
