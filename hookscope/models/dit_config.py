"""DiTConfig: the shape and numerics of a class-conditional diffusion transformer, as typed fields."""

from __future__ import annotations

from dataclasses import dataclass

from hookscope.errors import ConfigError
from hookscope.models.config_base import FamilyConfig


@dataclass(frozen=True, kw_only=True)
class DiTConfig(FamilyConfig):
    """A DiT (Peebles & Xie 2023) denoiser over ``[batch, in_channels, sample_size, sample_size]`` images.

    Topology: a strided-conv patch embedding plus fixed 2-D sin-cos positions; per block a timestep +
    class conditioning vector, adaLN-Zero modulation, non-causal attention and an MLP; a modulated final
    norm and a linear back to patches. ``out_channels == 2 * in_channels`` is the learned-variance
    layout (the sampler uses the first half, the noise prediction).
    """

    n_layers: int
    n_heads: int
    d_head: int
    in_channels: int
    out_channels: int
    sample_size: int  # image side the position table is laid out for
    patch_size: int
    n_classes: int  # class labels 0..n_classes-1; label n_classes is the "null" class (guidance)
    d_mlp: int | None = None  # default 4 * d_model
    act_fn: str = "gelu_tanh"
    attn_bias: bool = True
    mlp_norm_eps: float = 1e-5  # the LayerNorm before the MLP (diffusers' norm3, its config norm_eps)
    mlp_norm_affine: bool = False  # diffusers' norm_elementwise_affine
    n_freq: int = 256  # sinusoidal timestep features fed to the timestep MLP
    n_train_timesteps: int = 1000  # the noise schedule's length (for the sampler's defaults)

    def __post_init__(self) -> None:
        self._require_positive(
            "n_layers", "n_heads", "d_head", "in_channels", "out_channels", "sample_size", "patch_size", "n_classes"
        )
        if self.sample_size % self.patch_size:
            raise ConfigError(f"sample_size {self.sample_size} is not a multiple of patch_size {self.patch_size}")
        if self.d_model % 4:
            # the 2-D sin-cos table gives half the channels to each axis, each half split sin / cos
            raise ConfigError(f"d_model = n_heads * d_head = {self.d_model} must be a multiple of 4")
        self._require_activation("act_fn")

    @property
    def d_model(self) -> int:
        return self.n_heads * self.d_head

    @property
    def mlp_width(self) -> int:
        return 4 * self.d_model if self.d_mlp is None else self.d_mlp

    @property
    def grid(self) -> int:
        """Patches per side at ``sample_size``."""
        return self.sample_size // self.patch_size
