"""Build a native :class:`Decoder` from a source, and export one back to transformers (``to_hf``)."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from hookscope.convert.build import build_model
from hookscope.convert.decoder_hf import ARCHITECTURES, decoder_config_from_hf
from hookscope.convert.engine import convert_state_dict
from hookscope.models.decoder import Decoder


def build(source: Any, *, dtype: torch.dtype, device: torch.device, progress: bool) -> Decoder:
    cfg, arch = decoder_config_from_hf(source.hf_config)
    if source.n_layers is not None:
        n = min(source.n_layers, cfg.n_layers)
        cfg = dataclasses.replace(cfg, n_layers=n, sliding_windows=cfg.sliding_windows[:n])
    ties = [("unembed.weight", "embed.weight")] if cfg.tie_embeddings else []
    bar = None
    if progress and cfg.n_layers >= 12:
        from tqdm.auto import tqdm

        bar = tqdm(desc=f"loading {source.describe()}", unit="tensor", leave=False)
    try:
        return build_model(  # type: ignore[return-value]
            lambda: Decoder(cfg), source.keys, source.get, arch.rules(cfg), cfg.n_layers,
            dtype=dtype, device=device, ties=ties, progress=bar,
        )
    finally:
        if bar is not None:
            bar.close()


def to_hf(model: Decoder) -> Any:
    """A transformers model with this model's weights (the conversion rules run backwards)."""
    import transformers

    cfg = model.cfg
    arch = ARCHITECTURES[cfg.hf_config["model_type"]]
    values = {k: v for k, v in cfg.hf_config.items() if k not in ("transformers_version",)}
    hf_config = transformers.AutoConfig.for_model(**values)
    _set_layer_count(hf_config, cfg.n_layers)
    hf_model = getattr(transformers, arch.hf_class)(hf_config)
    ruleset = arch.rules(cfg).inverted()
    state = {k: v.detach() for k, v in model.state_dict().items()}
    expected = [k for k in hf_model.state_dict() if not _is_buffer(hf_model, k)]
    if cfg.tie_embeddings:
        expected = [k for k in expected if k not in _tied_keys(hf_model)]
    converted = convert_state_dict(state, _drop_ignores(ruleset), cfg.n_layers, expected)
    hf_model.load_state_dict(converted, strict=False)
    return hf_model.to(next(model.parameters()).dtype).eval()


def _drop_ignores(ruleset: Any) -> Any:
    from hookscope.convert.engine import RuleSet

    return RuleSet(ruleset.rules, ignore_sources=(r"^unembed\.weight$",))


def _is_buffer(hf_model: Any, key: str) -> bool:
    return key in dict(hf_model.named_buffers())


def _tied_keys(hf_model: Any) -> set[str]:
    params = dict(hf_model.named_parameters(remove_duplicate=False))
    unique = {n for n, _ in hf_model.named_parameters()}
    return set(params) - unique


def _set_layer_count(hf_config: Any, n_layers: int) -> None:
    for attr in ("num_hidden_layers", "n_layer"):
        if hasattr(hf_config, attr):
            setattr(hf_config, attr, n_layers)
    if getattr(hf_config, "layer_types", None):
        hf_config.layer_types = hf_config.layer_types[:n_layers]
