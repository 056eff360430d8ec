"""ViTConfig: every choice a ViT-style image encoder makes (ViT, DeiT, CLIP vision), as typed fields."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from hookscope.errors import ConfigError
from hookscope.models.config_base import FamilyConfig

# What sits on top of the final norm:
#   "none"       ViTModel / DeiTModel / CLIPVisionModel: no head (the output is the last hidden state)
#   "class"      a linear classifier on the class token (ViT/DeiTForImageClassification)
#   "teacher"    DeiT with teacher: mean of a class-token and a distillation-token classifier
#   "projection" CLIPVisionModelWithProjection: a bias-free projection of the normed class token
HeadKind = Literal["none", "class", "teacher", "projection"]


@dataclass(frozen=True, kw_only=True)
class ViTConfig(FamilyConfig):
    """Shape and numerics of a ViT-style encoder over image patches.

    The topology is the same for all members: patch embedding (a strided Conv2d), a class token
    (plus DeiT's distillation token), learned absolute positions, pre-LN blocks, a final LayerNorm.
    The differences are fields: CLIP adds ``pre_norm`` (its ``pre_layrnorm``), has no patch-conv bias,
    uses quick-GELU, and returns its last hidden state *before* the final norm.
    """

    d_model: int
    n_layers: int
    n_heads: int
    d_head: int
    d_mlp: int
    image_size: tuple[int, int]  # (height, width) the position embeddings were trained for
    patch_size: int
    n_channels: int = 3
    act_fn: str = "gelu"
    norm_eps: float = 1e-12
    qkv_bias: bool = True
    patch_bias: bool = True
    distillation_token: bool = False  # DeiT: a second special token after the class token
    pre_norm: bool = False  # CLIP: a LayerNorm on the embeddings before block 0
    last_hidden_normed: bool = True  # CLIP: False (its last_hidden_state skips post_layernorm)
    head: HeadKind = "none"
    n_classes: int = 0  # outputs of the head (classes, or CLIP's projection_dim)
    pooler: bool = False  # ViTModel / DeiTModel: tanh(dense(class token)) as pooler_output
    pooler_act: str = "tanh"
    architecture: str = "ViTModel"  # the HF class this was converted from
    hf_config: dict = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        self._require_positive("d_model", "n_layers", "n_heads", "d_head", "d_mlp", "patch_size", "n_channels")
        if min(self.image_size) < self.patch_size:
            raise ConfigError(f"image_size {self.image_size} is smaller than patch_size {self.patch_size}")
        self._require_activation("act_fn")
        if self.head != "none" and self.n_classes < 1:
            raise ConfigError(f"head={self.head!r} needs n_classes >= 1, got {self.n_classes}")
        if self.head == "teacher" and not self.distillation_token:
            raise ConfigError("head='teacher' reads the distillation token: set distillation_token=True")

    @property
    def n_special(self) -> int:
        """Tokens before the patches: the class token (and DeiT's distillation token)."""
        return 2 if self.distillation_token else 1

    @property
    def grid(self) -> tuple[int, int]:
        """Patch grid ``(rows, cols)`` at the trained image size."""
        return self.image_size[0] // self.patch_size, self.image_size[1] // self.patch_size

    @property
    def n_positions(self) -> int:
        """Rows of the learned position table: special tokens + patches at the trained size."""
        rows, cols = self.grid
        return self.n_special + rows * cols
