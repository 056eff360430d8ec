"""A compat HookedEncoderDecoder's T5 modules called on their own with TransformerLens's signatures, against HF."""

from __future__ import annotations

import copy

import pytest
import torch
import transformers

from hookscope.compat import HookedEncoderDecoder
from tests.equivalence.t5_cases import random_hf_t5

ENC_LEN, DEC_LEN = 9, 4


@pytest.fixture(scope="module")
def pair():
    torch.manual_seed(0)
    hf = random_hf_t5("v1.1").eval()
    model = HookedEncoderDecoder.from_pretrained("t5-small", hf_model=copy.deepcopy(hf))
    tokens = torch.randint(2, 101, (2, ENC_LEN))
    return hf, model, tokens


@torch.no_grad()
def test_first_layer_bias_table_and_bias_equal_hf(pair):
    hf, model, _ = pair
    hf_attn = hf.encoder.block[0].layer[0].SelfAttention
    ours = model.encoder[0].attn
    assert ours.has_relative_attention_bias and not model.encoder[1].attn.has_relative_attention_bias
    assert ours.relative_attention_num_buckets == hf_attn.relative_attention_num_buckets
    assert ours.relative_attention_max_distance == hf_attn.relative_attention_max_distance
    torch.testing.assert_close(ours.rel_pos_bias.weight, hf_attn.relative_attention_bias.weight)
    torch.testing.assert_close(ours.compute_relative_attention_bias(ENC_LEN, ENC_LEN),
                               hf_attn.compute_bias(ENC_LEN, ENC_LEN), rtol=0, atol=0)
    hf_dec = hf.decoder.block[0].layer[0].SelfAttention  # unidirectional buckets in the decoder
    torch.testing.assert_close(model.decoder[0].attn.compute_relative_attention_bias(DEC_LEN, DEC_LEN),
                               hf_dec.compute_bias(DEC_LEN, DEC_LEN), rtol=0, atol=0)


@torch.no_grad()
def test_standalone_attention_with_and_without_bias_equals_hf(pair):
    hf, model, tokens = pair
    x = hf.encoder.embed_tokens(tokens)
    positions = torch.arange(ENC_LEN)
    bias = model.encoder[0].attn.compute_relative_attention_bias(ENC_LEN, ENC_LEN)
    first = model.encoder[0].attn(x, x, x, position_bias=bias)
    later = model.encoder[1].attn(x, x, x)
    torch.testing.assert_close(first, hf.encoder.block[0].layer[0].SelfAttention(x, cache_position=positions)[0])
    torch.testing.assert_close(later, hf.encoder.block[1].layer[0].SelfAttention(x, cache_position=positions)[0])


@torch.no_grad()
def test_first_layer_attention_without_bias_is_refused(pair):
    _, model, tokens = pair
    x = model.embed(tokens)
    with pytest.raises(ValueError, match="position_bias"):
        model.encoder[0].attn(x, x, x)


@torch.no_grad()
def test_standalone_decoder_self_attention_is_causal(pair):
    _, model, tokens = pair
    x = model.embed(tokens)
    attn = model.decoder[1].attn
    full = attn(x, x, x)
    prefix = attn(x[:, :3], x[:, :3], x[:, :3])  # earlier positions cannot see later ones
    torch.testing.assert_close(full[:, :3], prefix)


@torch.no_grad()
def test_standalone_cross_attention_and_padding_mask_equal_hf(pair):
    hf, model, tokens = pair
    enc = hf.encoder(tokens).last_hidden_state
    dec = hf.decoder.embed_tokens(tokens[:, :DEC_LEN])
    hf_cross = hf.decoder.block[0].layer[1].EncDecAttention
    torch.testing.assert_close(model.decoder[0].cross_attn(dec, enc, enc), hf_cross(dec, key_value_states=enc)[0])
    keep = torch.ones(2, ENC_LEN)
    keep[1, -3:] = 0
    additive = ((1 - keep) * torch.finfo(torch.float32).min)[:, None, None, :]
    ours = model.decoder[0].cross_attn(dec, enc, enc, additive_attention_mask=additive)
    ref = hf_cross(dec, key_value_states=enc, mask=additive)[0]
    torch.testing.assert_close(ours, ref)


@torch.no_grad()
def test_blocks_chained_with_tl_calls_reproduce_hf_encoder_and_decoder(pair):
    hf, model, tokens = pair
    x = model.embed(tokens)
    bias = model.encoder[0].attn.compute_relative_attention_bias(ENC_LEN, ENC_LEN)
    for block in model.encoder:
        x = block(resid_pre=x, position_bias=bias)
    torch.testing.assert_close(model.encoder_final_ln(x), hf.encoder(tokens).last_hidden_state)
    enc = hf.encoder(tokens).last_hidden_state
    dec_ids = tokens[:, :DEC_LEN]
    y = model.embed(dec_ids)
    bias = model.decoder[0].attn.compute_relative_attention_bias(DEC_LEN, DEC_LEN)
    for block in model.decoder:
        y = block(y, encoder_hidden_states=enc, position_bias=bias)
    torch.testing.assert_close(model.decoder_final_ln(y), hf.decoder(dec_ids, encoder_hidden_states=enc)[0])


