"""DecoderConfig: every choice a decoder-only language model makes, as typed, validated fields."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, get_args

from hookscope.components.rotary import RopeScaling
from hookscope.errors import ConfigError
from hookscope.models.config_base import FamilyConfig

NormKind = Literal["layernorm", "rmsnorm", "rmsnorm_plus_one", "layernorm_pre", "rmsnorm_pre", "none"]


@dataclass(frozen=True, kw_only=True)
class DecoderConfig(FamilyConfig):
    """Shape and numerics of a decoder LM (GPT-2, GPT-Neo, GPT-J, OPT, Pythia, Phi, Llama, Qwen2/3, Gemma...).

    Variations inside the topology are fields here; the block topology (sequential or parallel
    attention + MLP, or attention only) is ``parallel_attn_mlp`` / ``attn_only``, which pick a different
    block class.

    From-scratch fields (TransformerLens parity): ``attn_only`` blocks have no MLP (``d_mlp`` may stay 0);
    ``norm`` is the blocks' normalisation and ``final_norm`` the one before the unembedding (None: the same
    as ``norm``), each one of LayerNorm, RMSNorm, Gemma's RMSNorm, their weightless "_pre" forms
    (TransformerLens ``LNPre`` / ``RMSPre``) or "none"; ``d_vocab_out`` (None: ``d_vocab``) sizes the
    unembedding, e.g. a model that reads tokens and predicts labels.
    """

    d_model: int
    n_layers: int
    n_heads: int
    d_head: int
    d_mlp: int = 0  # 0 only for attention-only models
    d_vocab: int
    n_ctx: int
    n_kv_heads: int | None = None  # None: same as n_heads (MHA)
    act_fn: str = "gelu_new"
    mlp: Literal["plain", "gated"] = "plain"
    mlp_norm: NormKind | None = None  # a norm on the MLP's activations before W_out (TransformerLens SoLU)
    norm: NormKind = "layernorm"
    final_norm: NormKind | None = None  # None: same as norm
    norm_eps: float = 1e-5
    # "shortformer" (TransformerLens): learned positions added to the attention's query and key inputs
    # only, never to the residual stream
    positional: Literal["learned", "rotary", "shortformer"] = "learned"
    pos_offset: int = 0  # learned-position rows stored before position 0 (HF OPT: 2)
    rotary_dim: int | None = None  # None: the whole head
    rotary_base: float = 10000.0
    rotary_interleaved: bool = False  # GPT-J pairs features (2j, 2j + 1); False: (j, j + rotary_dim / 2)
    rope_scaling: RopeScaling | None = None
    parallel_attn_mlp: bool = False
    attn_only: bool = False  # blocks with attention and no MLP
    d_vocab_out: int | None = None  # None: d_vocab
    qkv_bias: bool = False
    attn_out_bias: bool = False
    mlp_bias: bool = False
    unembed_bias: bool = False
    qk_norm: bool = False
    qk_norm_type: NormKind = "rmsnorm"  # the per-head q/k norms' kind (Qwen3 RMSNorm, Phi LayerNorm)
    post_norms: bool = False  # Gemma 2: norms after attention and MLP as well as before
    embed_scale: float | None = None
    attn_scale: float | None = None  # None: d_head ** -0.5
    prescale_query: bool = False  # scale the query (after hook_q) instead of the scores (HF OPT's rounding)
    softmax_in_float32: bool = True  # False: softmax in the scores' dtype (HF GPT-2 eager)
    qk_in_float32: bool = False  # q.k in float32 whatever the activation dtype (HF GPT-Neo)
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
        if self.final_norm is None:
            object.__setattr__(self, "final_norm", self.norm)
        if self.d_vocab_out is None:
            object.__setattr__(self, "d_vocab_out", self.d_vocab)
        sizes = ("d_model", "n_layers", "n_heads", "d_head", "d_vocab", "d_vocab_out", "n_ctx")
        self._require_positive(*sizes, *(() if self.attn_only else ("d_mlp",)))
        self._check_from_scratch_fields()
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

    def _check_from_scratch_fields(self) -> None:
        for name in ("norm", "final_norm", "qk_norm_type"):
            if getattr(self, name) not in get_args(NormKind):
                raise ConfigError(f"DecoderConfig.{name}={getattr(self, name)!r}; choose one of {get_args(NormKind)}")
        if self.mlp_norm is not None and (self.mlp_norm not in get_args(NormKind) or self.mlp != "plain"):
            raise ConfigError(f"mlp_norm={self.mlp_norm!r} needs mlp='plain' and one of {get_args(NormKind)}")
        if isinstance(self.pos_offset, bool) or not isinstance(self.pos_offset, int) or self.pos_offset < 0:
            raise ConfigError(f"pos_offset must be a whole number >= 0, got {self.pos_offset!r}")
        if self.attn_only and self.parallel_attn_mlp:
            raise ConfigError("attn_only and parallel_attn_mlp exclude each other (an attention-only block has no MLP)")
        if self.attn_only and self.d_mlp:
            raise ConfigError(f"an attention-only model has no MLP: leave d_mlp at 0 (got {self.d_mlp})")
        if self.tie_embeddings and self.d_vocab_out != self.d_vocab:
            raise ConfigError(
                f"tie_embeddings needs d_vocab_out == d_vocab (got {self.d_vocab_out} and {self.d_vocab})"
            )
