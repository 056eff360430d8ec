"""Hugging Face decoder LMs <-> :class:`DecoderConfig` and weight rules, one table entry per architecture."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from hookscope.components.rotary import RopeScaling
from hookscope.convert import decoder_hf_more as more
from hookscope.convert.engine import (
    ConversionError,
    Rule,
    RuleSet,
    chain,
    concat,
    merge_heads_interleaved,
    rename,
    split_heads_interleaved,
    split_rows,
    transpose,
)
from hookscope.convert.hf_config import check_attributes, embedding_padding_idx, require, rope_parameters
from hookscope.models.decoder_config import DecoderConfig


@dataclass(frozen=True)
class DecoderArch:
    """How one HF architecture maps onto the decoder family."""

    hf_class: str
    handled: frozenset[str]
    ignored: frozenset[str]
    config: Callable[[dict[str, Any]], dict[str, Any]]  # HF values -> DecoderConfig kwargs
    rules: Callable[[DecoderConfig], RuleSet]


# ---------------------------------------------------------------------- configs
def _rope(values: dict[str, Any], d_head: int, partial: bool = True) -> dict[str, Any]:
    """RoPE settings. ``partial=False``: the architecture's default RoPE rotates the whole head whatever
    ``partial_rotary_factor`` says (HF Llama, Mistral, Qwen2/3, Gemma 2 ignore it there)."""
    params = rope_parameters(values)
    kind = params.get("rope_type", "default")
    scaling = None
    if kind in ("linear", "llama3"):
        scaling = RopeScaling(
            kind=kind, factor=float(params["factor"]),
            low_freq_factor=float(params.get("low_freq_factor", 1.0)),
            high_freq_factor=float(params.get("high_freq_factor", 4.0)),
            original_max_position_embeddings=int(params.get("original_max_position_embeddings", 8192)),
        )
    else:
        require(kind == "default", f"rope_parameters rope_type {kind!r} (rope_scaling) is not supported natively "
                "(supported: default, linear, llama3); use hookscope.wrap(hf_model) for this model")
    factor = float(params.get("partial_rotary_factor", 1.0))
    if not partial:
        require(kind == "default" or factor == 1.0,
                f"partial_rotary_factor={factor} with rope_type {kind!r} is not supported for this architecture")
        factor = 1.0
    rotary_dim = int(d_head * factor)
    return {"positional": "rotary", "rotary_base": float(params["rope_theta"]), "rope_scaling": scaling,
            "rotary_dim": rotary_dim}


def _windows(values: dict[str, Any], n_layers: int) -> tuple[int | None, ...]:
    window = values.get("sliding_window")
    types = values.get("layer_types")
    if window is None or (values.get("use_sliding_window") is False):
        return (None,) * n_layers
    if types:
        return tuple(window if t == "sliding_attention" else None for t in types)
    return (window,) * n_layers


def gpt2_config(v: dict[str, Any]) -> dict[str, Any]:
    require(not v.get("scale_attn_by_inverse_layer_idx"), "GPT-2 scale_attn_by_inverse_layer_idx is not supported")
    require(not v.get("reorder_and_upcast_attn"), "GPT-2 reorder_and_upcast_attn is not supported")
    require(v.get("scale_attn_weights", True), "GPT-2 scale_attn_weights=False is not supported")
    d = v["n_embd"]
    return dict(
        d_model=d, n_layers=v["n_layer"], n_heads=v["n_head"], d_head=d // v["n_head"],
        d_mlp=v.get("n_inner") or 4 * d, d_vocab=v["vocab_size"], n_ctx=v["n_positions"],
        act_fn=v["activation_function"], norm="layernorm", norm_eps=v["layer_norm_epsilon"],
        positional="learned", qkv_bias=True, attn_out_bias=True, mlp_bias=True, softmax_in_float32=False,
        tie_embeddings=v.get("tie_word_embeddings", True),
    )


def neox_config(v: dict[str, Any]) -> dict[str, Any]:
    d, h = v["hidden_size"], v["num_attention_heads"]
    return dict(
        d_model=d, n_layers=v["num_hidden_layers"], n_heads=h, d_head=d // h, d_mlp=v["intermediate_size"],
        d_vocab=v["vocab_size"], n_ctx=v["max_position_embeddings"], act_fn=v["hidden_act"],
        norm="layernorm", norm_eps=v["layer_norm_eps"], parallel_attn_mlp=v.get("use_parallel_residual", True),
        qkv_bias=v.get("attention_bias", True), attn_out_bias=v.get("attention_bias", True), mlp_bias=True,
        tie_embeddings=v.get("tie_word_embeddings", False), **_rope(v, d // h),
    )


def llama_like_config(v: dict[str, Any]) -> dict[str, Any]:
    """Llama, Mistral, Qwen2, Qwen3 (and SmolLM2, which is Llama)."""
    d, h = v["hidden_size"], v["num_attention_heads"]
    d_head = v.get("head_dim") or d // h
    bias = bool(v.get("attention_bias", False))
    qwen2 = v.get("model_type") == "qwen2"
    return dict(
        d_model=d, n_layers=v["num_hidden_layers"], n_heads=h, n_kv_heads=v.get("num_key_value_heads") or h,
        d_head=d_head, d_mlp=v["intermediate_size"], d_vocab=v["vocab_size"], n_ctx=v["max_position_embeddings"],
        act_fn=v["hidden_act"], mlp="gated", norm="rmsnorm", norm_eps=v["rms_norm_eps"],
        qkv_bias=bias or qwen2, attn_out_bias=bias, mlp_bias=bool(v.get("mlp_bias", False)),
        qk_norm=v.get("model_type") == "qwen3", tie_embeddings=v.get("tie_word_embeddings", False),
        padding_idx=embedding_padding_idx(v),
        sliding_windows=_windows(v, v["num_hidden_layers"]), **_rope(v, d_head, partial=False),
    )


def gemma2_config(v: dict[str, Any]) -> dict[str, Any]:
    d, h = v["hidden_size"], v["num_attention_heads"]
    return dict(
        d_model=d, n_layers=v["num_hidden_layers"], n_heads=h, n_kv_heads=v["num_key_value_heads"],
        d_head=v["head_dim"], d_mlp=v["intermediate_size"], d_vocab=v["vocab_size"],
        n_ctx=v["max_position_embeddings"], act_fn=v["hidden_activation"], mlp="gated",
        norm="rmsnorm_plus_one", norm_eps=v["rms_norm_eps"], qkv_bias=bool(v.get("attention_bias")),
        attn_out_bias=bool(v.get("attention_bias")), post_norms=True,
        embed_scale=float(torch.tensor(d**0.5, dtype=torch.float32)),  # HF keeps it as a float32 buffer
        attn_scale=float(v["query_pre_attn_scalar"]) ** -0.5, attn_softcap=v.get("attn_logit_softcapping"),
        final_softcap=v.get("final_logit_softcapping"), tie_embeddings=v.get("tie_word_embeddings", True),
        padding_idx=embedding_padding_idx(v),
        sliding_windows=_windows(v, v["num_hidden_layers"]), **_rope(v, v["head_dim"], partial=False),
    )


def gemma_config(v: dict[str, Any]) -> dict[str, Any]:
    """Gemma (1): Llama's topology with an embedding scale, ``1 + w`` RMSNorms and a GeGLU MLP."""
    d, h = v["hidden_size"], v["num_attention_heads"]
    d_head = v.get("head_dim") or d // h
    act = v["hidden_act"]  # transformers 5 reads only this one (a legacy "gelu" already became the tanh GELU)
    legacy = v.get("hidden_activation")
    require(legacy in (None, act), f"Gemma hidden_activation={legacy!r} differs from hidden_act={act!r}, which is "
            "what transformers 5 runs; refusing to guess which one the checkpoint was trained with")
    require(not v.get("use_bidirectional_attention"), "Gemma use_bidirectional_attention=True is not supported")
    bias = bool(v.get("attention_bias", False))
    return dict(
        d_model=d, n_layers=v["num_hidden_layers"], n_heads=h, n_kv_heads=v.get("num_key_value_heads") or h,
        d_head=d_head, d_mlp=v["intermediate_size"], d_vocab=v["vocab_size"], n_ctx=v["max_position_embeddings"],
        act_fn=act, mlp="gated", norm="rmsnorm_plus_one", norm_eps=v["rms_norm_eps"], qkv_bias=bias,
        attn_out_bias=bias, embed_scale=float(torch.tensor(d**0.5, dtype=torch.float32)),  # a float32 buffer in HF
        tie_embeddings=v.get("tie_word_embeddings", True), padding_idx=embedding_padding_idx(v),
        **_rope(v, d_head, partial=False),
    )


