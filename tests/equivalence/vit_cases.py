"""Shared builders for the ViT-family equivalence tests: random HF models with shape-hostile sizes.

Sizes: batch 2, channels 3, image 35x35, patch 7 (a 5x5 grid: 26 positions, 27 with DeiT's distillation
token), d_model 40, 4 heads of d_head 10, d_mlp 37, 6 classes (CLIP projection 11), 3 layers.
"""

from __future__ import annotations

from typing import Any

import torch
import transformers as tf

from tests.helpers import redraw_parameters

SIZES = dict(hidden_size=40, num_hidden_layers=3, num_attention_heads=4, intermediate_size=37,
             image_size=35, patch_size=7, num_channels=3)
N_CLASSES = 6

# name -> (HF class, HF config class, extra config)
VARIANTS: dict[str, tuple[Any, Any, dict]] = {
    "vit_cls": (tf.ViTForImageClassification, tf.ViTConfig, dict(num_labels=N_CLASSES)),
    "vit_model": (tf.ViTModel, tf.ViTConfig, {}),
    "deit_teacher": (tf.DeiTForImageClassificationWithTeacher, tf.DeiTConfig, dict(num_labels=N_CLASSES)),
    "deit_cls": (tf.DeiTForImageClassification, tf.DeiTConfig, dict(num_labels=N_CLASSES)),
    "clip_vision": (tf.CLIPVisionModel, tf.CLIPVisionConfig, {}),
    "clip_projection": (tf.CLIPVisionModelWithProjection, tf.CLIPVisionConfig, dict(projection_dim=11)),
}


def make_hf(variant: str, dtype: torch.dtype = torch.float32, seed: int = 0) -> Any:
    cls, config_cls, extra = VARIANTS[variant]
    config = config_cls(**SIZES, **extra, attn_implementation="eager")
    torch.manual_seed(seed)
    model = cls(config).eval()
    redraw_parameters(model, seed=seed)
    return model.to(dtype)


def hf_reference(
    hf: Any, pixels: torch.Tensor, **kwargs: Any
) -> tuple[Any, torch.Tensor, torch.Tensor | None]:
    """HF outputs plus (main output, pooled output) in hookscope's terms."""
    out = hf(pixel_values=pixels, output_hidden_states=True, output_attentions=True, **kwargs)
    if getattr(out, "logits", None) is not None:
        main = out.logits
    elif getattr(out, "image_embeds", None) is not None:
        main = out.image_embeds
    else:
        main = out.last_hidden_state
    return out, main, getattr(out, "pooler_output", None)


def pixels_for(
    dtype: torch.dtype, height: int = 35, width: int = 35, batch: int = 2, seed: int = 1
) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, height, width, generator=gen, dtype=torch.float32).to(dtype)
