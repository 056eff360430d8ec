"""WhisperConfig: the shape of a Whisper encoder-decoder and its decoding defaults, typed and validated."""

from __future__ import annotations

from dataclasses import dataclass, field

from hookscope.errors import ConfigError
from hookscope.models.config_base import FamilyConfig


@dataclass(frozen=True, kw_only=True)
class WhisperConfig(FamilyConfig):
    """Shape and numerics of a Whisper model (every size from tiny.en to large-v3).

    The encoder reads ``n_mels`` log-mel bins over ``2 * n_audio_ctx`` frames (30 s of audio for the
    released models); the decoder reads at most ``n_text_ctx`` tokens. Decoding defaults
    (``suppress_tokens`` and friends) are the checkpoint's, used by ``transcribe``.
    """

    n_mels: int
    d_model: int
    n_audio_ctx: int  # encoder positions (after the stride-2 convolution)
    n_text_ctx: int  # decoder positions
    d_vocab: int
    n_encoder_layers: int
    n_decoder_layers: int
    n_encoder_heads: int
    n_decoder_heads: int
    d_encoder_mlp: int
    d_decoder_mlp: int
    act_fn: str = "gelu"
    norm_eps: float = 1e-5
    decoder_start_token_id: int = 50257
    eos_token_id: int = 50256
    pad_token_id: int = 50256
    suppress_tokens: tuple[int, ...] = ()
    begin_suppress_tokens: tuple[int, ...] = ()
    hf_config: dict = field(default_factory=dict, compare=False, repr=False)  # source config, for to_hf

    def __post_init__(self) -> None:
        self._require_positive(
            "n_mels", "d_model", "n_audio_ctx", "n_text_ctx", "d_vocab", "n_encoder_layers", "n_decoder_layers",
            "n_encoder_heads", "n_decoder_heads", "d_encoder_mlp", "d_decoder_mlp",
        )
        for name in ("n_encoder_heads", "n_decoder_heads"):
            if self.d_model % getattr(self, name):
                raise ConfigError(
                    f"d_model ({self.d_model}) must be a multiple of {name} ({getattr(self, name)})"
                )
        self._require_activation("act_fn")
        object.__setattr__(self, "suppress_tokens", tuple(int(t) for t in self.suppress_tokens))
        object.__setattr__(self, "begin_suppress_tokens", tuple(int(t) for t in self.begin_suppress_tokens))

    @property
    def n_frames(self) -> int:
        """Mel frames the encoder reads: two per encoder position (conv2 has stride 2)."""
        return 2 * self.n_audio_ctx
