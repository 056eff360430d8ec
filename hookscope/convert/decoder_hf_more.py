"""GPT-J and Phi (phi-1, phi-1.5, phi-2) <-> :class:`DecoderConfig` and weight rules.

Both run attention and MLP in parallel off ONE LayerNorm. hookscope's parallel block has ``ln1`` and ``ln2``
(as TransformerLens does for these models): conversion gives both that norm's weights, and exporting back
refuses when they have come apart (trained separately), since the HF model has room for one.
"""

from __future__ import annotations

from typing import Any

import torch

from hookscope.convert.engine import ConversionError, Rule, RuleSet, Tensors, rename
from hookscope.convert.hf_config import embedding_padding_idx, require, rope_parameters
from hookscope.models.decoder_config import DecoderConfig


def _one_norm_to_two(ts: Tensors) -> Tensors:
    return [ts[0], ts[0].clone()]  # ln1 and ln2 own their parameters (a copy each)


def _two_norms_to_one(ts: Tensors) -> Tensors:
    if not torch.equal(ts[0], ts[1]):
        raise ConversionError(
            "ln1 and ln2 of a block differ (trained apart?), but the Hugging Face architecture has one norm "
            "feeding both attention and MLP; this model cannot be exported to it exactly"
        )
    return [ts[0]]


def _shared_norm(src: str, block: str, weights: tuple[str, ...] = ("weight", "bias")) -> list[Rule]:
    """The HF block's one norm -> ``ln1`` and ``ln2`` (and back, refusing norms that differ)."""
    return [Rule((f"{src}.{w}",), (f"{block}.ln1.{w}", f"{block}.ln2.{w}"), _one_norm_to_two, _two_norms_to_one)
            for w in weights]


def _head(cfg: DecoderConfig, embed: str) -> list[Rule]:
    """Embedding and the biased ``lm_head`` (GPT-J and Phi both have the bias)."""
    rules = [rename(embed, "embed.weight"), rename("lm_head.bias", "unembed.bias")]
    if not cfg.tie_embeddings:
        rules.append(rename("lm_head.weight", "unembed.weight"))
    return rules


# ---------------------------------------------------------------------- GPT-J
def gptj_config(v: dict[str, Any]) -> dict[str, Any]:
    """GPT-J: interleaved rotary on the first ``rotary_dim`` features, q.k and its scale in float32."""
    d, h = v["n_embd"], v["n_head"]
    require(d % h == 0, f"GPT-J n_embd={d} is not a multiple of n_head={h}")
    d_head = d // h
    rotary_dim = v["rotary_dim"]  # an int in transformers 5 (HF sizes its sin/cos table by it)
    require(0 < rotary_dim <= d_head and rotary_dim % 2 == 0,
            f"GPT-J rotary_dim={rotary_dim} must be even and in 1..d_head={d_head}")
    return dict(
        d_model=d, n_layers=v["n_layer"], n_heads=h, d_head=d_head, d_mlp=v.get("n_inner") or 4 * d,
        d_vocab=v["vocab_size"], n_ctx=v["n_positions"], act_fn=v["activation_function"], norm="layernorm",
        norm_eps=v["layer_norm_epsilon"], positional="rotary", rotary_dim=rotary_dim, rotary_base=10000.0,
        rotary_interleaved=True, parallel_attn_mlp=True, qkv_bias=False, attn_out_bias=False, mlp_bias=True,
        unembed_bias=True, qk_in_float32=True,
        softmax_in_float32=False,  # the softmax runs in the scores' dtype: float32, or float64 in a float64 model
        tie_embeddings=v.get("tie_word_embeddings", False),
    )


def gptj_rules(cfg: DecoderConfig) -> RuleSet:
    h, b = "transformer.h.{i}", "blocks.{i}"
    rules = [
        *_shared_norm(f"{h}.ln_1", b),
        *[rename(f"{h}.attn.{p}_proj.weight", f"{b}.attn.{p}_proj.weight") for p in "qkv"],
        rename(f"{h}.attn.out_proj.weight", f"{b}.attn.o_proj.weight"),
        *[rename(f"{h}.mlp.{s}.{w}", f"{b}.mlp.{t}.{w}") for s, t in (("fc_in", "up_proj"), ("fc_out", "down_proj"))
          for w in ("weight", "bias")],
        *[rename(f"transformer.ln_f.{w}", f"ln_final.{w}") for w in ("weight", "bias")],
        *_head(cfg, "transformer.wte.weight"),
    ]
    return RuleSet(tuple(rules), ignore_sources=(r"\.attn\.(masked_)?bias$", r"embed_positions$", r"^lm_head\.weight$"))


