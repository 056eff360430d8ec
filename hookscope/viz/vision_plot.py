"""Vision drawings: an attention map over its image, written as a PNG (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch


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
