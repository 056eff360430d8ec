"""ViT-style image encoders: ViT, DeiT (distillation token) and the CLIP vision tower.

Read top to bottom: position-table interpolation (a pure function mirroring HF), the patch embedding,
the pre-LN block (non-causal attention over all patches), the heads, then the model. Every difference
between the members is a :class:`ViTConfig` field. Hook names follow the decoder scheme over patch
positions; position 0 is the class token (1 is DeiT's distillation token), then patches row by row.
"""

from __future__ import annotations

from typing import Any, Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from hookscope.components.activations import get_activation
from hookscope.components.attention import Attention
from hookscope.components.block_hooks import add_block_hooks, attend
from hookscope.components.masks import AttentionMask
from hookscope.components.mlp import MLP
from hookscope.components.norm import LayerNorm
from hookscope.hooks import HookedModule, HookPoint
from hookscope.models.delegation import ExportMixin
from hookscope.models.input_checks import check_residual
from hookscope.models.vit_config import ViTConfig
from hookscope.models.vit_images import ImageSettings, default_image_settings, preprocess_images
from hookscope.models.weight_views import StackedWeightsMixin

ReturnType = Literal["auto", "logits", "hidden", "pooled", None]


def interpolate_patch_positions(patch_pos: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Resample a square table of patch positions ``[n, d_model]`` to a ``(rows, cols)`` grid.

    Mirrors HF ``ViTEmbeddings.interpolate_pos_encoding``: reshape to ``sqrt(n) x sqrt(n)``, bicubic
    ``F.interpolate`` with an explicit output ``size`` (not a scale factor), ``align_corners=False``.
    Returns ``[rows * cols, d_model]`` in row-major patch order.
    """
    n, d = patch_pos.shape
    side = int(n**0.5)
    if side * side != n:
        raise ValueError(f"cannot interpolate {n} patch positions: the trained patch grid is not square")
    square = patch_pos.reshape(1, side, side, d).permute(0, 3, 1, 2)  # [1, d_model, side, side]
    resized = F.interpolate(square, size=grid, mode="bicubic", align_corners=False)
    return resized.permute(0, 2, 3, 1).reshape(grid[0] * grid[1], d)


class PatchEmbed(nn.Module):
    """Non-overlapping patches through a strided Conv2d -> ``[batch, patch, d_model]`` (row-major patches)."""

    def __init__(self, n_channels: int, d_model: int, patch_size: int, bias: bool) -> None:
        super().__init__()
        self.proj = nn.Conv2d(n_channels, d_model, kernel_size=patch_size, stride=patch_size, bias=bias)
        self.hook_patch_embed = HookPoint()  # [batch, patch, d_model]

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if pixel_values.ndim != 4 or pixel_values.shape[1] != self.proj.in_channels:
            raise ValueError(
                f"pixel_values must be [batch, {self.proj.in_channels}, height, width], got "
                f"{tuple(pixel_values.shape)}"
            )
        x = self.proj(pixel_values)  # [batch, d_model, rows, cols]
        return self.hook_patch_embed(x.flatten(2).transpose(1, 2))


class ImagePosEmbed(nn.Module):
    """Learned positions ``W_pos [n_special + patches, d_model]``; interpolated for other sizes on request."""

    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(cfg.n_positions, cfg.d_model))
        nn.init.normal_(self.weight, std=0.02)
        self.n_special = cfg.n_special
        self.image_size = cfg.image_size

    def forward(self, grid: tuple[int, int], image_hw: tuple[int, int], interpolate: bool) -> torch.Tensor:
        """The position table for this input: ``[n_special + rows * cols, d_model]``."""
        if not interpolate:
            if image_hw != self.image_size:
                raise ValueError(
                    f"input image size {image_hw[0]}x{image_hw[1]} does not match the model's "
                    f"{self.image_size[0]}x{self.image_size[1]}; pass interpolate_pos_encoding=True to "
                    "interpolate the position embeddings (as HF does)"
                )
            return self.weight
        n_trained = self.weight.shape[0] - self.n_special
        # HF keeps the table as is only for a square image with the trained number of patches.
        if grid[0] * grid[1] == n_trained and image_hw[0] == image_hw[1]:
            return self.weight
        patches = interpolate_patch_positions(self.weight[self.n_special :], grid)
        return torch.cat([self.weight[: self.n_special], patches], dim=0)


class ViTBlock(nn.Module):
    """Pre-LN encoder block: ``x + attn(ln1(x))`` then ``+ mlp(ln2(.))``, attention over every position."""

    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.ln1 = LayerNorm(cfg.d_model, cfg.norm_eps)
        self.attn = Attention(
            cfg.d_model, cfg.n_heads, cfg.n_heads, cfg.d_head, qkv_bias=cfg.qkv_bias, out_bias=True, rotary=False
        )
        self.ln2 = LayerNorm(cfg.d_model, cfg.norm_eps)
        self.mlp = MLP(cfg.d_model, cfg.d_mlp, cfg.act_fn, bias=True)
        add_block_hooks(self)

    def forward(self, x: torch.Tensor, mask: AttentionMask) -> torch.Tensor:
        x = self.hook_resid_pre(x)
        x = self.hook_resid_mid(x + self.hook_attn_out(attend(self, self.ln1(x), mask)))
        return self.hook_resid_post(x + self.hook_mlp_out(self.mlp(self.ln2(self.hook_mlp_in(x)))))


class ClassHead(nn.Module):
    """The head on the final-normed tokens -> ``[batch, n_classes]`` (``hook_out``).

    "class" and "projection" read the class token; "teacher" (DeiT) averages a class-token classifier
    and a distillation-token classifier, in HF's order ``(cls + distill) / 2``.
    """

    def __init__(self, kind: str, d_model: int, n_classes: int) -> None:
        super().__init__()
        self.classifier = nn.Linear(d_model, n_classes, bias=kind != "projection")
        self.distill_classifier: nn.Linear | None = (
            nn.Linear(d_model, n_classes) if kind == "teacher" else None
        )
        self.hook_out = HookPoint()  # [batch, n_classes]

    def per_vector(self, x: torch.Tensor) -> torch.Tensor:
        """The class-token classifier applied to any ``[..., d_model]`` (what a lens decodes with)."""
        return self.classifier(x)

    def forward(self, normed: torch.Tensor) -> torch.Tensor:
        logits = self.classifier(normed[:, 0])
        if self.distill_classifier is not None:
            logits = (logits + self.distill_classifier(normed[:, 1])) / 2
        return self.hook_out(logits)


class Pooler(nn.Module):
    """ViTModel / DeiTModel ``pooler_output``: ``act(dense(class token))``."""

    def __init__(self, d_model: int, act: str) -> None:
        super().__init__()
        self.dense = nn.Linear(d_model, d_model)
        self.act = torch.tanh if act == "tanh" else get_activation(act)

    def forward(self, normed: torch.Tensor) -> torch.Tensor:
        return self.act(self.dense(normed[:, 0]))


class LensDecoder(NamedTuple):
    """``(final_norm, head_fn)``; calling it decodes a residual ``[..., d_model]`` to class logits."""

    final_norm: nn.Module
    head_fn: Any

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.head_fn(self.final_norm(x))


class ViT(StackedWeightsMixin, ExportMixin, HookedModule):
    """A hooked ViT / DeiT / CLIP vision encoder, numerically identical to its Hugging Face source."""

    def __init__(self, cfg: ViTConfig, image_settings: ImageSettings | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        self.embed = PatchEmbed(cfg.n_channels, d, cfg.patch_size, cfg.patch_bias)
        self.cls_token = nn.Parameter(torch.empty(d))
        nn.init.normal_(self.cls_token, std=0.02)
        self.dist_token: nn.Parameter | None = nn.Parameter(torch.empty(d)) if cfg.distillation_token else None
        if self.dist_token is not None:
            nn.init.normal_(self.dist_token, std=0.02)
        self.hook_embed = HookPoint()  # [batch, pos, d_model]  special tokens + patches, before positions
        self.pos_embed = ImagePosEmbed(cfg)
        self.hook_pos_embed = HookPoint()  # [batch, pos, d_model]
        self.ln_pre: LayerNorm | None = LayerNorm(d, cfg.norm_eps) if cfg.pre_norm else None
        self.blocks = nn.ModuleList(ViTBlock(cfg) for _ in range(cfg.n_layers))
        self.ln_final = LayerNorm(d, cfg.norm_eps)
        self.pooler: Pooler | None = Pooler(d, cfg.pooler_act) if cfg.pooler else None
        self.head: ClassHead | None = ClassHead(cfg.head, d, cfg.n_classes) if cfg.head != "none" else None
        self.image_settings = image_settings or default_image_settings("vit", cfg.image_size)
        self.setup_hooks()

    # ------------------------------------------------------------------ TransformerLens weight views
    @property
    def W_pos(self) -> torch.Tensor:  # [n_special + patches, d_model]
        return self.pos_embed.weight

    # ------------------------------------------------------------------ inputs
    def to_pixel_values(self, images: Any) -> torch.Tensor:
        """``pixel_values [batch, channels, height, width]`` from images or from pixel values.

        A floating-point tensor ``[batch, C, H, W]`` (or ``[C, H, W]``) is taken as already
        preprocessed pixel values. PIL images, numpy arrays and uint8 tensors (or a list of them) go
        through the model's image-processor settings (``model.image_settings``).
        """
        weight = self.embed.proj.weight
        if isinstance(images, torch.Tensor) and images.is_floating_point():
            pixels = images[None] if images.ndim == 3 else images
            return pixels.to(device=weight.device, dtype=weight.dtype)  # HF casts to the conv's dtype
        return preprocess_images(images, self.image_settings, dtype=weight.dtype, device=weight.device)

    def lens_decoder(self) -> LensDecoder:
        """``(final_norm, head_fn)``: how a lens reads class predictions off the residual stream.

        ``head_fn`` maps normalised vectors ``[..., d_model]`` through the class-token classifier (for
        DeiT with teacher: the class-token half of the head; :func:`hookscope.analysis.vision.class_lens`
        reproduces the full distillation average).
        """
        if self.head is None:
            raise ValueError(
                f"this {self.cfg.architecture} has no classification head, so there are no class "
                "predictions to read; load a *ForImageClassification (or CLIPVisionModelWithProjection) model"
            )
        return LensDecoder(self.ln_final, self.head.per_vector)

    # ------------------------------------------------------------------ forward
    def embed_image(self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool = False) -> torch.Tensor:
        """The residual stream entering block 0 ``[batch, pos, d_model]``: tokens + patches + positions."""
        _check_pixels(pixel_values, self.cfg.n_channels, self.cfg.patch_size)
        batch, _, height, width = pixel_values.shape
        patches = self.embed(pixel_values)  # [batch, patch, d_model]
        grid = (height // self.cfg.patch_size, width // self.cfg.patch_size)
        special = [self.cls_token] if self.dist_token is None else [self.cls_token, self.dist_token]
        tokens = torch.stack(special)[None].expand(batch, -1, -1).to(patches.dtype)
        x = self.hook_embed(torch.cat([tokens, patches], dim=1))
        pos = self.pos_embed(grid, (height, width), interpolate_pos_encoding)  # [pos, d_model]
        x = x + self.hook_pos_embed(pos[None].expand(batch, -1, -1))
        return self.ln_pre(x) if self.ln_pre is not None else x

    def forward(
        self,
        input: Any = None,
        return_type: ReturnType = "auto",
        *,
        pixel_values: torch.Tensor | None = None,
        interpolate_pos_encoding: bool = False,
        start_at_layer: int | None = None,
        stop_at_layer: int | None = None,
    ) -> Any:
        """Run the model.

        Args:
            input: pixel values ``[batch, C, H, W]`` (float), or images (PIL / numpy / uint8 tensor, or a
                list) preprocessed with ``model.image_settings``; with ``start_at_layer``, the residual
                stream ``[batch, pos, d_model]``.
            return_type: "logits" (the head's ``[batch, n_classes]``), "hidden" (HF's ``last_hidden_state``:
                after the final norm, except CLIP's which is before it), "pooled" (HF's ``pooler_output``),
                None, or "auto" (logits when the model has a head, else the last hidden state).
            pixel_values: the same as ``input`` given by HF's keyword.
            interpolate_pos_encoding: interpolate the position table for another image size, as HF does.
            start_at_layer / stop_at_layer: run blocks ``[start, stop)`` only; with ``stop_at_layer`` the
                residual stream entering that block ``[batch, pos, d_model]`` is returned (features).
        """
        if pixel_values is not None:
            if input is not None:
                raise ValueError("pass the image either as input or as pixel_values=, not both")
            input = pixel_values
        if input is None:
            raise ValueError("no input: pass pixel values or images")
        if start_at_layer is None:
            x = self.embed_image(self.to_pixel_values(input), interpolate_pos_encoding)
        else:
            x = check_residual(input, self.pos_embed.weight)
        n_pos = x.shape[1]
        mask = AttentionMask(None, torch.arange(n_pos, device=x.device), n_pos, causal=False)
        for block in self.blocks[start_at_layer:stop_at_layer]:
            x = block(x, mask)
        if stop_at_layer is not None and stop_at_layer < len(self.blocks):
            return x
        return self._outputs(x, return_type)

    def _outputs(self, x: torch.Tensor, return_type: ReturnType) -> Any:
        if return_type is None:
            return None
        if return_type == "auto":
            return_type = "logits" if self.head is not None else "hidden"
        normed = self.ln_final(x)  # [batch, pos, d_model]
        if return_type == "hidden":
            return normed if self.cfg.last_hidden_normed else x
        if return_type == "pooled":
            if self.pooler is not None:
                return self.pooler(normed)
            if not self.cfg.last_hidden_normed:  # CLIP: pooler_output is the normed class token
                return normed[:, 0]
            raise ValueError(f"this {self.cfg.architecture} has no pooler; use return_type='hidden'")
        if return_type == "logits":
            if self.head is None:
                raise ValueError(
                    f"this {self.cfg.architecture} has no head; use return_type='hidden' or 'pooled'"
                )
            return self.head(normed)
        raise ValueError(
            f"unknown return_type {return_type!r}; use 'auto', 'logits', 'hidden', 'pooled' or None"
        )


def _check_pixels(pixel_values: torch.Tensor, n_channels: int, patch_size: int) -> None:
    """``[batch, channels, height, width]`` floats, each side at least one patch; a clear error otherwise."""
    if not pixel_values.is_floating_point():
        raise TypeError(f"pixel_values must be a float tensor, got {pixel_values.dtype} (raw uint8 images go "
                        "in as images and are preprocessed with model.image_settings)")
    if pixel_values.ndim != 4 or pixel_values.shape[1] != n_channels:
        raise ValueError(f"pixel_values must be [batch, {n_channels}, height, width], got shape "
                         f"{tuple(pixel_values.shape)}")
    if min(pixel_values.shape[2:]) < patch_size:
        raise ValueError(f"the image ({pixel_values.shape[2]}x{pixel_values.shape[3]}) is smaller than one "
                         f"{patch_size}x{patch_size} patch")
