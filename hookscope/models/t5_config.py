"""T5Config: the choices a T5-family model makes (v1.0, v1.1 / Flan-T5, encoder only), typed and validated."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from hookscope.errors import ConfigError
from hookscope.models.config_base import FamilyConfig


@dataclass(frozen=True, kw_only=True)
class T5Config(FamilyConfig):
    """Shape and numerics of a T5 encoder-decoder (or its encoder alone).

    v1.0: ``mlp="plain"``, ``act_fn="relu"``, tied embeddings, ``scale_decoder_outputs=True`` (the final
    decoder state is multiplied by ``d_model ** -0.5`` before the LM head). v1.1 / Flan-T5:
    ``mlp="gated"``, ``act_fn="gelu_new"``, an untied LM head and no rescale.
    """

    d_model: int
    n_heads: int
    d_head: int
    d_mlp: int
    d_vocab: int
    n_encoder_layers: int
    n_decoder_layers: int = 0  # 0 with encoder_only
    encoder_only: bool = False
    act_fn: str = "relu"
    mlp: Literal["plain", "gated"] = "plain"
    norm_eps: float = 1e-6
    relative_buckets: int = 32
    relative_max_distance: int = 128
    tie_embeddings: bool = True
    scale_decoder_outputs: bool = True
    decoder_start_token_id: int = 0
    pad_token_id: int = 0
    eos_token_ids: tuple[int, ...] = (1,)
    architecture: str = "T5ForConditionalGeneration"  # the HF class this was converted from
    hf_config: dict = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        self._require_positive(
            "d_model", "n_heads", "d_head", "d_mlp", "d_vocab", "n_encoder_layers", "relative_buckets"
        )
        if self.encoder_only and self.n_decoder_layers:
            raise ConfigError("an encoder-only T5Config has no decoder: set n_decoder_layers=0")
        if not self.encoder_only and self.n_decoder_layers <= 0:
            raise ConfigError(
                f"T5Config.n_decoder_layers must be positive for an encoder-decoder, got "
                f"{self.n_decoder_layers} "
                "(pass encoder_only=True for the encoder alone)"
            )
        self._require_activation("act_fn")
        if self.relative_buckets < 4 or self.relative_max_distance <= self.relative_buckets // 2:
            # the logarithmic buckets start at relative_buckets // 2 (decoder) and must end further out
            raise ConfigError(
                f"relative_buckets ({self.relative_buckets}) must be >= 4 and relative_max_distance "
                f"({self.relative_max_distance}) larger than half of it"
            )