GPTJ_HANDLED = frozenset({"vocab_size", "n_positions", "n_embd", "n_layer", "n_head", "rotary_dim", "n_inner",
                          "activation_function", "layer_norm_epsilon", "tie_word_embeddings"})
# in EleutherAI/gpt-j-6B's config.json, never read by HF's GPT-J code (it always rotates and scales)
GPTJ_IGNORED = frozenset({"rotary", "scale_attn_weights"})


# ---------------------------------------------------------------------- Phi
def phi_config(v: dict[str, Any]) -> dict[str, Any]:
    """Phi: partial rotary (rotate half), biased q/k/v/dense, optional per-head q/k LayerNorms."""
    d, h = v["hidden_size"], v["num_attention_heads"]
    require(d % h == 0, f"Phi hidden_size={d} is not a multiple of num_attention_heads={h}")
    d_head = d // h
    params = rope_parameters(v)
    kind = params.get("rope_type", "default")
    require(kind == "default", f"Phi rope_type {kind!r} (rope_scaling) is not supported natively; use "
            "hookscope.wrap(hf_model) for this model")
    factor = float(params.get("partial_rotary_factor", 1.0))
    rotary_dim = int(d_head * factor)
    require(0 < rotary_dim and rotary_dim % 2 == 0, f"Phi partial_rotary_factor={factor} gives {rotary_dim} "
            f"rotary features of d_head={d_head}; only an even number above 0 is supported")
    return dict(
        d_model=d, n_layers=v["num_hidden_layers"], n_heads=h, n_kv_heads=v.get("num_key_value_heads") or h,
        d_head=d_head, d_mlp=v["intermediate_size"], d_vocab=v["vocab_size"], n_ctx=v["max_position_embeddings"],
        act_fn=v["hidden_act"], norm="layernorm", norm_eps=v["layer_norm_eps"], positional="rotary",
        rotary_dim=rotary_dim, rotary_base=float(params["rope_theta"]), parallel_attn_mlp=True, qkv_bias=True,
        attn_out_bias=True, mlp_bias=True, unembed_bias=True, qk_norm=bool(v.get("qk_layernorm")),
        qk_norm_type="layernorm", tie_embeddings=v.get("tie_word_embeddings", False),
        padding_idx=embedding_padding_idx(v),
    )


def phi_rules(cfg: DecoderConfig) -> RuleSet:
    h, b = "model.layers.{i}", "blocks.{i}"
    wb = ("weight", "bias")
    rules = [
        *_shared_norm(f"{h}.input_layernorm", b),
        *[rename(f"{h}.self_attn.{p}_proj.{w}", f"{b}.attn.{p}_proj.{w}") for p in "qkv" for w in wb],
        *[rename(f"{h}.self_attn.dense.{w}", f"{b}.attn.o_proj.{w}") for w in wb],
        *[rename(f"{h}.mlp.{s}.{w}", f"{b}.mlp.{t}.{w}") for s, t in (("fc1", "up_proj"), ("fc2", "down_proj"))
          for w in wb],
        *[rename(f"model.final_layernorm.{w}", f"ln_final.{w}") for w in wb],
        *_head(cfg, "model.embed_tokens.weight"),
    ]
    if cfg.qk_norm:
        rules += [rename(f"{h}.self_attn.{p}_layernorm.{w}", f"{b}.attn.{p}_norm.{w}") for p in "qk" for w in wb]
    return RuleSet(tuple(rules), ignore_sources=(r"rotary_emb\.(original_)?inv_freq$", r"^lm_head\.weight$"))


PHI_HANDLED = frozenset({"vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                         "num_key_value_heads", "hidden_act", "max_position_embeddings", "layer_norm_eps",
                         "tie_word_embeddings", "rope_parameters", "rope_scaling", "rope_theta",
                         "partial_rotary_factor", "qk_layernorm"})
PHI_IGNORED: frozenset[str] = frozenset()  # dropout rates are ignored for every family
