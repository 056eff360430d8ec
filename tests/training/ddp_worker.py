"""Run under torchrun by test_ddp.py: train the shared tiny setup and write rank 0's losses and weights."""

from __future__ import annotations

import os
import sys

import torch
from safetensors.torch import save_file

from hookscope.training import train
from tests.training.test_ddp import ddp_setup

if __name__ == "__main__":
    model, rows, config = ddp_setup()
    result = train(model, rows, config)
    if os.environ["RANK"] != "0":  # train() closed the process group it opened; torchrun's RANK remains
        sys.exit(0)
    save_file({**{k: v.contiguous() for k, v in model.state_dict().items()},
               "losses": torch.tensor(result.losses, dtype=torch.float64)}, sys.argv[1])
