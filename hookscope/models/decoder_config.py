"""DecoderConfig: every choice a decoder-only language model makes, as typed, validated fields."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from hookscope.components.rotary import RopeScaling
from hookscope.errors import ConfigError
from hookscope.models.config_base import FamilyConfig


@dataclass(frozen=True, kw_only=True)
class DecoderConfig(FamilyConfig):
    """Shape and numerics of a decoder LM (GPT-2, Pythia, Llama, Mistral, Qwen2/3, Gemma 2, SmolLM2...).

    Variations inside the topology are fields here; the block topology (sequential or parallel
    attention + MLP) is ``parallel_attn_mlp``, which picks a different block class.
    """

    d_model: int
    n_layers: int
    n_heads: int
    d_head: int
    d_mlp: int
    d_vocab: int
    n_ctx: int
    n_kv_heads: int | None = None  # None: same as n_heads (MHA)
    act_fn: str = "gelu_new"
    mlp: Literal["plain", "gated"] = "plain"
    norm: Literal["layernorm", "rmsnorm", "rmsnorm_plus_one"] = "layernorm"
    norm_eps: float = 1e-5
    positional: Literal["learned", "rotary"] = "learned"
    rotary_dim: int | None = None  # None: the whole head
    rotary_base: float = 10000.0
    rope_scaling: RopeScaling | None = None
    parallel_attn_mlp: bool = False
    qkv_bias: bool = False
    attn_out_bias: bool = False
    mlp_bias: bool = False
    unembed_bias: bool = False
    qk_norm: bool = False
    post_norms: bool = False  # Gemma 2: norms after attention and MLP as well as before
    embed_scale: float | None = None
    attn_scale: float | None = None  # None: d_head ** -0.5
    attn_softmax_float32: bool = True  # False: softmax in the activation dtype (HF GPT-2 eager)
    attn_softcap: float | None = None
    final_softcap: float | None = None
    sliding_windows: tuple[int | None, ...] = ()  # per layer; () means no sliding windows
    tie_embeddings: bool = False
    padding_idx: int | None = None  # embedding row that gets no gradient (HF nn.Embedding padding_idx)
    architecture: str = "GPT2LMHeadModel"  # the HF class this was converted from (for to_hf)
    hf_config: dict = field(default_factory=dict, compare=False, repr=False)  # source config, for to_hf

    def __post_init__(self) -> None:
        if self.n_kv_heads is None:
            object.__setattr__(self, "n_kv_heads", self.n_heads)
        if self.rotary_dim is None and self.positional == "rotary":
            object.__setattr__(self, "rotary_dim", self.d_head)
        if not self.sliding_windows:
            object.__setattr__(self, "sliding_windows", (None,) * self.n_layers)
        self._require_positive("d_model", "n_layers", "n_heads", "d_head", "d_mlp", "d_vocab", "n_ctx")
        if self.n_heads % self.n_kv_heads:  # type: ignore[operator]
            raise ConfigError(
                f"n_heads ({self.n_heads}) must be a multiple of n_kv_heads ({self.n_kv_heads}) for GQA"
            )
        self._require_activation("act_fn")
        if self.positional == "rotary" and (self.rotary_dim or 0) % 2:
            raise ConfigError(f"rotary_dim must be even, got {self.rotary_dim}")
        if len(self.sliding_windows) != self.n_layers:
            raise ConfigError(
                f"sliding_windows has {len(self.sliding_windows)} entries for {self.n_layers} layers"
            )
