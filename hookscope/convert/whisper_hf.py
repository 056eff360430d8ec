"""Hugging Face ``WhisperForConditionalGeneration`` <-> :class:`WhisperConfig` and weight rules (data)."""

from __future__ import annotations

from typing import Any

from hookscope.convert.engine import Rule, RuleSet, rename
from hookscope.convert.hf_config import check_architecture, check_attributes, require
from hookscope.models.whisper_config import WhisperConfig

HANDLED = frozenset(
    {
        "vocab_size",
        "num_mel_bins",
        "encoder_layers",
        "encoder_attention_heads",
        "decoder_layers",
        "decoder_attention_heads",
        "decoder_ffn_dim",
        "encoder_ffn_dim",
        "activation_function",
        "d_model",
        "max_source_positions",
        "max_target_positions",
        "tie_word_embeddings",
        "suppress_tokens",
        "begin_suppress_tokens",
        "num_hidden_layers",
    }
)
# Training-only or classification-head settings: they do not change the forward of the generation model.
IGNORED = frozenset(
    {
        "dropout",
        "attention_dropout",
        "activation_dropout",
        "encoder_layerdrop",
        "decoder_layerdrop",
        "init_std",
        "use_weighted_layer_sum",
        "classifier_proj_size",
        "apply_spec_augment",
        "mask_time_prob",
        "mask_time_length",
        "mask_time_min_masks",
        "mask_feature_prob",
        "mask_feature_length",
        "mask_feature_min_masks",
        "median_filter_width",
        "forced_decoder_ids",
        "alignment_heads",
        "lang_ids",
        # HF computes embed_scale from it but never applies it (transformers 5.23): no effect on the numbers.
        "scale_embedding",
    }
)


def whisper_config_from_hf(hf_config: Any) -> WhisperConfig:
    """Strictly convert a transformers ``WhisperConfig`` (any unmodelled non-default attribute raises)."""
    v = check_attributes(hf_config, HANDLED, IGNORED, family="WhisperForConditionalGeneration")
    check_architecture(v, {"WhisperForConditionalGeneration"}, "Whisper")
    require(v.get("tie_word_embeddings", True), "Whisper with an untied output projection is not supported")
    eos = v.get("eos_token_id", 50256)
    eos = eos[0] if isinstance(eos, list) else eos
    start, pad = v.get("decoder_start_token_id"), v.get("pad_token_id")
    return WhisperConfig(
        n_mels=v["num_mel_bins"],
        d_model=v["d_model"],
        n_audio_ctx=v["max_source_positions"],
        n_text_ctx=v["max_target_positions"],
        d_vocab=v["vocab_size"],
        n_encoder_layers=v["encoder_layers"],
        n_decoder_layers=v["decoder_layers"],
        n_encoder_heads=v["encoder_attention_heads"],
        n_decoder_heads=v["decoder_attention_heads"],
        d_encoder_mlp=v["encoder_ffn_dim"],
        d_decoder_mlp=v["decoder_ffn_dim"],
        act_fn=v["activation_function"],
        # `is None`, not `or`: 0 is a valid id (small random configs use it)
        decoder_start_token_id=50257 if start is None else start,
        eos_token_id=eos,
        pad_token_id=eos if pad is None else pad,  # HF generate pads finished rows with EOS then
        suppress_tokens=tuple(v.get("suppress_tokens") or ()),
        begin_suppress_tokens=tuple(v.get("begin_suppress_tokens") or ()),
        hf_config=v,
    )


def hf_config_values(cfg: WhisperConfig) -> dict[str, Any]:
    """The transformers ``WhisperConfig`` keyword arguments that describe ``cfg`` (for ``to_hf``)."""
    return dict(
        vocab_size=cfg.d_vocab,
        num_mel_bins=cfg.n_mels,
        d_model=cfg.d_model,
        encoder_layers=cfg.n_encoder_layers,
        decoder_layers=cfg.n_decoder_layers,
        encoder_attention_heads=cfg.n_encoder_heads,
        decoder_attention_heads=cfg.n_decoder_heads,
        encoder_ffn_dim=cfg.d_encoder_mlp,
        decoder_ffn_dim=cfg.d_decoder_mlp,
        activation_function=cfg.act_fn,
        max_source_positions=cfg.n_audio_ctx,
        max_target_positions=cfg.n_text_ctx,
        decoder_start_token_id=cfg.decoder_start_token_id,
        eos_token_id=cfg.eos_token_id,
        pad_token_id=cfg.pad_token_id,
        bos_token_id=cfg.eos_token_id,
        suppress_tokens=list(cfg.suppress_tokens) or None,
        begin_suppress_tokens=list(cfg.begin_suppress_tokens),
    )


def _norm(src: str, dst: str) -> list[Rule]:
    return [rename(f"{src}.{w}", f"{dst}.{w}") for w in ("weight", "bias")]


def _attention(src: str, dst: str) -> list[Rule]:
    rules = [rename(f"{src}.k_proj.weight", f"{dst}.k_proj.weight")]
    for s, t in (("q_proj", "q_proj"), ("v_proj", "v_proj"), ("out_proj", "o_proj")):
        rules += [rename(f"{src}.{s}.{w}", f"{dst}.{t}.{w}") for w in ("weight", "bias")]
    return rules


def _mlp(src: str, dst: str) -> list[Rule]:
    return [
        rename(f"{src}.{s}.{w}", f"{dst}.mlp.{t}.{w}")
        for s, t in (("fc1", "up_proj"), ("fc2", "down_proj"))
        for w in ("weight", "bias")
    ]


def whisper_rules(cfg: WhisperConfig) -> RuleSet:
    """HF names -> ours. Layers are spelt out (encoder and decoder depths differ, so no ``{i}`` template)."""
    enc, dec = "model.encoder", "model.decoder"
    rules: list[Rule] = [
        *[
            rename(f"{enc}.{c}.{w}", f"encoder_embed.{c}.{w}")
            for c in ("conv1", "conv2")
            for w in ("weight", "bias")
        ],
        rename(f"{enc}.embed_positions.weight", "encoder_embed.pos_embed.weight"),
        *_norm(f"{enc}.layer_norm", "encoder_final_ln"),
        rename(f"{dec}.embed_tokens.weight", "embed.weight"),
        rename(f"{dec}.embed_positions.weight", "pos_embed.weight"),
        *_norm(f"{dec}.layer_norm", "decoder_final_ln"),
    ]
    for i in range(cfg.n_encoder_layers):
        h, b = f"{enc}.layers.{i}", f"encoder.{i}"
        rules += [
            *_norm(f"{h}.self_attn_layer_norm", f"{b}.ln1"),
            *_attention(f"{h}.self_attn", f"{b}.attn"),
            *_norm(f"{h}.final_layer_norm", f"{b}.ln2"),
            *_mlp(h, b),
        ]
    for i in range(cfg.n_decoder_layers):
        h, b = f"{dec}.layers.{i}", f"decoder.{i}"
        rules += [
            *_norm(f"{h}.self_attn_layer_norm", f"{b}.ln1"),
            *_attention(f"{h}.self_attn", f"{b}.attn"),
            *_norm(f"{h}.encoder_attn_layer_norm", f"{b}.ln2"),
            *_attention(f"{h}.encoder_attn", f"{b}.cross_attn"),
            *_norm(f"{h}.final_layer_norm", f"{b}.ln3"),
            *_mlp(h, b),
        ]
    return RuleSet(tuple(rules), ignore_sources=(r"^proj_out\.weight$",))