@torch.no_grad()
def test_model_forward_unchanged_and_norm_weight_named_w(pair):
    hf, model, tokens = pair
    dec_ids = tokens[:, :DEC_LEN]
    torch.testing.assert_close(model(tokens, decoder_input=dec_ids), hf(tokens, decoder_input_ids=dec_ids).logits)
    assert model.decoder[0].ln2.w is model.decoder[0].ln2.weight
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params == sum(p.numel() for p in hf.parameters())  # the tables are not registered twice


def test_decoder_block_without_encoder_states_is_refused(pair):
    _, model, tokens = pair
    with pytest.raises(ValueError, match="encoder_hidden_states"):
        model.decoder[1](model.embed(tokens))


@torch.no_grad()
def test_generate_greedy_equals_hf_and_decodes_string_input(pair):
    from tests.compat.helpers import word_tokenizer

    hf, model, tokens = pair
    ref = hf.generate(input_ids=tokens, do_sample=False, max_new_tokens=6, min_new_tokens=6)
    ours = model.generate(tokens, max_new_tokens=6, stop_at_eos=False, do_sample=False)
    assert torch.equal(ours, ref)
    model.tokenizer = word_tokenizer()
    try:
        text = model.generate("w5 w9 w30", max_new_tokens=5, do_sample=False)
        ids = model.tokenizer("w5 w9 w30", return_tensors="pt")["input_ids"]
        expected = model.generate(ids, max_new_tokens=5, do_sample=False)
        assert isinstance(text, str)
        assert text == model.tokenizer.decode(expected[0], skip_special_tokens=True)
    finally:
        model.tokenizer = None
    with pytest.raises(NotImplementedError, match="freq_penalty"):
        model.generate(tokens, freq_penalty=1.0)


@torch.no_grad()
def test_encoder_decoder_built_from_a_config_runs_as_its_hf_export():
    from hookscope.compat import HookedTransformerConfig

    cfg = HookedTransformerConfig(d_model=20, d_head=6, n_heads=3, n_layers=2, n_ctx=32, d_vocab=53, d_mlp=17,
                                  act_fn="gelu_new", gated_mlp=True, relative_attention_num_buckets=8,
                                  relative_attention_max_distance=12, eps=1e-6, seed=3,
                                  positional_embedding_type="relative_positional_bias")
    model = HookedEncoderDecoder(cfg, move_to_device=False)
    assert len(model.encoder) == len(model.decoder) == 2 and model.encoder[0].attn.has_relative_attention_bias
    again = HookedEncoderDecoder(cfg, move_to_device=False)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), again.parameters()))  # seeded init
    # the same structure as HF's T5 v1.1 (gated MLP, untied head, no rescale): HF's weights run identically
    from tests.equivalence.t5_cases import hf_config

    hf_cfg = hf_config("v1.1", vocab_size=53, d_model=20, d_kv=6, num_heads=3, d_ff=17, num_layers=2,
                       num_decoder_layers=2)
    hf = transformers.T5ForConditionalGeneration(hf_cfg).eval()
    loaded = HookedEncoderDecoder.from_pretrained("t5", hf_model=copy.deepcopy(hf))
    model.load_state_dict(loaded.state_dict())
    enc = torch.randint(2, 53, (2, 7))
    dec = torch.randint(2, 53, (2, 3))
    torch.testing.assert_close(model(enc, decoder_input=dec), hf(input_ids=enc, decoder_input_ids=dec).logits)
    with pytest.raises(ValueError, match="relative_attention_num_buckets"):
        HookedEncoderDecoder(HookedTransformerConfig(d_model=8, d_head=4, n_layers=1, n_ctx=8, d_vocab=11))


@torch.no_grad()
def test_to_tokens_returns_right_padded_tokens_and_mask_as_tl(pair):
    from tests.compat.helpers import PAD, word_tokenizer

    hf, model, _ = pair
    model.tokenizer = word_tokenizer()
    try:
        tokens, mask = model.to_tokens(["w5 w6 w7", "w8"])
        assert tokens.tolist() == [[9, 10, 11], [12, PAD, PAD]]  # "w{i}" is id i + 4 (4 special tokens first)
        assert mask.tolist() == [[1, 1, 1], [1, 0, 0]]
        # the model's own text path (native keywords) still works: text input equals its token ids with the mask
        dec = torch.zeros(2, 1, dtype=torch.long)
        torch.testing.assert_close(model(["w5 w6 w7", "w8"], decoder_input=dec),
                                   hf(input_ids=tokens, attention_mask=mask, decoder_input_ids=dec).logits)
    finally:
        model.tokenizer = None
