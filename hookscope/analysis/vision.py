"""Vision analyses over a native :class:`~hookscope.models.vit.ViT`: a class lens, class-token attention maps,
attention rollout, and a PNG overlay of a map on its image.

All take images as the model does (pixel values, or PIL / numpy images preprocessed with the model's own
image-processor settings) and return plain tensors; plotting is :func:`save_attention_overlay` only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
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


# ---------------------------------------------------------------------- the overlay
def _image_array(image: Any, model: Any) -> np.ndarray:
    """An ``[H, W, 3]`` float array in [0, 1]: PIL / numpy images as they are, pixel values un-normalised."""
    from PIL import Image

    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    if isinstance(image, torch.Tensor) and image.is_floating_point():  # pixel values [(1,) C, H, W]
        x = image.detach().float().cpu()
        x = x[0] if x.ndim == 4 else x
        if model is not None and model.image_settings.do_normalize:
            s = model.image_settings
            c = x.shape[0]
            std, mean = torch.tensor(s.image_std[:c]), torch.tensor(s.image_mean[:c])
            x = x * std[:, None, None] + mean[:, None, None]
        else:
            x = (x - x.min()) / (x.max() - x.min() + 1e-12)
        arr = x.clamp(0, 1).permute(1, 2, 0).numpy()
    else:
        arr = np.asarray(image.cpu() if isinstance(image, torch.Tensor) else image)
        if arr.ndim == 3 and arr.shape[0] in (1, 3) and arr.shape[-1] not in (1, 3):
            arr = np.moveaxis(arr, 0, -1)
        arr = arr.astype(np.float32) / (255.0 if arr.dtype == np.uint8 else 1.0)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return np.repeat(arr, 3, axis=-1) if arr.shape[-1] == 1 else arr[:, :, :3]


def save_attention_overlay(
    path: str | Path, image: Any, attention: torch.Tensor | np.ndarray, *, model: Any = None,
    alpha: float = 0.5, cmap: str = "inferno", title: str | None = None,
) -> Path:
    """Write a PNG: ``image`` with an ``attention`` map ``[rows, cols]`` stretched over it.

    Args:
        image: a PIL image, an ``[H, W, C]`` array, or pixel values ``[C, H, W]`` (un-normalised with
            ``model.image_settings`` when ``model`` is given).
        attention: one map, e.g. ``class_attention(model, img)[0]`` or ``attention_rollout(model, img)[0]``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if isinstance(attention, torch.Tensor):
        attention = attention.detach().float().cpu().numpy()
    att = np.asarray(attention, dtype=np.float64)
    if att.ndim != 2:
        raise ValueError(f"attention must be one map [rows, cols], got {att.shape}; index the batch first")
    rgb = _image_array(image, model)
    h, w = rgb.shape[:2]
    span = float(att.max() - att.min())
    att = (att - att.min()) / span if span > 0 else np.zeros_like(att)
    fig = Figure(figsize=(4, 4 * h / w), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0, 0, 1, 0.92 if title else 1))
    ax.imshow(rgb, extent=(0, w, h, 0))
    ax.imshow(att, cmap=cmap, alpha=alpha, extent=(0, w, h, 0), interpolation="bilinear")
    ax.set_axis_off()
    if title:
        fig.suptitle(title, fontsize=9)
    out = Path(path)
    fig.savefig(out, format="png")
    return out
