"""diffusers ``DiTTransformer2DModel`` -> native :class:`~hookscope.models.dit.DiT`: strict config + rules.

A diffusers model object or a diffusers folder (``config.json`` with ``_class_name``, weights in
``diffusion_pytorch_model*.safetensors``) becomes a :class:`~hookscope.convert.sources.Source` whose
``hf_config`` carries ``model_type = "dit"``; the builder below converts it like every other family:
every config key handled or explicitly ignored, every tensor consumed, every parameter filled.
"""

from __future__ import annotations

import dataclasses
import json
import types
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hookscope.convert.build import build_model
from hookscope.convert.engine import ConversionError, Rule, RuleSet, rename
from hookscope.errors import SourceNotFoundError
from hookscope.models.dit import DiT
from hookscope.models.dit_config import DiTConfig

SUPPORTED_CLASSES = frozenset({"DiTTransformer2DModel"})
_HANDLED = frozenset({
    "num_attention_heads", "attention_head_dim", "in_channels", "out_channels", "num_layers", "attention_bias",
    "sample_size", "patch_size", "activation_fn", "num_embeds_ada_norm", "norm_type", "norm_elementwise_affine",
    "norm_eps",
})
# dropout: inference only; norm_num_groups: unused by the DiT layout; upcast_attention: diffusers' SDPA
# processor ignores it; the rest is bookkeeping
_IGNORED = frozenset({"dropout", "norm_num_groups", "upcast_attention"})
_ACTIVATIONS = {"gelu-approximate": "gelu_tanh", "gelu": "gelu"}


def is_diffusers_model(obj: Any) -> bool:
    """A diffusers ``ModelMixin`` instance (recognised without importing diffusers)."""
    return isinstance(obj, nn.Module) and any(
        c.__module__.startswith("diffusers.") and c.__name__ == "ModelMixin" for c in type(obj).__mro__
    )


def is_diffusers_folder(path: Path) -> bool:
    config = path / "config.json"
    if not config.is_file():
        return False
    try:
        return "_diffusers_version" in json.loads(config.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False


def _as_hf_config(class_name: str, config: dict[str, Any]) -> Any:
    if class_name not in SUPPORTED_CLASSES:
        raise ConversionError(
            f"diffusers {class_name} has no native hookscope family (supported: "
            f"{', '.join(sorted(SUPPORTED_CLASSES))}); use hookscope.wrap(model) to hook any diffusers model"
        )
    return types.SimpleNamespace(model_type="dit", diffusers_class=class_name, diffusers_config=dict(config))


def diffusers_model_source(model: nn.Module) -> Any:
    """A :class:`Source` over a diffusers model object's state dict."""
    from hookscope.convert.sources import Source

    hf_config = _as_hf_config(type(model).__name__, dict(model.config))
    state = model.state_dict()
    return Source(hf_config, list(state), lambda k: state[k].detach().clone(), f"{type(model).__name__} instance")


def diffusers_folder_source(path: Path) -> Any:
    """A :class:`Source` over a diffusers model folder (``save_pretrained`` output, safetensors)."""
    from hookscope.convert.sources import Source, _safetensors_reader

    raw = json.loads((path / "config.json").read_text())
    hf_config = _as_hf_config(str(raw.get("_class_name")), raw)
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise SourceNotFoundError(f"{path} has no *.safetensors weights (pickled .bin files are not read)")
    keys, get = _safetensors_reader(path)
    return Source(hf_config, keys, get, str(path))


def dit_config_from_diffusers(config: dict[str, Any]) -> DiTConfig:
    """Strictly convert a ``DiTTransformer2DModel`` config: anything unknown or unsupported raises."""
    unknown = sorted(k for k in config if not k.startswith("_") and k not in _HANDLED | _IGNORED)
    if unknown:
        raise ConversionError(f"DiT config keys hookscope does not handle: {unknown}")
    if config.get("norm_type", "ada_norm_zero") != "ada_norm_zero":
        raise ConversionError(f"DiT norm_type {config['norm_type']!r} is not supported (only 'ada_norm_zero')")
    act = config.get("activation_fn", "gelu-approximate")
    if act not in _ACTIVATIONS:
        raise ConversionError(f"DiT activation_fn {act!r} is not supported; supported: {sorted(_ACTIVATIONS)}")
    if config.get("num_embeds_ada_norm") is None:
        raise ConversionError("DiT num_embeds_ada_norm (the number of classes) must be set")
    in_ch = int(config.get("in_channels", 4))
    out_ch = config.get("out_channels")
    return DiTConfig(
        n_layers=int(config.get("num_layers", 28)), n_heads=int(config.get("num_attention_heads", 16)),
        d_head=int(config.get("attention_head_dim", 72)), in_channels=in_ch,
        out_channels=in_ch if out_ch is None else int(out_ch), sample_size=int(config.get("sample_size", 32)),
        patch_size=int(config.get("patch_size", 2)), n_classes=int(config["num_embeds_ada_norm"]),
        act_fn=_ACTIVATIONS[act], attn_bias=bool(config.get("attention_bias", True)),
        mlp_norm_eps=float(config.get("norm_eps", 1e-5)),
        mlp_norm_affine=bool(config.get("norm_elementwise_affine", False)),
    )


def _both(src: str, dst: str, bias: bool = True) -> list[Rule]:
    rules = [rename(f"{src}.weight", f"{dst}.weight")]
    return [*rules, rename(f"{src}.bias", f"{dst}.bias")] if bias else rules


def dit_rules(cfg: DiTConfig) -> RuleSet:
    """diffusers ``DiTTransformer2DModel`` names -> hookscope names (``{i}``: every block)."""
    h, b = "transformer_blocks.{i}", "blocks.{i}"
    rules = [
        *_both("pos_embed.proj", "embed.proj"),
        *_both(f"{h}.norm1.emb.timestep_embedder.linear_1", f"{b}.cond.time_in"),
        *_both(f"{h}.norm1.emb.timestep_embedder.linear_2", f"{b}.cond.time_out"),
        rename(f"{h}.norm1.emb.class_embedder.embedding_table.weight", f"{b}.cond.class_table.weight"),
        *_both(f"{h}.norm1.linear", f"{b}.adaln.linear"),
        *[r for p in "qkv" for r in _both(f"{h}.attn1.to_{p}", f"{b}.attn.{p}_proj", cfg.attn_bias)],
        *_both(f"{h}.attn1.to_out.0", f"{b}.attn.o_proj"),
        *_both(f"{h}.ff.net.0.proj", f"{b}.mlp.up_proj"), *_both(f"{h}.ff.net.2", f"{b}.mlp.down_proj"),
        *_both("proj_out_1", "final_adaln.linear"), *_both("proj_out_2", "unembed"),
    ]
    if cfg.mlp_norm_affine:
        rules += _both(f"{h}.norm3", f"{b}.ln2")
    return RuleSet(tuple(rules), ignore_sources=(r"^pos_embed\.pos_embed$",))  # a fixed sin-cos buffer


def build(source: Any, *, dtype: torch.dtype, device: torch.device, progress: bool) -> DiT:
    cfg = dit_config_from_diffusers(source.hf_config.diffusers_config)
    if source.n_layers is not None:
        cfg = dataclasses.replace(cfg, n_layers=min(source.n_layers, cfg.n_layers))
    return build_model(  # type: ignore[return-value]
        lambda: DiT(cfg), source.keys, source.get, dit_rules(cfg), cfg.n_layers, dtype=dtype, device=device,
    )
