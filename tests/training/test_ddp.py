"""DDP under torchrun: 2 CPU processes (gloo) give the same losses and weights as 1 process with the same
global batch (float64, so only the order of the gradient sum differs)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hookscope.models.decoder import Decoder
from hookscope.models.decoder_config import DecoderConfig
from hookscope.training import TrainingConfig, train

ROOT = Path(__file__).resolve().parents[2]


def ddp_setup() -> tuple[Decoder, torch.Tensor, TrainingConfig]:
    torch.set_num_threads(1)
    cfg = DecoderConfig(d_model=16, n_layers=1, n_heads=2, d_head=8, d_mlp=12, d_vocab=23, n_ctx=12)
    rows = torch.randint(0, 23, (20, 10), generator=torch.Generator().manual_seed(0))
    config = TrainingConfig(steps=3, batch_size=8, grad_accum_steps=2, lr=1e-2, progress=False)
    return Decoder.from_config(cfg, seed=0).double(), rows, config


@pytest.mark.slow
def test_two_processes_equal_one_with_the_same_global_batch(tmp_path) -> None:
    out = tmp_path / "rank0.safetensors"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(ROOT / "tests" / "training" / "ddp_worker.py"), str(out)]
    done = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    two = load_file(str(out))
    model, rows, config = ddp_setup()
    one = train(model, rows, config)
    torch.testing.assert_close(two.pop("losses"), torch.tensor(one.losses, dtype=torch.float64),
                               atol=1e-12, rtol=1e-12)
    for name, value in model.state_dict().items():
        torch.testing.assert_close(two[name], value, atol=1e-12, rtol=1e-12, msg=name)
