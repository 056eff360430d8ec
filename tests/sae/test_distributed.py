"""Harvesting under torchrun with 2 CPU processes equals harvesting in one; DDP SAE training keeps replicas equal
and resumes from a checkpoint exactly."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import hookscope
from hookscope.sae import harvest
from tests.equivalence.decoder_configs import random_hf_model, random_tokens

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_two_process_harvest_equals_one_process(tmp_path) -> None:
    out = tmp_path / "ddp.pt"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(ROOT / "tests" / "sae" / "ddp_harvest_script.py"), str(out)]
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    got = torch.load(out, weights_only=True)
    model = hookscope.load(random_hf_model("llama"))
    single = harvest(model, "blocks.1.hook_resid_post", random_tokens(7, 6), batch_size=2, progress=False)
    assert torch.equal(got["acts"], single)
    assert got["replicas_equal"]
    assert got["resume_exact"]  # rank 0's resumed run equals its uninterrupted one