def gpt_neo_config(v: dict[str, Any]) -> dict[str, Any]:
    """GPT-Neo (TinyStories too): unscaled scores from a float32 q.k, global and local (windowed) layers."""
    d, h, n = v["hidden_size"], v["num_heads"], v["num_layers"]
    require(d % h == 0, f"GPT-Neo hidden_size={d} is not a multiple of num_heads={h}")
    kinds = list(v["attention_layers"])
    require(len(kinds) == n, f"GPT-Neo attention_layers has {len(kinds)} entries for num_layers={n}")
    unknown = sorted(set(kinds) - {"global", "local"})
    require(not unknown, f"GPT-Neo attention layer types {unknown} are not supported (only global, local)")
    window = v["window_size"]
    require("local" not in kinds or window >= 1, f"GPT-Neo window_size={window} must be at least 1")
    # HF's local mask keeps key j for query i when i - window_size < j <= i: our window convention exactly
    return dict(
        d_model=d, n_layers=n, n_heads=h, d_head=d // h, d_mlp=v.get("intermediate_size") or 4 * d,
        d_vocab=v["vocab_size"], n_ctx=v["max_position_embeddings"], act_fn=v["activation_function"],
        norm="layernorm", norm_eps=v["layer_norm_epsilon"], positional="learned", qkv_bias=False,
        attn_out_bias=True, mlp_bias=True, attn_scale=1.0, qk_in_float32=True,
        softmax_in_float32=False,  # the softmax runs in the scores' dtype: float32, or float64 in a float64 model
        tie_embeddings=v.get("tie_word_embeddings", True),
        sliding_windows=tuple(window if kind == "local" else None for kind in kinds),
    )


