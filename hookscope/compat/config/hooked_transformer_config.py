"""``HookedTransformerConfig``: TransformerLens's config, translated to and from the native :class:`DecoderConfig`.

The TL config is what TL code reads (``model.cfg.n_layers``, ``cfg.normalization_type``, ``cfg.device``...);
the native config is what the engine runs. Attributes TL does not have (``cfg.norm``, ``cfg.positional``...)
are read from the native config the TL config was made for, so native code keeps working on a compat model.
"""

from __future__ import annotations

import dataclasses
import math
import pprint
import random
from dataclasses import dataclass
from typing import Any

import torch

from hookscope.components.activations import ACTIVATIONS
from hookscope.models.decoder_config import DecoderConfig

_NORMS = {"LN": "layernorm", "RMS": "rmsnorm", "LNPre": "layernorm_pre", "RMSPre": "rmsnorm_pre", None: "none"}
_TL_NORMS = {"layernorm": "LN", "rmsnorm": "RMS", "rmsnorm_plus_one": "RMS", "layernorm_pre": "LNPre",
             "rmsnorm_pre": "RMSPre", "none": None}
_POSITIONS = {"standard": "learned", "rotary": "rotary", "shortformer": "shortformer"}


@dataclass
class HookedTransformerConfig:
    """TransformerLens's ``HookedTransformerConfig`` fields and defaults (mutable, as in TL).

    ``n_heads`` defaults to ``d_model // d_head``, ``d_mlp`` to ``4 * d_model``, ``d_vocab_out`` to
    ``d_vocab``, ``initializer_range`` to ``0.8 / sqrt(d_model)`` (``init_mode="gpt2"``), ``attn_scale`` to
    ``sqrt(d_head)`` (a divisor, as TL), ``device`` to CUDA when available; ``n_params`` counts the attention
    and MLP weights as TL does.
    """

    d_model: int
    d_head: int
    n_layers: int
    n_ctx: int
    n_heads: int = -1
    d_mlp: int | None = None
    d_vocab: int = -1
    device: str | None = None
    use_attn_result: bool = False
    use_split_qkv_input: bool = False
    default_prepend_bos: bool = True
    positional_embedding_type: str = "standard"
    n_key_value_heads: int | None = None
    attn_only: bool = False
    gated_mlp: bool = False
    eps: float = 1e-5
    act_fn: str | None = "relu"
    normalization_type: str | None = "LN"
    final_rms: bool = False
    dtype: torch.dtype = torch.float32
    model_name: str = "custom"
    use_attn_scale: bool = True
    attn_scale: float = -1.0
    use_hook_mlp_in: bool = False
    use_attn_in: bool = False
    use_qk_norm: bool = False
    use_local_attn: bool = False
    original_architecture: str | None = None
    tokenizer_name: str | None = None
    window_size: int | None = None
    attn_types: list | None = None
    init_mode: str = "gpt2"
    n_devices: int = 1
    attention_dir: str = "causal"
    seed: int | None = None
    initializer_range: float = -1.0
    init_weights: bool = True
    d_vocab_out: int = -1
    parallel_attn_mlp: bool = False
    rotary_dim: int | None = None
    n_params: int | None = None
    use_hook_tokens: bool = False
    tokenizer_prepends_bos: bool | None = None
    rotary_base: float = 10000
    rotary_adjacent_pairs: bool = False  # GPT-J's rotary pairing (features 2j, 2j + 1)
    trust_remote_code: bool = False
    tie_word_embeddings: bool = False
    relative_attention_max_distance: int | None = None  # T5 (HookedEncoderDecoder)
    relative_attention_num_buckets: int | None = None
    decoder_start_token_id: int | None = None
    use_normalization_before_and_after: bool = False
    attn_scores_soft_cap: float = -1.0
    output_logits_soft_cap: float = -1.0

    def __post_init__(self) -> None:
        if self.n_heads == -1:
            if self.d_model % self.d_head:
                raise ValueError(f"d_model ({self.d_model}) must be divisible by d_head ({self.d_head})")
            self.n_heads = self.d_model // self.d_head
        if self.d_mlp is None:
            self.d_mlp = 4 * self.d_model
        if self.seed is not None:
            torch.manual_seed(self.seed)
            random.seed(self.seed)
        if not self.attn_only and self._base_act_fn() not in ACTIVATIONS:
            raise ValueError(f"act_fn={self.act_fn!r} is not one the native engine runs: {sorted(ACTIVATIONS)} "
                             "(or one of them with '_ln': SoLU-style, a LayerNorm on the activations)")
        if self.initializer_range < 0:
            self.initializer_range = 0.8 / math.sqrt(self.d_model) if self.init_mode == "gpt2" else 1.0
        if self.d_vocab_out == -1:
            self.d_vocab_out = self.d_vocab
        if self.positional_embedding_type == "rotary" and self.rotary_dim is None:
            self.rotary_dim = self.d_head
        self.n_params = self.n_layers * self.d_model * self.d_head * self.n_heads * 4
        if not self.attn_only:
            self.n_params += self.n_layers * self.d_model * self.d_mlp * (2 + int(self.gated_mlp))
        if self.device is None:
            self.device = "cuda" if torch.cuda.is_available() else "cpu"
        if self.use_attn_scale and self.attn_scale == -1.0:
            self.attn_scale = math.sqrt(self.d_head)
        if self.default_prepend_bos not in (True, False):
            raise ValueError(f"default_prepend_bos must be True or False, got {self.default_prepend_bos!r}")

    def __getattr__(self, name: str) -> Any:
        native = self.__dict__.get("_native")
        if native is not None and not name.startswith("_") and hasattr(native, name):
            return getattr(native, name)
        raise AttributeError(f"HookedTransformerConfig has no attribute {name!r}")

    @classmethod
    def unwrap(cls, config: dict | HookedTransformerConfig) -> HookedTransformerConfig:
        """A config from a dict (or the config itself), as TL's ``unwrap``."""
        if isinstance(config, dict):
            return cls.from_dict(config)
        if isinstance(config, cls):
            return config
        raise TypeError(f"expected a HookedTransformerConfig or a dict, got {type(config).__name__}")

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any]) -> HookedTransformerConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(config_dict) - names)
        if unknown:
            raise TypeError(f"HookedTransformerConfig has no field(s) {unknown} (hookscope.compat supports: "
                            f"{sorted(names)})")
        return cls(**config_dict)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def __repr__(self) -> str:
        return "HookedTransformerConfig:\n" + pprint.pformat(self.to_dict())

    def is_layer_norm_activation(self) -> bool:
        return self.act_fn is not None and self.act_fn.endswith("_ln")

    def _base_act_fn(self) -> str | None:
        """The activation without TL's "_ln" suffix (``solu_ln`` is SoLU followed by a LayerNorm)."""
        return self.act_fn[:-3] if self.is_layer_norm_activation() else self.act_fn  # type: ignore[index]

    # ------------------------------------------------------------------ native translation
    def to_native(self) -> DecoderConfig:
        """The :class:`DecoderConfig` that runs this model; a clear error for what the engine cannot express.

        A config that came from a native model (``from_pretrained``'s ``model.cfg``) keeps what TL's fields
        cannot say (Gemma's ``1 + weight`` norms and scaled embedding, missing biases, OPT's position offset,
        float32 q.k...): the native config with only the fields changed since then applied, so
        ``HookedTransformer(model.cfg)`` builds the same model (TL's fields alone would silently build
        another one, e.g. plain RMSNorm for Gemma).
        """
        built = self._native_from_fields()
        native = self.__dict__.get("_native")
        if native is None:
            return built
        untouched = type(self).from_native(native)._native_from_fields()
        changed = {
            f.name: getattr(built, f.name) for f in dataclasses.fields(built)
            if getattr(built, f.name) != getattr(untouched, f.name)
        }
        if "n_layers" in changed and "sliding_windows" not in changed and native.sliding_windows:
            changed["sliding_windows"] = native.sliding_windows[: changed["n_layers"]]  # per layer: the first
        return dataclasses.replace(native, **changed)

    def _native_from_fields(self) -> DecoderConfig:
        """The native config TL's fields describe (TL's conventions: biases everywhere, and so on)."""
        _refuse_unsupported(self)
        windows: tuple[int | None, ...] = ()
        if self.use_local_attn:
            types = (self.attn_types or ())[: self.n_layers]  # a model cut to fewer layers keeps the first
            windows = tuple(self.window_size if t == "local" else None for t in types)
        return DecoderConfig(
            d_model=self.d_model, n_layers=self.n_layers, n_heads=self.n_heads, d_head=self.d_head,
            d_mlp=0 if self.attn_only else (self.d_mlp or 0), d_vocab=self.d_vocab, n_ctx=self.n_ctx,
            n_kv_heads=self.n_key_value_heads, act_fn=self._base_act_fn() or "relu",
            mlp="gated" if self.gated_mlp else "plain", mlp_norm=self._mlp_norm(),
            norm=_NORMS[self.normalization_type], norm_eps=self.eps,  # type: ignore[arg-type]
            final_norm="rmsnorm" if self.final_rms else None, attn_only=self.attn_only,
            d_vocab_out=self.d_vocab_out if self.d_vocab_out != self.d_vocab else None,
            positional=_POSITIONS[self.positional_embedding_type],  # type: ignore[arg-type]
            rotary_dim=self.rotary_dim, rotary_base=float(self.rotary_base),
            rotary_interleaved=self.rotary_adjacent_pairs, parallel_attn_mlp=self.parallel_attn_mlp, qkv_bias=True,
            attn_out_bias=True, mlp_bias=True,
            unembed_bias=True, qk_norm=self.use_qk_norm, post_norms=self.use_normalization_before_and_after,
            attn_scale=(1.0 / self.attn_scale) if self.use_attn_scale else 1.0,
            attn_softcap=self.attn_scores_soft_cap if self.attn_scores_soft_cap > 0 else None,
            final_softcap=self.output_logits_soft_cap if self.output_logits_soft_cap > 0 else None,
            sliding_windows=windows, tie_embeddings=self.tie_word_embeddings,
            architecture=self.original_architecture or "GPT2LMHeadModel",
        )

    def _mlp_norm(self) -> str | None:
        """TL's norm inside a SoLU MLP: a LayerNorm over the neurons ("LN" models) or LNPre (all others)."""
        if self.attn_only or not self.is_layer_norm_activation():
            return None
        return "layernorm" if self.normalization_type == "LN" else "layernorm_pre"

    @classmethod
    def from_native(cls, native: DecoderConfig, **overrides: Any) -> HookedTransformerConfig:
        """The TL view of a native config (what ``from_pretrained`` reports as ``model.cfg``)."""
        norm = _TL_NORMS[native.norm]
        scale = native.attn_scale
        fields: dict[str, Any] = dict(
            d_model=native.d_model, d_head=native.d_head, n_layers=native.n_layers, n_ctx=native.n_ctx,
            n_heads=native.n_heads, d_mlp=native.d_mlp, d_vocab=native.d_vocab,
            act_fn=native.act_fn + ("_ln" if native.mlp_norm is not None else ""),
            attn_only=native.attn_only, d_vocab_out=native.d_vocab_out or native.d_vocab,
            final_rms=native.final_norm == "rmsnorm" and native.norm != "rmsnorm",
            n_key_value_heads=native.n_kv_heads if native.n_kv_heads != native.n_heads else None,
            gated_mlp=native.mlp == "gated", normalization_type=norm, eps=native.norm_eps,
            positional_embedding_type={"learned": "standard"}.get(native.positional, native.positional),
            rotary_dim=native.rotary_dim, rotary_base=native.rotary_base, parallel_attn_mlp=native.parallel_attn_mlp,
            rotary_adjacent_pairs=native.rotary_interleaved,
            attn_scale=(1.0 / scale) if scale else -1.0, use_qk_norm=native.qk_norm,
            use_normalization_before_and_after=native.post_norms,
            attn_scores_soft_cap=native.attn_softcap or -1.0, output_logits_soft_cap=native.final_softcap or -1.0,
            original_architecture=native.architecture, tie_word_embeddings=native.tie_embeddings,
            use_local_attn=any(w is not None for w in native.sliding_windows),
            window_size=next((w for w in native.sliding_windows if w is not None), None),
            attn_types=["local" if w is not None else "global" for w in native.sliding_windows],
        )
        fields.update(overrides)
        cfg = cls(**fields)
        cfg.__dict__["_native"] = native
        return cfg


def _refuse_unsupported(cfg: HookedTransformerConfig) -> None:
    """What TL can express and the native decoder cannot is refused by name, never approximated."""
    problems = []
    if cfg.normalization_type not in _NORMS:
        problems.append(f"normalization_type={cfg.normalization_type!r} (LN, LNPre, RMS, RMSPre or None)")
    if cfg.positional_embedding_type not in _POSITIONS:
        problems.append(f"positional_embedding_type={cfg.positional_embedding_type!r} (native: standard, rotary)")
    if cfg.attention_dir != "causal":
        problems.append(f"attention_dir={cfg.attention_dir!r} (HookedTransformer is causal; see HookedEncoder)")
    if cfg.d_vocab <= 0:
        problems.append("d_vocab must be set (a tokenizer-derived d_vocab needs from_pretrained)")
    if cfg.gated_mlp and cfg.is_layer_norm_activation() and not cfg.attn_only:
        problems.append(f"act_fn={cfg.act_fn!r} with gated_mlp (the activation norm goes with a plain MLP)")
    if problems:
        raise NotImplementedError(
            "hookscope's native decoder cannot run this HookedTransformerConfig: " + "; ".join(problems)
        )
