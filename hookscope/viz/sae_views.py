"""Feature cards of SAE latents computed from a model and data, per modality (drawn by ``feature_view``).

Text: the top contexts (the strongest activation marked), and the output tokens the latent's decoder
direction boosts / suppresses (its row of ``W_dec`` times the unembedding, as TransformerLens-era feature
dashboards show; the final norm is not applied). Images: the top images with the activation of every patch
overlaid and the strongest patch boxed. Audio: the activation over the clip's encoder frames, the time of the
peak, and the words around it (placed by a uniform speaking rate over the clip, so approximate).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from hookscope.hooks import HookedModule
from hookscope.sae.sae import SAE
from hookscope.sae.store import activations_at
from hookscope.viz.feature_view import FeatureCard


@torch.no_grad()
def latent_activations(model: HookedModule, sae: SAE, batches: Sequence[Any], hook_name: str | None = None,
                       ) -> torch.Tensor:
    """SAE latents ``[n, pos, d_sae]`` of every input (batches run one after the other, activations kept 3-D)."""
    name = hook_name or sae.hook_name
    if name is None:
        raise ValueError("pass hook_name= (the SAE's config records none)")
    out = []
    for batch in batches:
        act = activations_at(model, name, batch, select=lambda a, b: a)
        out.append(sae.encode(act).float())  # hook_z: heads flattened, or the SAE's one head
    return torch.cat(out)


def _common(lat: torch.Tensor, j: int) -> dict[str, Any]:
    values = lat[..., j]
    return {"density": float((values > 0).float().mean()), "histogram": values[values > 0].tolist()}


@torch.no_grad()
def text_cards(
    model: Any, sae: SAE, tokens: torch.Tensor, latents: Sequence[int], *, n_examples: int = 5, context: int = 12,
    skip_first_positions: int = 1, n_logits: int = 8, batch_size: int = 8,
) -> list[FeatureCard]:
    """Cards for ``latents`` of an SAE on a language model over ``tokens`` ``[n, pos]``."""
    lat = latent_activations(model, sae, list(tokens.split(batch_size)))  # [n, pos, d_sae]
    lat[:, :skip_first_positions] = 0
    W_U = getattr(model, "W_U", None)
    cards = []
    for j in latents:
        flat = lat[..., j].reshape(-1)
        examples = []
        for idx in flat.topk(min(n_examples, flat.numel())).indices.tolist():
            row, pos = divmod(idx, lat.shape[1])
            if flat[idx] <= 0:
                break
            lo = max(skip_first_positions, pos - context)
            hi = min(lat.shape[1], pos + 3)
            examples.append([(model.to_string([int(t)]), float(lat[row, p, j]))
                             for p, t in zip(range(lo, hi), tokens[row, lo:hi])])
        boosted = suppressed = []
        if W_U is not None and W_U.shape[0] == sae.cfg.d_in:
            effect = sae.W_dec[j].to(W_U.dtype) @ W_U  # [d_vocab]
            top, bottom = effect.topk(n_logits), (-effect).topk(n_logits)
            boosted = [(model.to_string([i]), float(v)) for v, i in zip(top.values, top.indices.tolist())]
            suppressed = [(model.to_string([i]), -float(v)) for v, i in zip(bottom.values, bottom.indices.tolist())]
        cards.append(FeatureCard(index=j, text_examples=examples, boosted=boosted, suppressed=suppressed,
                                 **_common(lat[:, skip_first_positions:], j)))
    return cards


@torch.no_grad()
def image_cards(
    model: HookedModule, sae: SAE, images: torch.Tensor, latents: Sequence[int], grid: tuple[int, int], *,
    n_special: int = 1, n_examples: int = 4, batch_size: int = 64,
) -> list[FeatureCard]:
    """Cards for ``latents`` over grey ``images`` ``[n, 1, H, W]`` whose patches form ``grid`` (rows, cols)."""
    lat = latent_activations(model, sae, list(images.split(batch_size)))[:, n_special:]  # [n, patches, d_sae]
    if lat.shape[1] != grid[0] * grid[1]:
        raise ValueError(f"{lat.shape[1]} patch positions do not form the grid {grid}")
    pixels = images[:, 0].float()
    span = (pixels.amax((1, 2)) - pixels.amin((1, 2))).clamp_min(1e-12)
    pixels = (pixels - pixels.amin((1, 2), keepdim=True)) / span[:, None, None]
    cards = []
    for j in latents:
        best = lat[..., j].amax(1)
        order = best.topk(min(n_examples, len(best))).indices.tolist()
        examples = [(pixels[i].numpy(), lat[i, :, j].reshape(grid).numpy()) for i in order if best[i] > 0]
        cards.append(FeatureCard(index=j, image_examples=examples, **_common(lat, j)))
    return cards


@torch.no_grad()
def audio_cards(
    model: HookedModule, sae: SAE, features: torch.Tensor, transcripts: Sequence[str], n_frames: Sequence[int],
    latents: Sequence[int], *, seconds_per_frame: float = 0.02, n_examples: int = 4, batch_size: int = 4,
    words_around: int = 3,
) -> list[FeatureCard]:
    """Cards for ``latents`` of an SAE on a speech encoder over log-mel ``features`` ``[n, mels, frames]``.

    ``n_frames[i]`` is how many encoder frames clip ``i``'s speech covers (the rest is padding, ignored).
    """
    batches = [(b,) for b in features.split(batch_size)]
    lat = latent_activations(model, sae, batches)  # [n, frames, d_sae]
    valid = torch.zeros(lat.shape[:2], dtype=torch.bool)
    for i, n in enumerate(n_frames):
        valid[i, :n] = True
    lat = lat * valid[..., None]
    cards = []
    for j in latents:
        best, where = lat[..., j].max(1)
        examples = []
        for i in best.topk(min(n_examples, len(best))).indices.tolist():
            if best[i] <= 0:
                break
            words = transcripts[i].split()
            centre = int(len(words) * int(where[i]) / max(n_frames[i], 1))
            around = " ".join(words[max(0, centre - words_around) : centre + words_around + 1])
            examples.append((lat[i, : n_frames[i], j].tolist(), seconds_per_frame, f"~ “{around}”"))
        cards.append(FeatureCard(index=j, audio_examples=examples, **_common(lat[valid], j)))
    return cards