def opt_config(v: dict[str, Any]) -> dict[str, Any]:
    """OPT (pre-norm checkpoints): learned positions stored 2 rows in, the query scaled before q.k."""
    d, h = v["hidden_size"], v["num_attention_heads"]
    require(d % h == 0, f"OPT hidden_size={d} is not a multiple of num_attention_heads={h}")
    require(v.get("do_layer_norm_before", True), "OPT do_layer_norm_before=False (opt-350m: norms after each "
            "residual addition) is not supported natively; use hookscope.wrap(hf_model) for this model")
    proj = v.get("word_embed_proj_dim") or d
    require(proj == d, f"OPT word_embed_proj_dim={proj} != hidden_size={d} (projected embeddings, opt-350m) is "
            "not supported natively; use hookscope.wrap(hf_model) for this model")
    bias, affine = bool(v.get("enable_bias", True)), bool(v.get("layer_norm_elementwise_affine", True))
    norm = "layernorm" if affine else "layernorm_pre"  # elementwise_affine=False: no weight and no bias
    return dict(
        d_model=d, n_layers=v["num_hidden_layers"], n_heads=h, d_head=d // h, d_mlp=v["ffn_dim"],
        d_vocab=v["vocab_size"], n_ctx=v["max_position_embeddings"], act_fn=v["activation_function"],
        norm=norm, final_norm="none" if v.get("_remove_final_layer_norm") else norm,
        norm_eps=1e-5,  # torch.nn.LayerNorm's default: OPT passes none
        positional="learned", pos_offset=2, prescale_query=True, qkv_bias=bias, attn_out_bias=bias,
        mlp_bias=bias, tie_embeddings=v.get("tie_word_embeddings", True), padding_idx=embedding_padding_idx(v),
    )


