"""Images -> ``pixel_values``, with the settings of the model's own Hugging Face image processor.

The steps mirror transformers' PIL image-processor backend: convert to RGB, resize (PIL, the processor's
resampling filter; ``size`` is either an exact ``height x width`` or a ``shortest_edge`` keeping the aspect
ratio), centre crop, rescale by 1/255, normalise with the processor's mean and std.
Settings come from the source's ``preprocessor_config.json`` when it has one; otherwise from the defaults
of the HF processor class of that model type (:func:`default_image_settings`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

IMAGENET_STANDARD = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
IMAGENET_DEFAULT = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
OPENAI_CLIP = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))
BILINEAR, BICUBIC = 2, 3  # PIL resampling codes, as preprocessor_config.json stores them


@dataclass(frozen=True, kw_only=True)
class ImageSettings:
    """What the model's image processor does to an image before the model sees it."""

    size: tuple[int, int] | None = None  # exact (height, width) after resizing
    shortest_edge: int | None = None  # or: resize so the short side has this length (aspect kept)
    resample: int = BILINEAR
    do_resize: bool = True
    crop_size: tuple[int, int] | None = None  # (height, width) of the centre crop; None: no crop
    do_rescale: bool = True
    rescale_factor: float = 1 / 255
    do_normalize: bool = True
    image_mean: tuple[float, ...] = IMAGENET_STANDARD[0]
    image_std: tuple[float, ...] = IMAGENET_STANDARD[1]
    do_convert_rgb: bool = True
    source: str = "default"  # "preprocessor_config.json" or "default": where these settings came from

    def __post_init__(self) -> None:
        if self.do_resize and (self.size is None) == (self.shortest_edge is None):
            raise ValueError("ImageSettings needs exactly one of size=(height, width) or shortest_edge=")


