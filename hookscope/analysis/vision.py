"""Vision analyses over a native :class:`~hookscope.models.vit.ViT`: a class lens, class-token attention maps
and attention rollout.

All take images as the model does (pixel values, or PIL / numpy images preprocessed with the model's own
image-processor settings) and return plain tensors; drawing a map over its image is
:func:`hookscope.viz.vision_plot.save_attention_overlay`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch

from hookscope.analysis.partial import partial_forward


def _pixels_and_grid(model: Any, images: Any) -> tuple[torch.Tensor, tuple[int, int]]:
    pixels = model.to_pixel_values(images)  # [batch, channels, height, width]
    p = model.cfg.patch_size
    return pixels, (pixels.shape[-2] // p, pixels.shape[-1] // p)


# ---------------------------------------------------------------------- the class lens
@dataclass
class ClassLensResult:
    """Per layer: the class logits read through the final norm and the head.

    ``logits[row, batch, class]``; row 0 reads the embeddings, row ``i + 1`` the residual after block
    ``i``; the last row is the model's own output.
    """

    row_labels: list[str]
    logits: torch.Tensor  # [row, batch, n_classes]
    labels: dict[int, str]

    @property
    def probs(self) -> torch.Tensor:  # [row, batch, n_classes]
        return self.logits.float().softmax(-1)

    def top(self, k: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
        """``(probs, class ids)`` of the top ``k`` classes per layer and image, ``[row, batch, k]`` each."""
        return self.probs.topk(min(k, self.logits.shape[-1]), dim=-1)

    def table(self, image: int = 0, k: int = 3) -> str:
        """Plain text: the top-``k`` classes of one image at every layer."""
        probs, ids = self.top(k)
        lines = []
        for r, label in enumerate(self.row_labels):
            pairs = zip(probs[r, image].tolist(), ids[r, image].tolist())
            cells = [f"{self.labels.get(i, f'#{i}')} {p:.3f}" for p, i in pairs]
            lines.append(f"{label:>6} | " + " | ".join(cells))
        return "\n".join(lines)


@torch.no_grad()
def class_lens(model: Any, images: Any, *, interpolate_pos_encoding: bool = False) -> ClassLensResult:
    """The logit lens for vision: each layer's residual stream through ``ln_final`` and the class head.

    Uses the full head (DeiT with teacher: the average of its class- and distillation-token
    classifiers), so the last row equals ``model(images)``.
    """
    if model.head is None:
        model.lens_decoder()  # raises the explanatory error
    rows = [("embed", "blocks.0.hook_resid_pre")]
    rows += [(str(i), f"blocks.{i}.hook_resid_post") for i in range(model.cfg.n_layers)]
    pixels, _ = _pixels_and_grid(model, images)
    names = [n for _, n in rows]
    acts = partial_forward(model, pixels, names, interpolate_pos_encoding=interpolate_pos_encoding)
    logits = torch.stack([model.head(model.ln_final(acts[n])) for _, n in rows])  # [row, batch, n_classes]
    id2label = model.cfg.hf_config.get("id2label") or {}
    labels = {int(k): str(v) for k, v in id2label.items()}
    return ClassLensResult([label for label, _ in rows], logits, labels)


# ---------------------------------------------------------------------- attention maps
def _at_least_fp32(t: torch.Tensor) -> torch.Tensor:
    return t if t.dtype == torch.float64 else t.float()


def _patterns(model: Any, pixels: torch.Tensor, interpolate: bool) -> list[torch.Tensor]:
    names = [f"blocks.{i}.attn.hook_pattern" for i in range(model.cfg.n_layers)]
    acts = partial_forward(model, pixels, names, interpolate_pos_encoding=interpolate)
    return [_at_least_fp32(acts[n]) for n in names]  # each [batch, head_index, query_pos, key_pos]


@torch.no_grad()
def class_attention(
    model: Any, images: Any, layer: int = -1, head: int | None = None, *,
    interpolate_pos_encoding: bool = False,
) -> torch.Tensor:
    """How much the class token attends to each patch at ``layer``: ``[batch, rows, cols]``.

    ``head=None`` averages over heads. Attention to the special tokens is left out, so a map need not
    sum to one.
    """
    pixels, grid = _pixels_and_grid(model, images)
    layer = layer % model.cfg.n_layers
    name = f"blocks.{layer}.attn.hook_pattern"
    acts = partial_forward(model, pixels, name, interpolate_pos_encoding=interpolate_pos_encoding)
    pattern = _at_least_fp32(acts[name])  # [batch, head_index, query_pos, key_pos]
    from_cls = pattern[:, :, 0, model.cfg.n_special :]  # [batch, head_index, patch]
    chosen = from_cls.mean(1) if head is None else from_cls[:, head]
    return chosen.reshape(-1, *grid)


def rollout_from_patterns(
    patterns: list[torch.Tensor], head_fusion: Literal["mean", "max", "min"] = "mean", residual: bool = True
) -> torch.Tensor:
    """Attention rollout (Abnar & Zuidema, 2020) over per-layer patterns ``[batch, head, pos, pos]``.

    Each layer's heads are fused, the identity is added for the residual path (``0.5 A + 0.5 I``), rows
    are renormalised, and the layers are multiplied from the first: ``R = A_L ... A_1``.
    Returns ``[batch, pos, pos]``: row ``q`` is how much each input token flows into token ``q``.
    """
    rollout: torch.Tensor | None = None
    for pattern in patterns:
        fused = {"mean": pattern.mean(1), "max": pattern.amax(1), "min": pattern.amin(1)}[head_fusion]
        if residual:
            eye = torch.eye(fused.shape[-1], dtype=fused.dtype, device=fused.device)
            fused = 0.5 * fused + 0.5 * eye
        fused = fused / fused.sum(-1, keepdim=True)
        rollout = fused if rollout is None else fused @ rollout
    if rollout is None:
        raise ValueError("attention rollout needs at least one layer's pattern")
    return rollout


@torch.no_grad()
def attention_rollout(
    model: Any, images: Any, *, head_fusion: Literal["mean", "max", "min"] = "mean",
    interpolate_pos_encoding: bool = False,
) -> torch.Tensor:
    """The class token's attention rollout over the patches: ``[batch, rows, cols]``."""
    pixels, grid = _pixels_and_grid(model, images)
    rollout = rollout_from_patterns(_patterns(model, pixels, interpolate_pos_encoding), head_fusion)
    return rollout[:, 0, model.cfg.n_special :].reshape(-1, *grid)