# ---------------------------------------------------------------------- weight rules
def _final(cfg: DecoderConfig, embed: str, norm: str, head: str, norm_bias: bool) -> list[Rule]:
    rules = [rename(embed, "embed.weight"), rename(f"{norm}.weight", "ln_final.weight")]
    if norm_bias:
        rules.append(rename(f"{norm}.bias", "ln_final.bias"))
    if not cfg.tie_embeddings:
        rules.append(rename(head, "unembed.weight"))
    return rules


def gpt2_rules(cfg: DecoderConfig) -> RuleSet:
    d = cfg.d_model
    h, b = "transformer.h.{i}", "blocks.{i}"
    qkv = [f"{b}.attn.{p}_proj" for p in "qkv"]
    rules = [
        rename("transformer.wpe.weight", "pos_embed.weight"),
        *[rename(f"{h}.{s}.{w}", f"{b}.{t}.{w}") for s, t in (("ln_1", "ln1"), ("ln_2", "ln2"))
          for w in ("weight", "bias")],
        Rule((f"{h}.attn.c_attn.weight",), tuple(f"{p}.weight" for p in qkv),
             chain(split_rows([d, d, d], dim=1), transpose), chain(transpose, concat(dim=1))),
        Rule((f"{h}.attn.c_attn.bias",), tuple(f"{p}.bias" for p in qkv), split_rows([d, d, d]), concat()),
        Rule((f"{h}.attn.c_proj.weight",), (f"{b}.attn.o_proj.weight",), transpose, transpose),
        rename(f"{h}.attn.c_proj.bias", f"{b}.attn.o_proj.bias"),
        Rule((f"{h}.mlp.c_fc.weight",), (f"{b}.mlp.up_proj.weight",), transpose, transpose),
        rename(f"{h}.mlp.c_fc.bias", f"{b}.mlp.up_proj.bias"),
        Rule((f"{h}.mlp.c_proj.weight",), (f"{b}.mlp.down_proj.weight",), transpose, transpose),
        rename(f"{h}.mlp.c_proj.bias", f"{b}.mlp.down_proj.bias"),
        *_final(cfg, "transformer.wte.weight", "transformer.ln_f", "lm_head.weight", norm_bias=True),
    ]
    return RuleSet(tuple(rules), ignore_sources=(r"\.attn\.(masked_)?bias$", r"^lm_head\.weight$"))


def gpt_neo_rules(cfg: DecoderConfig) -> RuleSet:
    h, b = "transformer.h.{i}", "blocks.{i}"
    rules = [
        rename("transformer.wpe.weight", "pos_embed.weight"),
        *[rename(f"{h}.{s}.{w}", f"{b}.{t}.{w}") for s, t in (("ln_1", "ln1"), ("ln_2", "ln2"))
          for w in ("weight", "bias")],
        *[rename(f"{h}.attn.attention.{p}_proj.weight", f"{b}.attn.{p}_proj.weight") for p in "qkv"],
        *[rename(f"{h}.attn.attention.out_proj.{w}", f"{b}.attn.o_proj.{w}") for w in ("weight", "bias")],
        *[rename(f"{h}.mlp.{s}.{w}", f"{b}.mlp.{t}.{w}") for s, t in (("c_fc", "up_proj"), ("c_proj", "down_proj"))
          for w in ("weight", "bias")],
        *_final(cfg, "transformer.wte.weight", "transformer.ln_f", "lm_head.weight", norm_bias=True),
    ]
    return RuleSet(tuple(rules), ignore_sources=(r"\.attn\.attention\.(masked_)?bias$", r"^lm_head\.weight$"))


