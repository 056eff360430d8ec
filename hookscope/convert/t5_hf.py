"""HF T5 (``T5ForConditionalGeneration``, ``T5Model``, ``T5EncoderModel``) -> :class:`T5Config`, rules.

Encoder and decoder have their own layer counts, so the rules are written out per layer here (no
``{i}`` templates, which the engine would expand to a single count).
"""

from __future__ import annotations

from typing import Any

from hookscope.components.activations import ACTIVATIONS
from hookscope.convert.engine import ConversionError, Rule, RuleSet, rename
from hookscope.convert.hf_config import check_architecture, check_attributes, require
from hookscope.models.t5_config import T5Config

HANDLED = frozenset(
    {
        "vocab_size",
        "d_model",
        "d_kv",
        "d_ff",
        "num_layers",
        "num_decoder_layers",
        "num_heads",
        "relative_attention_num_buckets",
        "relative_attention_max_distance",
        "layer_norm_epsilon",
        "feed_forward_proj",
        "dense_act_fn",
        "is_gated_act",
        "scale_decoder_outputs",
        "tie_word_embeddings",
    }
)
# HF classes whose weights map onto ours ("T5WithLMHeadModel": the pre-2020 name in old config.json files).
SUPPORTED_CLASSES = frozenset(
    {"T5ForConditionalGeneration", "T5WithLMHeadModel", "T5Model", "T5EncoderModel"}
)
# Training-only settings, and fields of older config.json files that no longer change the forward.
IGNORED = frozenset(
    {
        "dropout_rate",
        "initializer_factor",
        "classifier_dropout",
        "n_positions",
        "output_past",
        "gradient_checkpointing",
    }
)


def t5_config_from_hf(hf_config: Any, keys: list[str], lm_head_tied: bool) -> T5Config:
    """Strictly convert a transformers ``T5Config``.

    Which parts exist is read from the weights: no ``decoder.*`` tensors means the encoder alone
    (``T5EncoderModel``). Whether the LM head is tied is also decided by the weights
    (``lm_head_tied``): transformers 5 reports ``tie_word_embeddings=True`` for every T5 config and
    unties on load when the checkpoint's ``lm_head.weight`` differs (v1.1 / Flan-T5).
    """
    values = check_attributes(hf_config, HANDLED, IGNORED, family="T5")
    require(values.get("model_type") == "t5", f"not a T5 config: model_type {values.get('model_type')!r}")
    check_architecture(values, SUPPORTED_CLASSES, "T5")
    act = values.get("dense_act_fn") or values["feed_forward_proj"].split("-")[-1]
    if values.get("feed_forward_proj") == "gated-gelu":
        act = "gelu_new"  # transformers' backwards-compatible meaning of "gated-gelu"
    require(act in ACTIVATIONS, f"T5 activation {act!r} is not supported (supported: {sorted(ACTIVATIONS)})")
    gated = bool(values.get("is_gated_act", values["feed_forward_proj"].startswith("gated-")))
    encoder_only = not any(k.startswith("decoder.") for k in keys)
    eos = values.get("eos_token_id", 1)
    eos_ids = tuple(eos) if isinstance(eos, (list, tuple)) else ((eos,) if eos is not None else ())
    pad = values.get("pad_token_id")
    start = values.get("decoder_start_token_id")
    return T5Config(
        d_model=values["d_model"],
        n_heads=values["num_heads"],
        d_head=values["d_kv"],
        d_mlp=values["d_ff"],
        d_vocab=values["vocab_size"],
        n_encoder_layers=values["num_layers"],
        n_decoder_layers=0 if encoder_only else (values.get("num_decoder_layers") or values["num_layers"]),
        encoder_only=encoder_only,
        act_fn=act,
        mlp="gated" if gated else "plain",
        norm_eps=values["layer_norm_epsilon"],
        relative_buckets=values["relative_attention_num_buckets"],
        relative_max_distance=values["relative_attention_max_distance"],
        tie_embeddings=lm_head_tied,
        scale_decoder_outputs=bool(values.get("scale_decoder_outputs", lm_head_tied)),
        pad_token_id=0 if pad is None else int(pad),
        decoder_start_token_id=int(start if start is not None else (0 if pad is None else pad)),
        eos_token_ids=eos_ids,
        architecture="T5EncoderModel" if encoder_only else "T5ForConditionalGeneration",
        hf_config=values,
    )


