"""SAE training checkpoints that resume a run bit for bit.

A checkpoint is a folder ``<checkpoint_dir>/step_<n>/`` holding the SAE in SAELens's format (usable as is,
see :mod:`hookscope.sae.saelens`) and the trainer's state: the SAE's raw training parameters and buffers
(before the input scale and decoder norms are folded), Adam's moments, the steps since each latent last
fired, the torch RNG state, the metrics logged so far and the step reached. Tensors go to safetensors (no
pickle), the rest to ``trainer_state.json``, written last so a half-written checkpoint is never resumed.
The position in the activation stream is the step count: a resumed run replays its (seeded) stream up to
that step.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from hookscope.sae.sae import SAE

STATE_JSON = "trainer_state.json"
STATE_TENSORS = "trainer_state.safetensors"
# config fields that may change between a run and its resumption without changing the numbers
# (b_dec_init: the start is overwritten by the checkpoint's parameters)
_FREE_FIELDS = frozenset({"progress", "checkpoint_every", "checkpoint_dir", "resume", "log_every", "device",
                          "b_dec_init"})


def checkpoint_folder(root: str | Path, step: int) -> Path:
    return Path(root) / f"step_{step:07d}"


def latest_checkpoint(root: str | Path | None) -> Path | None:
    """The newest complete checkpoint under ``root`` (one with its ``trainer_state.json``), or None."""
    if root is None or not Path(root).is_dir():
        return None
    done = sorted(p for p in Path(root).glob("step_*") if (p / STATE_JSON).is_file())
    return done[-1] if done else None


def save_trainer_state(
    folder: Path, sae: SAE, optimizer: torch.optim.Optimizer, since_fired: torch.Tensor, step: int,
    history: list[dict[str, float]], config: dict[str, Any],
) -> None:
    """Write the SAE (SAELens's format) and everything a bit-exact resumption needs into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    copy = SAE(sae.cfg, device="cpu")
    copy.load_state_dict({k: v.detach().cpu() for k, v in sae.state_dict().items()})
    copy.fold_decoder_norms_into_encoder()  # the training function with unit decoder rows (TopK ranks by the norms)
    copy.save(folder)
    opt = optimizer.state_dict()
    tensors = {f"sae.{k}": v.detach().cpu().contiguous() for k, v in sae.state_dict().items()}
    scalars: dict[str, Any] = {}
    for index, entry in opt["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{index}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{index}.{key}"] = value
    tensors["since_fired"] = since_fired.detach().cpu().contiguous()
    tensors["rng.torch_cpu"] = torch.get_rng_state()
    save_file(tensors, str(folder / STATE_TENSORS))
    info = {"step": step, "param_groups": opt["param_groups"], "optim_scalars": scalars, "history": history,
            "config": config}
    tmp = folder / (STATE_JSON + ".tmp")
    tmp.write_text(json.dumps(info))
    tmp.replace(folder / STATE_JSON)


def load_trainer_state(
    folder: Path, sae: SAE, optimizer: torch.optim.Optimizer, config: dict[str, Any],
) -> tuple[int, torch.Tensor, list[dict[str, float]]]:
    """Restore ``sae`` and ``optimizer`` in place from ``folder``; returns (step, since_fired, history).

    Raises ValueError when the checkpoint was written by a run with a different configuration (other than
    progress / logging / checkpointing fields), since continuing it would not be the run asked for.
    """
    info = json.loads((folder / STATE_JSON).read_text())
    changed = sorted(k for k in set(config) | set(info["config"])
                     if k not in _FREE_FIELDS and config.get(k) != info["config"].get(k))
    if changed:
        raise ValueError(
            f"checkpoint {folder} was written by a run with other settings ({changed}); "
            "use another checkpoint_dir, or resume=False to start afresh"
        )
    tensors = load_file(str(folder / STATE_TENSORS))
    device = sae.W_enc.device
    sae.load_state_dict({k[len("sae."):]: v.to(device) for k, v in tensors.items() if k.startswith("sae.")})
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            index, name = key[len("optim."):].split(".", 1)
            state.setdefault(int(index), {})[name] = value.to(device) if name != "step" else value
    for key, value in info["optim_scalars"].items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": info["param_groups"]})
    torch.set_rng_state(tensors["rng.torch_cpu"])
    return int(info["step"]), tensors["since_fired"].to(device), list(info["history"])