def opt_rules(cfg: DecoderConfig) -> RuleSet:
    h, b = "model.decoder.layers.{i}", "blocks.{i}"
    weights = ("weight", "bias") if cfg.qkv_bias else ("weight",)
    norm_params = ("weight", "bias") if cfg.norm == "layernorm" else ()
    rules = [
        rename("model.decoder.embed_tokens.weight", "embed.weight"),
        rename("model.decoder.embed_positions.weight", "pos_embed.weight"),
        *[rename(f"{h}.self_attn.{p}_proj.{w}", f"{b}.attn.{p}_proj.{w}") for p in "qkv" for w in weights],
        *[rename(f"{h}.self_attn.out_proj.{w}", f"{b}.attn.o_proj.{w}") for w in weights],
        *[rename(f"{h}.{s}.{w}", f"{b}.mlp.{t}.{w}") for s, t in (("fc1", "up_proj"), ("fc2", "down_proj"))
          for w in weights],
        *[rename(f"{h}.{s}.{w}", f"{b}.{t}.{w}") for s, t in (("self_attn_layer_norm", "ln1"),
                                                               ("final_layer_norm", "ln2")) for w in norm_params],
    ]
    if cfg.final_norm == "layernorm":
        rules += [rename(f"model.decoder.final_layer_norm.{w}", f"ln_final.{w}") for w in norm_params]
    if not cfg.tie_embeddings:
        rules.append(rename("lm_head.weight", "unembed.weight"))
    # facebook/opt-* checkpoints were saved from OPTModel: their keys lack the "model." prefix
    return RuleSet(tuple(rules), ignore_sources=(r"^lm_head\.weight$",), aliases=((r"^decoder\.", "model.decoder."),))


def neox_rules(cfg: DecoderConfig) -> RuleSet:
    h, b = "gpt_neox.layers.{i}", "blocks.{i}"
    split = split_heads_interleaved(cfg.n_heads, cfg.d_head)
    merge = merge_heads_interleaved(cfg.n_heads, cfg.d_head)
    qkv = [f"{b}.attn.{p}_proj" for p in "qkv"]
    rules = [
        *[rename(f"{h}.{s}.{w}", f"{b}.{t}.{w}")
          for s, t in (("input_layernorm", "ln1"), ("post_attention_layernorm", "ln2")) for w in ("weight", "bias")],
        Rule((f"{h}.attention.query_key_value.weight",), tuple(f"{p}.weight" for p in qkv), split, merge),
        rename(f"{h}.attention.dense.weight", f"{b}.attn.o_proj.weight"),
        rename(f"{h}.mlp.dense_h_to_4h.weight", f"{b}.mlp.up_proj.weight"),
        rename(f"{h}.mlp.dense_h_to_4h.bias", f"{b}.mlp.up_proj.bias"),
        rename(f"{h}.mlp.dense_4h_to_h.weight", f"{b}.mlp.down_proj.weight"),
        rename(f"{h}.mlp.dense_4h_to_h.bias", f"{b}.mlp.down_proj.bias"),
        *_final(cfg, "gpt_neox.embed_in.weight", "gpt_neox.final_layer_norm", "lm_head.weight", norm_bias=True),
    ]
    if cfg.qkv_bias:
        rules.append(Rule((f"{h}.attention.query_key_value.bias",), tuple(f"{p}.bias" for p in qkv), split, merge))
    if cfg.attn_out_bias:
        rules.append(rename(f"{h}.attention.dense.bias", f"{b}.attn.o_proj.bias"))
    return RuleSet(
        tuple(rules), ignore_sources=(r"\.attention\.(masked_)?bias$", r"rotary_emb\.inv_freq$", r"^lm_head\.weight$"),
        aliases=((r"^embed_out\.weight$", "lm_head.weight"),),  # transformers < 5 checkpoints
    )


