"""Shared test helpers: re-drawn random HF models and a hook-by-hook comparison that names the first divergence."""

from __future__ import annotations

from collections.abc import Iterable

import torch


def redraw_parameters(model: torch.nn.Module, seed: int = 0, norm_center: float = 1.0) -> torch.nn.Module:
    """Re-draw every parameter: norm weights around 1, biases non-zero (HF init hides swapped or dropped ones).

    ``norm_center=0`` for norms that scale by ``1 + weight`` (Gemma), so their effective scale is still ~1.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float32).to(p.dtype)
            if p.ndim == 1 and ("norm" in name or "ln" in name) and name.endswith("weight"):
                p.copy_(norm_center + 0.1 * noise)
            elif p.ndim == 1:
                p.copy_(0.1 * noise)
            else:
                p.copy_(noise / max(p.shape[-1], 1) ** 0.5)
    return model


def first_divergence(
    pairs: Iterable[tuple[str, torch.Tensor, torch.Tensor]], atol: float, rtol: float
) -> str | None:
    """The first (name, ours, reference) pair that differs, described; None when all match."""
    for name, ours, ref in pairs:
        if ours.shape != ref.shape:
            return f"{name}: shape {tuple(ours.shape)} vs reference {tuple(ref.shape)}"
        if not torch.allclose(ours, ref, atol=atol, rtol=rtol):
            diff = (ours - ref).abs().max().item()
            return f"{name}: max abs difference {diff:.3e} (atol {atol}, rtol {rtol})"
    return None


TOLERANCES = {torch.float32: (1e-5, 1e-5), torch.float64: (1e-10, 1e-10)}


def encoder_decoder_pairs(
    cache: object, out: object, n_enc: int, n_dec: int
) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """(hook name, ours, HF) for every layer and pattern. HF hidden_states[i] is block i's input
    (i < n); its last entry is the stack output after the final norm."""
    pairs = []
    for stack, hidden, attn, n in (
        ("encoder", out.encoder_hidden_states, out.encoder_attentions, n_enc),
        ("decoder", out.decoder_hidden_states, out.decoder_attentions, n_dec),
    ):
        for i in range(n):
            pairs.append((f"{stack}.{i}.hook_resid_pre", cache[f"{stack}.{i}.hook_resid_pre"], hidden[i]))
            pairs.append((f"{stack}.{i}.attn.hook_pattern", cache[f"{stack}.{i}.attn.hook_pattern"], attn[i]))
            if stack == "decoder":
                name = f"decoder.{i}.cross_attn.hook_pattern"
                pairs.append((name, cache[name], out.cross_attentions[i]))
            if i + 1 < n:
                pairs.append(
                    (f"{stack}.{i}.hook_resid_post", cache[f"{stack}.{i}.hook_resid_post"], hidden[i + 1])
                )
        name = f"{stack}_final_ln.hook_normalized"
        pairs.append((name, cache[name], hidden[n]))
    return pairs
