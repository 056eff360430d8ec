"""``load()``: one entry point for hub ids, local folders, GGUF files, packaged models and HF model objects."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hookscope.components.layout import stream_layout
from hookscope.errors import LoadError

logger = logging.getLogger(__name__)


_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float64": torch.float64, "fp64": torch.float64,
           "bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}


def resolve_dtype(dtype: torch.dtype | str | None) -> torch.dtype:
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        if not dtype.is_floating_point:
            raise LoadError(f"dtype must be a floating-point dtype, got {dtype}")
        return dtype
    if dtype not in _DTYPES:
        raise LoadError(f"unknown dtype {dtype!r}; use one of {sorted(_DTYPES)} or a torch.dtype")
    return _DTYPES[dtype]


def resolve_device(device: torch.device | str | None) -> torch.device:
    if device is None:
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise LoadError(f"unknown device {device!r}: {err}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise LoadError(f"device {device!r} was asked for but CUDA is not available on this machine")
    return dev


def load(
    source: str | os.PathLike | nn.Module,
    dtype: torch.dtype | str | None = None,
    device: torch.device | str | None = None,
    n_layers: int | None = None,
    *,
    tokenizer: Any = None,
    progress: bool = True,
    device_map: str | dict[str, Any] | None = None,
    max_memory: dict[Any, Any] | None = None,
    revision: str | None = None,
    decode_layout: bool | str = True,
) -> Any:
    """Load a model as a hooked native hookscope model.

    Args:
        source: a packaged model name (``"smollm2-135m"``), a local folder (config.json + safetensors),
            a ``.gguf`` file, a Hugging Face hub id (uses the local HF cache; downloads on a machine
            with network), or an instantiated transformers model.
        dtype: parameter dtype (default float32).
        device: where the weights go (default CPU).
        n_layers: keep only the first ``n_layers`` blocks (the rest are never materialised).
        tokenizer: a tokenizer to attach (default: the source's own, when it has one; ``False``: none,
            which skips reading the tokenizer files).
        device_map: spread the model over devices with accelerate's dispatcher: ``"auto"`` (fill the
            GPUs in order, then CPU; bounded by ``max_memory``) or ``{module name: device}``. Blocks are
            never split. Needs ``pip install accelerate``.
        revision: for a hub id, the branch, tag or commit to read (e.g. Pythia's training checkpoints
            ``"step1000"``); the default is the hub's main branch. Refused for any other source.
        decode_layout: store each CPU linear / unembedding matrix in the layout its matrix-vector product
            streams fastest (column-major when ``out >= in``; :mod:`hookscope.components.layout`): one-token
            decoding runs 1.2-1.5x faster on the CPU, values and parameters unchanged. Such weights are not
            contiguous: merge their dimensions with ``reshape`` (not ``view``); safetensors refuses strided
            tensors, so save ``.contiguous()`` copies (or use ``model.to_hf().save_pretrained(...)``;
            training checkpoints do this themselves). ``False`` keeps the layout the weights arrive in
            (row-major; GPT-2's ``Conv1D`` weights column-major). ``"compiled"``: the layout
            ``generate(compile=True)`` streams fastest on the CPU (row-major linears), which that call
            otherwise sets itself on its first use; ``True`` is ``"eager"``.
    """
    from hookscope.convert.sources import open_source

    if decode_layout not in (True, False, "eager", "compiled"):
        raise ValueError(f"decode_layout must be True, False, 'eager' or 'compiled', got {decode_layout!r}")
    dt, dev = resolve_dtype(dtype), resolve_device(device)
    try:
        src = open_source(source, revision=revision)
    except LoadError:
        raise
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise LoadError(f"could not open {source!r}: {type(err).__name__}: {err}") from err
    if n_layers is not None:
        src = src.truncated(n_layers)
    try:
        model = src.build(dtype=dt, device=dev, progress=progress)
    except LoadError:
        raise
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as err:
        # anything else that breaks while building (a config value the model rejects, an unreadable
        # file) is a load failure too, so that `except LoadError` catches every one
        raise LoadError(f"could not load {src.describe()}: {type(err).__name__}: {err}") from err
    if tokenizer is False:
        model.tokenizer = None
    else:
        model.tokenizer = tokenizer if tokenizer is not None else src.tokenizer()
    model.eval()
    if decode_layout:  # wide matrices column-major: decoding streams them faster (same values)
        stream_layout(model, "eager" if decode_layout is True else decode_layout)
    if device_map is not None:
        model = dispatch(model, device_map, max_memory)
    return model


def dispatch(model: nn.Module, device_map: str | dict[str, Any], max_memory: dict[Any, Any] | None) -> nn.Module:
    """Place modules on devices with accelerate (the existing engine for this; no home-made one)."""
    try:
        from accelerate import dispatch_model, infer_auto_device_map
    except ImportError as err:
        raise LoadError("device_map needs accelerate: pip install accelerate") from err
    block_classes = sorted({type(b).__name__ for b in getattr(model, "blocks", [])})
    if device_map == "auto":
        device_map = infer_auto_device_map(model, max_memory=max_memory, no_split_module_classes=block_classes)
    if not isinstance(device_map, dict):
        raise LoadError(f"device_map must be 'auto' or a dict of module name -> device, got {device_map!r}")
    return dispatch_model(model, device_map=device_map)


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise LoadError(f"{path} is not valid JSON: {err}") from None