def llama_like_rules(cfg: DecoderConfig) -> RuleSet:
    """Llama, Mistral, Qwen2/3, Gemma 2: our parameter names follow theirs, so most rules are renames."""
    h, b = "model.layers.{i}", "blocks.{i}"
    norms = (("input_layernorm", "ln1"), ("post_attention_layernorm", "ln2"))
    if cfg.post_norms:  # Gemma 2 sandwich norms
        norms = (("input_layernorm", "ln1"), ("post_attention_layernorm", "ln1_post"),
                 ("pre_feedforward_layernorm", "ln2"), ("post_feedforward_layernorm", "ln2_post"))
    rules = [rename(f"{h}.{s}.weight", f"{b}.{t}.weight") for s, t in norms]
    rules += [rename(f"{h}.self_attn.{p}_proj.weight", f"{b}.attn.{p}_proj.weight") for p in "qkvo"]
    rules += [rename(f"{h}.mlp.{p}_proj.weight", f"{b}.mlp.{p}_proj.weight") for p in ("gate", "up", "down")]
    if cfg.qkv_bias:
        rules += [rename(f"{h}.self_attn.{p}_proj.bias", f"{b}.attn.{p}_proj.bias") for p in "qkv"]
    if cfg.attn_out_bias:
        rules.append(rename(f"{h}.self_attn.o_proj.bias", f"{b}.attn.o_proj.bias"))
    if cfg.mlp_bias:
        rules += [rename(f"{h}.mlp.{p}_proj.bias", f"{b}.mlp.{p}_proj.bias") for p in ("gate", "up", "down")]
    if cfg.qk_norm:
        rules += [rename(f"{h}.self_attn.{p}_norm.weight", f"{b}.attn.{p}_norm.weight") for p in "qk"]
    rules += _final(cfg, "model.embed_tokens.weight", "model.norm", "lm_head.weight", norm_bias=False)
    return RuleSet(tuple(rules), ignore_sources=(r"rotary_emb\.inv_freq$", r"^lm_head\.weight$"))


# Found in real checkpoints' config.json; HF's modelling code never reads them, so ignoring them is exact:
# which KV cache HF generate allocates (Gemma 2's "hybrid"), nanotron's export markers (SmolLM2), a training
# memory switch (GPT-Neo / TinyStories) and a dropout rate (OPT) of transformers 4.
_DECODER_IGNORED = frozenset({"cache_implementation", "is_llama_config", "rope_interleaved", "gradient_checkpointing",
                              "activation_dropout"})

_LLAMA_HANDLED = frozenset({
    "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "hidden_act", "max_position_embeddings", "rms_norm_eps", "tie_word_embeddings",
    "rope_parameters", "rope_scaling", "rope_theta", "attention_bias", "mlp_bias", "head_dim",
    "sliding_window", "use_sliding_window", "max_window_layers", "layer_types",
})