def _mlp_rules(cfg: T5Config, src: str, dst: str) -> list[Rule]:
    if cfg.mlp == "gated":
        pairs = (("wi_0", "gate_proj"), ("wi_1", "up_proj"), ("wo", "down_proj"))
    else:
        pairs = (("wi", "up_proj"), ("wo", "down_proj"))
    return [rename(f"{src}.DenseReluDense.{s}.weight", f"{dst}.mlp.{t}.weight") for s, t in pairs]


def _attn_rules(src: str, dst: str) -> list[Rule]:
    return [rename(f"{src}.{p}.weight", f"{dst}.{p}_proj.weight") for p in "qkvo"]


def t5_rules(cfg: T5Config) -> RuleSet:
    """Every HF tensor name -> hookscope parameter name (all renames: T5 stores PyTorch Linear layouts)."""
    rules = [
        rename("shared.weight", "embed.weight"),
        rename(
            "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight", "encoder_rel_pos.weight"
        ),
        rename("encoder.final_layer_norm.weight", "encoder_final_ln.weight"),
    ]
    for i in range(cfg.n_encoder_layers):
        h, b = f"encoder.block.{i}.layer", f"encoder.{i}"
        rules += _attn_rules(f"{h}.0.SelfAttention", f"{b}.attn")
        rules += [
            rename(f"{h}.0.layer_norm.weight", f"{b}.ln1.weight"),
            rename(f"{h}.1.layer_norm.weight", f"{b}.ln2.weight"),
        ]
        rules += _mlp_rules(cfg, f"{h}.1", b)
    ignore = [r"^(encoder|decoder)\.embed_tokens\.weight$"]  # tied copies of shared.weight
    if cfg.encoder_only:
        return RuleSet(tuple(rules), ignore_sources=tuple(ignore))
    rules += [
        rename(
            "decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight", "decoder_rel_pos.weight"
        ),
        rename("decoder.final_layer_norm.weight", "decoder_final_ln.weight"),
    ]
    for i in range(cfg.n_decoder_layers):
        h, b = f"decoder.block.{i}.layer", f"decoder.{i}"
        rules += _attn_rules(f"{h}.0.SelfAttention", f"{b}.attn")
        rules += _attn_rules(f"{h}.1.EncDecAttention", f"{b}.cross_attn")
        rules += [rename(f"{h}.{j}.layer_norm.weight", f"{b}.ln{j + 1}.weight") for j in range(3)]
        rules += _mlp_rules(cfg, f"{h}.2", b)
    if cfg.tie_embeddings:
        ignore.append(r"^lm_head\.weight$")  # equal to shared.weight (checked by the builder)
    else:
        rules.append(rename("lm_head.weight", "unembed.weight"))
    # Old checkpoints carry an unused cross-attention bias table (HF ignores it on load too).
    ignore.append(r"^decoder\.block\.0\.layer\.1\.EncDecAttention\.relative_attention_bias\.weight$")
    return RuleSet(tuple(rules), ignore_sources=tuple(ignore))


def lm_head_is_tied(keys: list[str], get: Any) -> bool:
    """True when there is no separate LM head or it equals the token embedding (v1.0); False for v1.1."""
    if "lm_head.weight" not in keys:
        return True
    if "shared.weight" not in keys:
        raise ConversionError("T5 weights without shared.weight (the token embedding)")
    head, shared = get("lm_head.weight"), get("shared.weight")
    return head.shape == shared.shape and bool((head == shared).all())
