"""Checkpoints that resume a run exactly: model, AdamW state, LR schedule, RNG state and the log.

Tensors go to safetensors files (no pickle); everything else to a small JSON file. A checkpoint lives in
``<out_dir>/checkpoints/step_<n>/``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file


def save_model_tensors(model: torch.nn.Module, file: Path) -> None:
    """The model's state in a safetensors file: each tied (shared) tensor once, every tensor contiguous.

    safetensors' own ``save_model`` / ``load_model`` cannot read strided tensors (``load(decode_layout=True)``
    stores wide matrices column-major), so ties are found here: names whose tensors share storage, offset,
    shape and strides; the metadata maps each dropped name to the one kept.
    """
    kept: dict[tuple, str] = {}
    tensors, tied = {}, {}
    for name, tensor in model.state_dict().items():
        key = (tensor.device, tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape),
               tuple(tensor.stride()))
        if tensor.numel() and key in kept:
            tied[name] = kept[key]
            continue
        kept[key] = name
        tensors[name] = tensor.detach().contiguous()
    save_file(tensors, str(file), metadata={"tied": json.dumps(tied)})


def load_model_tensors(model: torch.nn.Module, file: Path) -> None:
    """Copy a :func:`save_model_tensors` file into ``model`` in place (each parameter keeps its layout)."""
    from safetensors import safe_open

    with safe_open(str(file), framework="pt") as handle:
        tied = json.loads((handle.metadata() or {}).get("tied", "{}"))
    tensors = load_file(str(file))
    state = {name: tensors[tied.get(name, name)] for name in model.state_dict() if tied.get(name, name) in tensors}
    missing = sorted(set(model.state_dict()) - set(state))
    unexpected = sorted(set(tensors) - set(model.state_dict()))
    if missing or unexpected:
        raise ValueError(f"checkpoint {file.parent} does not fit this model: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    model.load_state_dict(state)


def checkpoint_dir(out_dir: str | Path, step: int) -> Path:
    return Path(out_dir) / "checkpoints" / f"step_{step:07d}"


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    """The newest complete checkpoint under ``out_dir`` (one with its ``state.json``), or None."""
    root = Path(out_dir) / "checkpoints"
    done = sorted(p for p in root.glob("step_*") if (p / "state.json").exists()) if root.is_dir() else []
    return done[-1] if done else None


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, entry in state["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{index}.{key}"] = value.contiguous()
            else:
                scalars[f"{index}.{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def save_checkpoint(
    path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, step: int, log: list,
    config: dict | None = None,
) -> None:
    """Write a checkpoint; ``state.json`` is written last, so a half-written one is never picked up."""
    path.mkdir(parents=True, exist_ok=True)
    save_model_tensors(model, path / "model.safetensors")
    tensors, meta = _optimizer_tensors(optimizer)
    rng = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng.update({f"cuda_{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    save_file({**{f"optim.{k}": v for k, v in tensors.items()}, **{f"rng.{k}": v for k, v in rng.items()}},
              str(path / "state.safetensors"))
    info = {"step": step, "optimizer": meta, "scheduler": scheduler.state_dict(), "log": log, "config": config}
    tmp = path / "state.json.tmp"
    tmp.write_text(json.dumps(info))
    tmp.replace(path / "state.json")


# settings that change the run's trajectory: resuming under others is no longer the same run
TRAJECTORY = ("batch_size", "grad_accum_steps", "lr", "warmup_steps", "min_lr_ratio", "weight_decay", "betas",
              "adam_eps", "max_grad_norm", "seed", "bf16")


def config_changes(path: Path, config: dict) -> list[str]:
    """The trajectory settings of ``config`` that differ from those the checkpoint was written under."""
    saved = json.loads((path / "state.json").read_text()).get("config") or {}
    return [f"{k}: {saved[k]!r} -> {config[k]!r}" for k in TRAJECTORY
            if k in saved and json.loads(json.dumps(config[k])) != saved[k]]


def load_checkpoint(
    path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any
) -> tuple[int, list]:
    """Restore a checkpoint in place; returns (step reached, log so far)."""
    info = json.loads((path / "state.json").read_text())
    load_model_tensors(model, path / "model.safetensors")
    tensors = load_file(str(path / "state.safetensors"))
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            index, name = key[len("optim."):].split(".", 1)
            state.setdefault(int(index), {})[name] = value
    for key, value in info["optimizer"]["scalars"].items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": info["optimizer"]["param_groups"]})
    scheduler.load_state_dict(info["scheduler"])
    torch.set_rng_state(tensors["rng.torch_cpu"])
    cuda_keys = sorted((k for k in tensors if k.startswith("rng.cuda_")), key=lambda k: int(k.rsplit("_", 1)[1]))
    cuda = [tensors[k] for k in cuda_keys]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    return int(info["step"]), list(info["log"])