ARCHITECTURES: dict[str, DecoderArch] = {
    "gpt2": DecoderArch(
        "GPT2LMHeadModel",
        frozenset({"vocab_size", "n_positions", "n_embd", "n_layer", "n_head", "n_inner", "activation_function",
                   "layer_norm_epsilon", "scale_attn_weights", "scale_attn_by_inverse_layer_idx",
                   "reorder_and_upcast_attn", "tie_word_embeddings", "n_ctx"}),
        _DECODER_IGNORED, gpt2_config, gpt2_rules,
    ),
    "gpt_neox": DecoderArch(
        "GPTNeoXForCausalLM",
        frozenset({"vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                   "hidden_act", "max_position_embeddings", "layer_norm_eps", "use_parallel_residual",
                   "rope_parameters", "rope_scaling", "rotary_pct", "rotary_emb_base", "attention_bias",
                   "tie_word_embeddings", "partial_rotary_factor", "rope_theta"}),
        _DECODER_IGNORED, neox_config, neox_rules,
    ),
    "gpt_neo": DecoderArch(
        "GPTNeoForCausalLM",
        frozenset({"vocab_size", "max_position_embeddings", "hidden_size", "num_layers", "attention_types",
                   "attention_layers", "num_heads", "intermediate_size", "window_size", "activation_function",
                   "layer_norm_epsilon", "tie_word_embeddings"}),
        _DECODER_IGNORED | {"resid_dropout", "embed_dropout"}, gpt_neo_config, gpt_neo_rules,
    ),
    "opt": DecoderArch(
        "OPTForCausalLM",
        frozenset({"vocab_size", "hidden_size", "num_hidden_layers", "ffn_dim", "max_position_embeddings",
                   "do_layer_norm_before", "word_embed_proj_dim", "num_attention_heads", "activation_function",
                   "enable_bias", "layer_norm_elementwise_affine", "tie_word_embeddings"}),
        _DECODER_IGNORED | {"dropout", "layerdrop", "init_std"}, opt_config, opt_rules,
    ),
    "gptj": DecoderArch("GPTJForCausalLM", more.GPTJ_HANDLED, _DECODER_IGNORED | more.GPTJ_IGNORED, more.gptj_config,
                        more.gptj_rules),
    "phi": DecoderArch("PhiForCausalLM", more.PHI_HANDLED, _DECODER_IGNORED | more.PHI_IGNORED, more.phi_config,
                       more.phi_rules),
    "llama": DecoderArch("LlamaForCausalLM", _LLAMA_HANDLED, _DECODER_IGNORED, llama_like_config, llama_like_rules),
    "mistral": DecoderArch("MistralForCausalLM", _LLAMA_HANDLED, _DECODER_IGNORED, llama_like_config, llama_like_rules),
    "qwen2": DecoderArch("Qwen2ForCausalLM", _LLAMA_HANDLED, _DECODER_IGNORED, llama_like_config, llama_like_rules),
    "qwen3": DecoderArch("Qwen3ForCausalLM", _LLAMA_HANDLED, _DECODER_IGNORED, llama_like_config, llama_like_rules),
    "gemma": DecoderArch(
        "GemmaForCausalLM",
        _LLAMA_HANDLED - {"sliding_window", "use_sliding_window", "max_window_layers", "layer_types", "mlp_bias"}
        | {"hidden_activation", "use_bidirectional_attention"},
        _DECODER_IGNORED, gemma_config, llama_like_rules,
    ),
    "gemma2": DecoderArch(
        "Gemma2ForCausalLM",
        _LLAMA_HANDLED | {"hidden_activation", "query_pre_attn_scalar", "final_logit_softcapping",
                          "attn_logit_softcapping"},
        _DECODER_IGNORED | {"use_bidirectional_attention"}, gemma2_config, llama_like_rules,
    ),
}


def _check_lm_class(architectures: list[str] | None, lm_class: str) -> None:
    """Refuse a declared class without a language-model head (``LlamaModel``, ``...ForSequenceClassification``)
    by name, instead of failing later on tensors that do not match (old spellings of LM classes pass)."""
    declared = (architectures or [None])[0]
    if declared is None or declared == lm_class or declared.endswith(("ForCausalLM", "LMHeadModel")):
        return
    raise ConversionError(
        f"{declared} is not a causal language model; hookscope's decoders load {lm_class} (and the other "
        f"*ForCausalLM classes of the supported architectures). Use hookscope.wrap(hf_model) to hook any model."
    )


def decoder_config_from_hf(hf_config: Any) -> tuple[DecoderConfig, DecoderArch]:
    """Strictly convert a transformers config of a supported decoder into a :class:`DecoderConfig`."""
    model_type = getattr(hf_config, "model_type", None)
    arch = ARCHITECTURES.get(model_type or "")
    if arch is None:
        raise ConversionError(
            f"decoder architecture {model_type!r} is not supported natively; supported: "
            f"{', '.join(sorted(ARCHITECTURES))}. Use hookscope.wrap(hf_model) to hook any model."
        )
    _check_lm_class(getattr(hf_config, "architectures", None), arch.hf_class)
    values = check_attributes(hf_config, arch.handled, arch.ignored, family=arch.hf_class)
    if model_type == "gemma2" and values.get("use_bidirectional_attention"):
        raise ConversionError("Gemma 2 with use_bidirectional_attention is not supported")
    kwargs = arch.config(values)
    cfg = DecoderConfig(**kwargs, architecture=arch.hf_class, hf_config=values)
    return cfg, arch