def default_image_settings(model_type: str, image_size: tuple[int, int]) -> ImageSettings:
    """The defaults of HF's image processor class for ``model_type``, at the model's own image size."""
    if model_type == "clip_vision_model":
        return ImageSettings(shortest_edge=min(image_size), resample=BICUBIC, crop_size=image_size,
                             image_mean=OPENAI_CLIP[0], image_std=OPENAI_CLIP[1])
    if model_type == "deit":  # DeiT resizes to 256 and crops 224; scaled here to the model's size
        resize = (image_size[0] * 256 // 224, image_size[1] * 256 // 224)
        return ImageSettings(size=resize, resample=BICUBIC, crop_size=image_size,
                             image_mean=IMAGENET_DEFAULT[0], image_std=IMAGENET_DEFAULT[1])
    return ImageSettings(size=image_size, resample=BILINEAR)


def _hw(value: Any) -> tuple[int, int] | None:
    if value is None:
        return None
    if isinstance(value, int):
        return (value, value)
    if "height" in value and "width" in value:
        return (int(value["height"]), int(value["width"]))
    return None


def settings_from_preprocessor(cfg: dict[str, Any]) -> ImageSettings:
    """Read a ``preprocessor_config.json`` (any of the layouts ViT, DeiT and CLIP processors write)."""
    size = cfg.get("size")
    shortest = size.get("shortest_edge") if isinstance(size, dict) else None
    if isinstance(size, int) and cfg.get("default_to_square") is False:
        shortest, size = size, None  # old CLIP configs: "size": 224 means the shortest edge
    crop = _hw(cfg.get("crop_size")) if cfg.get("do_center_crop", False) else None
    mean = cfg.get("image_mean", IMAGENET_STANDARD[0])
    std = cfg.get("image_std", IMAGENET_STANDARD[1])
    return ImageSettings(
        size=None if shortest is not None else _hw(size), shortest_edge=shortest,
        resample=int(cfg.get("resample", BILINEAR)), do_resize=bool(cfg.get("do_resize", True)),
        crop_size=crop, do_rescale=bool(cfg.get("do_rescale", True)),
        rescale_factor=float(cfg.get("rescale_factor", 1 / 255)),
        do_normalize=bool(cfg.get("do_normalize", True)),
        image_mean=tuple(mean) if isinstance(mean, (list, tuple)) else (float(mean),) * 3,
        image_std=tuple(std) if isinstance(std, (list, tuple)) else (float(std),) * 3,
        do_convert_rgb=bool(cfg.get("do_convert_rgb", True)), source="preprocessor_config.json",
    )


# ---------------------------------------------------------------------- the steps
def _to_uint8_hwc(image: Any, convert_rgb: bool) -> np.ndarray:
    """A PIL image, numpy array or tensor (HWC or CHW; uint8, or float in [0, 1]) -> uint8 ``[H, W, C]``."""
    from PIL import Image

    if isinstance(image, Image.Image):
        if convert_rgb:
            image = image.convert("RGB")
        return np.asarray(image)
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
    if not isinstance(image, np.ndarray):
        raise TypeError(f"an image must be a PIL image, numpy array or tensor, got {type(image).__name__}")
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3:
        raise ValueError(f"an image array must be [H, W, C] or [C, H, W], got shape {image.shape}")
    if image.shape[0] in (1, 3, 4) and image.shape[-1] not in (1, 3, 4):
        image = np.moveaxis(image, 0, -1)  # CHW -> HWC
    if image.dtype == np.bool_ or (image.dtype != np.uint8 and np.issubdtype(image.dtype, np.integer)):
        raise TypeError(
            f"integer images must be uint8 (0..255), got {image.dtype}; convert with .astype(np.uint8) / "
            ".to(torch.uint8), or pass floats in [0, 1]"
        )
    if image.dtype != np.uint8:
        if image.min() < 0 or image.max() > 1:
            raise ValueError(
                "float images must hold values in [0, 1] (or pass uint8 0..255); already normalised "
                "pixel values go to the model as a float tensor [batch, channels, height, width]"
            )
        image = (image * 255).astype(np.uint8)  # as HF's PIL conversion does (truncating)
    if convert_rgb and image.shape[-1] == 1:
        image = np.repeat(image, 3, axis=-1)
    return image


def _resize(image: np.ndarray, s: ImageSettings) -> np.ndarray:
    from PIL import Image

    h, w = image.shape[:2]
    if s.shortest_edge is not None:
        short, long = (h, w) if h <= w else (w, h)
        new_short, new_long = s.shortest_edge, int(s.shortest_edge * long / short)
        new_h, new_w = (new_short, new_long) if h <= w else (new_long, new_short)
    else:
        new_h, new_w = s.size  # type: ignore[misc]
    pil = Image.fromarray(image.squeeze(-1) if image.shape[-1] == 1 else image)
    out = np.asarray(pil.resize((new_w, new_h), resample=s.resample))
    return out[:, :, None] if out.ndim == 2 else out


def _center_crop(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    h, w = image.shape[:2]
    ch, cw = size
    if ch > h or cw > w:
        raise ValueError(f"cannot centre-crop {size} from an image of {(h, w)} (resize it first)")
    top, left = (h - ch) // 2, (w - cw) // 2
    return image[top : top + ch, left : left + cw]


def preprocess_images(
    images: Any, settings: ImageSettings, dtype: torch.dtype = torch.float32, device: Any = "cpu"
) -> torch.Tensor:
    """One image or a list of images -> ``pixel_values [batch, channels, height, width]``."""
    batch: Sequence[Any] = images if isinstance(images, (list, tuple)) else [images]
    if isinstance(images, (np.ndarray, torch.Tensor)) and images.ndim == 4:
        batch = list(images)  # a stack of images [batch, H, W, C] or [batch, C, H, W]
    if not batch:
        raise ValueError("no images given")
    out = []
    for image in batch:
        x = _to_uint8_hwc(image, settings.do_convert_rgb)
        if settings.do_resize:
            x = _resize(x, settings)
        if settings.crop_size is not None:
            x = _center_crop(x, settings.crop_size)
        y = x.astype(np.float32)
        if settings.do_rescale:  # HF rescales in float64 and casts back to float32
            y = (x.astype(np.float64) * settings.rescale_factor).astype(np.float32)
        if settings.do_normalize:  # then normalises in float32
            c = y.shape[-1]
            mean = np.asarray(settings.image_mean[:c], dtype=np.float32)
            std = np.asarray(settings.image_std[:c], dtype=np.float32)
            y = (y - mean) / std
        out.append(np.moveaxis(y, -1, 0))
    shapes = {o.shape for o in out}
    if len(shapes) > 1:
        raise ValueError(f"images came out with different sizes {sorted(shapes)}; set a fixed size or crop")
    return torch.from_numpy(np.stack(out)).to(device=device, dtype=dtype)
