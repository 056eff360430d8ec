"""T5 v1.0 / v1.1 and the T5 encoder equal their Hugging Face source: logits, every encoder and decoder
layer, self- and cross-attention patterns, the relative position bias, and gradients.

Both attention paths are checked: the explicit one (a cache asks for the patterns) and the fused SDPA
one (no hooks). The first divergent hook is named on failure.
"""

from __future__ import annotations

import pytest
import torch

import hookscope
from hookscope.components.relative_bias import relative_position_bucket
from tests.equivalence.t5_cases import VARIANTS, inputs, random_hf_encoder, random_hf_t5
from tests.helpers import TOLERANCES, encoder_decoder_pairs, first_divergence


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_every_layer_and_pattern_matches_hf(variant: str, dtype: torch.dtype) -> None:
    hf = random_hf_t5(variant, dtype)
    model = hookscope.load(hf, dtype=dtype)
    assert model.cfg.tie_embeddings == (variant == "v1.0")
    assert model.cfg.scale_decoder_outputs == (variant == "v1.0")
    assert model.cfg.mlp == ("plain" if variant == "v1.0" else "gated")
    ids, mask, dec, dec_mask = inputs()
    with torch.no_grad():
        out = hf(
            input_ids=ids,
            attention_mask=mask,
            decoder_input_ids=dec,
            decoder_attention_mask=dec_mask,
            output_hidden_states=True,
            output_attentions=True,
        )
        logits, cache = model.run_with_cache(ids, dec, mask, dec_mask)
        fused = model(ids, dec, mask, dec_mask)  # no hooks: SDPA path
        encoded = model.encode(ids, mask)
    pairs = encoder_decoder_pairs(cache, out, model.cfg.n_encoder_layers, model.cfg.n_decoder_layers)
    pairs += [
        ("logits", logits, out.logits),
        ("logits (fused path)", fused, out.logits),
        ("encode()", encoded, out.encoder_last_hidden_state),
    ]
    atol, rtol = TOLERANCES[dtype]
    problem = first_divergence(pairs, atol, rtol)
    assert problem is None, f"T5 {variant} {dtype}: first divergence at {problem}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
def test_encoder_model_matches_hf(dtype: torch.dtype) -> None:
    hf = random_hf_encoder(dtype)
    model = hookscope.load(hf, dtype=dtype)
    assert type(model).__name__ == "T5Encoder" and not hasattr(model, "decoder")
    ids, mask, _, _ = inputs(seed=1)
    with torch.no_grad():
        out = hf(input_ids=ids, attention_mask=mask, output_hidden_states=True, output_attentions=True)
        _, cache = model.run_with_cache(ids, mask)
        fused = model(ids, mask)
    pairs = [
        (f"encoder.{i}.attn.hook_pattern", cache[f"encoder.{i}.attn.hook_pattern"], out.attentions[i])
        for i in range(model.cfg.n_encoder_layers)
    ]
    pairs += [
        (f"encoder.{i}.hook_resid_pre", cache[f"encoder.{i}.hook_resid_pre"], out.hidden_states[i])
        for i in range(model.cfg.n_encoder_layers)
    ]
    pairs.append(("output (fused path)", fused, out.last_hidden_state))
    atol, rtol = TOLERANCES[dtype]
    problem = first_divergence(pairs, atol, rtol)
    assert problem is None, f"T5EncoderModel {dtype}: first divergence at {problem}"


def test_position_bias_matches_hf_compute_bias() -> None:
    hf = random_hf_t5("v1.0", torch.float64)
    model = hookscope.load(hf, dtype=torch.float64)
    enc_attn = hf.encoder.block[0].layer[0].SelfAttention
    dec_attn = hf.decoder.block[0].layer[0].SelfAttention
    with torch.no_grad():
        for q, k, past in ((9, 9, 0), (1, 30, 29), (4, 40, 36)):
            ref_dec = dec_attn.compute_bias(q, k, past_seen_tokens=past)
            assert torch.equal(model.decoder_rel_pos(q, k, offset=past), ref_dec), (q, k, past)
        assert torch.equal(model.encoder_rel_pos(40, 40), enc_attn.compute_bias(40, 40))


def test_bucket_function_matches_hf_static_method() -> None:
    from transformers.models.t5.modeling_t5 import T5Attention

    rel = torch.arange(-300, 300)[None, :]
    for bidirectional in (True, False):
        for buckets, dist in ((32, 128), (8, 12), (6, 20)):
            ours = relative_position_bucket(rel, bidirectional, buckets, dist)
            ref = T5Attention._relative_position_bucket(rel, bidirectional, buckets, dist)
            assert torch.equal(ours, ref), (bidirectional, buckets, dist)


@pytest.mark.parametrize("variant", VARIANTS)
def test_gradients_match_hf(variant: str) -> None:
    hf = random_hf_t5(variant, torch.float64)
    model = hookscope.load(hf, dtype=torch.float64)
    ids, mask, dec, dec_mask = inputs()
    target = torch.randint(0, 101, dec.shape, generator=torch.Generator().manual_seed(3))

    def loss(logits: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(logits.flatten(0, 1), target.flatten())

    loss(
        hf(input_ids=ids, attention_mask=mask, decoder_input_ids=dec, decoder_attention_mask=dec_mask).logits
    ).backward()
    loss(model(ids, dec, mask, dec_mask)).backward()
    hf_grads = {n: p.grad for n, p in hf.named_parameters()}
    pairs = [
        ("embed", model.embed.weight.grad, hf_grads["shared.weight"]),
        (
            "encoder_rel_pos",
            model.encoder_rel_pos.weight.grad,
            hf_grads["encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"],
        ),
        (
            "decoder_rel_pos",
            model.decoder_rel_pos.weight.grad,
            hf_grads["decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"],
        ),
        (
            "encoder.2.attn.q_proj",
            model.encoder[2].attn.q_proj.weight.grad,
            hf_grads["encoder.block.2.layer.0.SelfAttention.q.weight"],
        ),
        (
            "decoder.1.cross_attn.k_proj",
            model.decoder[1].cross_attn.k_proj.weight.grad,
            hf_grads["decoder.block.1.layer.1.EncDecAttention.k.weight"],
        ),
        (
            "decoder.1.ln3",
            model.decoder[1].ln3.weight.grad,
            hf_grads["decoder.block.1.layer.2.layer_norm.weight"],
        ),
        (
            "decoder.0.mlp.down_proj",
            model.decoder[0].mlp.down_proj.weight.grad,
            hf_grads["decoder.block.0.layer.2.DenseReluDense.wo.weight"],
        ),
    ]
    if variant == "v1.1":
        pairs.append(("unembed", model.unembed.weight.grad, hf_grads["lm_head.weight"]))
    problem = first_divergence(pairs, 1e-10, 1e-10)
    assert problem is None, f"T5 {variant} gradients: first divergence at {problem}"


def test_config_errors_are_clear() -> None:
    from hookscope.convert.engine import ConversionError
    from tests.equivalence.t5_cases import hf_config

    cfg = hf_config("v1.0", feed_forward_proj="gated-silu_x")
    with pytest.raises((ConversionError, ValueError)):
        from hookscope.convert.t5_hf import t5_config_from_hf

        t5_config_from_hf(cfg, ["decoder.x"], True)
    from hookscope.models.t5_config import T5Config

    with pytest.raises(ValueError, match="n_decoder_layers must be positive"):
        T5Config(d_model=8, n_heads=2, d_head=4, d_mlp=8, d_vocab=10, n_encoder_layers=1)
