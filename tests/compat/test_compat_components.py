"""A compat model's submodules called with TransformerLens's signatures, checked against positions written by hand."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from hookscope.compat import HookedTransformer, HookedTransformerConfig, components
from hookscope.components.norm import LayerNormPre
from tests.compat.helpers import hf_and_compat


def _small_model() -> HookedTransformer:
    cfg = HookedTransformerConfig(d_model=12, d_head=3, n_layers=1, n_ctx=10, d_vocab=20, act_fn="gelu", seed=1)
    return HookedTransformer(cfg)


def test_pos_embed_without_mask_counts_from_the_offset() -> None:
    model = _small_model()
    tokens = torch.randint(0, 20, (2, 4))
    W_pos = model.pos_embed.W_pos
    assert torch.equal(model.pos_embed(tokens), W_pos[:4].expand(2, -1, -1))
    assert torch.equal(model.pos_embed(tokens, 3), W_pos[3:7].expand(2, -1, -1))
    positions = torch.tensor([[4, 2]])  # hookscope's call, positional or by keyword: a look-up of these rows
    assert torch.equal(model.pos_embed(positions, False), W_pos[[4, 2]][None])
    assert torch.equal(model.pos_embed(positions, validate=True), W_pos[[4, 2]][None])


def test_pos_embed_with_left_padding_counts_from_each_rows_first_token_and_zeroes_padding() -> None:
    model = _small_model()
    W_pos = model.pos_embed.W_pos
    tokens = torch.randint(0, 20, (2, 5))
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    out = model.pos_embed(tokens, 0, attention_mask=mask)
    expected = torch.stack([
        torch.cat([torch.zeros(2, 12), W_pos[[0, 1, 2]]]), W_pos[[0, 1, 2, 3, 4]],
    ])
    assert torch.equal(out, expected)
    # a KV cache's mask covers the 3 cached positions too: the new 2 tokens continue each row's count
    cached = torch.tensor([[0, 1, 1, 1, 1], [0, 0, 1, 0, 1]])
    out = model.pos_embed(tokens[:, :2], 3, attention_mask=cached)
    expected = torch.stack([W_pos[[2, 3]], torch.cat([torch.zeros(1, 12), W_pos[[1]]])])
    assert torch.equal(out, expected)


def test_pos_embed_refuses_a_mask_of_the_wrong_length() -> None:
    model = _small_model()
    with pytest.raises(ValueError, match="past_kv_pos_offset"):
        model.pos_embed(torch.zeros(1, 3, dtype=torch.long), 1, attention_mask=torch.ones(1, 3))


def test_forward_is_unchanged_by_the_tl_position_signature() -> None:
    hf, model = hf_and_compat("gpt2")
    assert isinstance(model.pos_embed, components.PosEmbed)
    tokens = torch.randint(4, 60, (2, 7))
    with torch.no_grad():
        assert torch.allclose(model(tokens), hf(tokens).logits, atol=1e-5)


def test_components_names_are_the_model_classes() -> None:
    cfg = HookedTransformerConfig(d_model=12, d_head=3, n_layers=1, n_ctx=10, d_vocab=20, normalization_type="LNPre")
    model = HookedTransformer(cfg)
    assert isinstance(model.ln_final, components.LayerNormPre) and components.LayerNormPre is LayerNormPre
    assert isinstance(model.blocks[0].attn, components.Attention)


def test_hooked_encoder_from_a_config_computes_bert() -> None:
    """A BERT built from a TL config has the modules a converted HF BERT has, and with its weights, HF's logits."""
    import transformers as T

    from hookscope.compat import HookedEncoder

    cfg = HookedTransformerConfig(d_model=12, d_head=4, n_layers=2, n_ctx=9, d_vocab=30, act_fn="gelu", seed=3)
    built = HookedEncoder(cfg)
    assert built.tokenizer is None and built.cfg.d_vocab == 30
    hf = T.BertForPreTraining(T.BertConfig(vocab_size=30, hidden_size=12, num_hidden_layers=2, num_attention_heads=3,
                                           intermediate_size=48, max_position_embeddings=9, layer_norm_eps=1e-5))
    converted = HookedEncoder.from_pretrained("bert-base-cased", hf_model=hf.eval())
    shapes = {k: v.shape for k, v in converted.state_dict().items()}
    assert {k: v.shape for k, v in built.state_dict().items()} == shapes
    built.load_state_dict(converted.state_dict())
    tokens = torch.randint(0, 30, (2, 9))
    with torch.no_grad():
        assert torch.allclose(built(tokens), hf(tokens).prediction_logits, atol=1e-5)


def test_hooked_encoder_vocabulary_comes_from_the_tokenizer_or_is_required() -> None:
    from hookscope.compat import HookedEncoder
    from tests.compat.helpers import word_tokenizer

    sizes = dict(d_model=12, d_head=4, n_layers=1, n_ctx=6, act_fn="gelu")
    tokenizer = word_tokenizer()
    model = HookedEncoder(HookedTransformerConfig(**sizes), tokenizer=tokenizer)
    assert model.tokenizer is tokenizer and model.cfg.d_vocab == max(tokenizer.get_vocab().values()) + 1
    with pytest.raises(AssertionError, match="Must provide a tokenizer"):
        HookedEncoder(HookedTransformerConfig(**sizes))


def test_bert_embedding_defaults_to_one_segment_and_the_models_positions() -> None:
    import transformers as T

    from hookscope.compat import HookedEncoder

    hf = T.BertForMaskedLM(T.BertConfig(vocab_size=30, hidden_size=12, num_hidden_layers=1, num_attention_heads=3,
                                        intermediate_size=24, max_position_embeddings=9)).eval()
    model = HookedEncoder.from_pretrained("bert-base-cased", hf_model=hf)
    tokens = torch.randint(0, 30, (2, 7))
    with torch.no_grad():
        torch.testing.assert_close(model.embed(tokens), hf.bert.embeddings(tokens), rtol=0, atol=1e-6)


def test_return_type_both_is_tls_named_output_and_dtype_names() -> None:
    from hookscope.compat.HookedTransformer import DTYPE_FROM_STRING, Output

    model = _small_model()
    out = model(torch.randint(0, 20, (1, 5)), return_type="both")
    assert isinstance(out, Output) and out.logits.shape == (1, 5, 20) and out.loss.ndim == 0
    assert DTYPE_FROM_STRING["bf16"] is torch.bfloat16 and DTYPE_FROM_STRING["fp32"] is torch.float32


def test_frozen_kv_cache_runs_part_of_the_model_as_tl_code_does() -> None:
    """TL's idiom: prefill, freeze, stop_at_layer for a residual, then start_at_layer from it over the cache."""
    from hookscope.compat import HookedTransformerKeyValueCache

    _, model = hf_and_compat("llama")
    tokens = torch.randint(4, 60, (1, 7))
    with torch.no_grad():
        want = model(tokens)[:, -1]
        cache = HookedTransformerKeyValueCache.init_cache(model.cfg, "cpu", 1)
        model(tokens[:, :6], past_kv_cache=cache)
        cache.freeze()
        _, toks, _, mask = model.input_to_embed(tokens[:, 6:], past_kv_cache=cache)
        resid = model(toks, stop_at_layer=1, past_kv_cache=cache)
        got = model(resid, start_at_layer=1, tokens=toks, attention_mask=mask, past_kv_cache=cache)
        assert cache.length == 6 and cache.previous_attention_mask.shape == (1, 6)
        torch.testing.assert_close(got[:, -1], want, rtol=1e-5, atol=1e-5)
        cache.unfreeze()
        with pytest.raises(ValueError, match="freeze"):
            model(toks, stop_at_layer=1, past_kv_cache=cache)


def test_hook_tokens_edits_the_token_ids_before_the_embedding() -> None:
    cfg = HookedTransformerConfig(d_model=12, d_head=3, n_layers=1, n_ctx=10, d_vocab=20, seed=2, use_hook_tokens=True)
    model = HookedTransformer(cfg)
    tokens = torch.tensor([[5, 6, 7]])

    def swap_first(ids: torch.Tensor, hook) -> torch.Tensor:
        ids = ids.clone()
        ids[0, 0] = 9
        return ids

    hooked = model.run_with_hooks(tokens, fwd_hooks=[("hook_tokens", swap_first)])
    torch.testing.assert_close(hooked, model(torch.tensor([[9, 6, 7]])))
    assert "hook_tokens" not in _small_model().hook_dict  # only with cfg.use_hook_tokens


@pytest.mark.parametrize("arch", ["gpt2", "llama", "neox"])
def test_blocks_and_attention_called_alone_take_tl_signatures(arch: str) -> None:
    """``blocks[i](resid)`` and ``attn(q, k, v)`` standalone equal the model's own run (causal, rotary from the
    model), and a padding mask hides the padded keys."""
    _, model = hf_and_compat(arch)
    tokens = torch.randint(4, 60, (2, 6))
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens)
        torch.testing.assert_close(model.blocks[0](cache["resid_pre", 0]), cache["resid_post", 0])
        normed = cache["blocks.1.ln1.hook_normalized"]
        torch.testing.assert_close(model.blocks[1].attn(normed, normed, normed), cache["attn_out", 1])
        torch.testing.assert_close(
            model.blocks[1].attn(query_input=normed, key_input=normed, value_input=normed), cache["attn_out", 1])
        # left padding: row 0's first two positions are padding; its real tokens alone give the same outputs
        mask = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])
        _, alone = model.run_with_cache(tokens[:1, 2:])
        resid = cache["resid_pre", 0].clone()
        resid[0, 2:] = alone["resid_pre", 0][0]
        padded = model.blocks[0](resid, attention_mask=mask)
        torch.testing.assert_close(padded[0, 2:], alone["resid_post", 0][0], rtol=1e-5, atol=1e-5)


def _first(out: Any) -> torch.Tensor:
    """A Hugging Face module's hidden states (some return a tuple, some the tensor)."""
    return out[0] if isinstance(out, tuple) else out


def test_bert_block_and_attention_alone_equal_hugging_faces() -> None:
    import transformers as T

    from hookscope.compat import HookedEncoder

    hf = T.BertForMaskedLM(T.BertConfig(vocab_size=30, hidden_size=12, num_hidden_layers=1, num_attention_heads=3,
                                        intermediate_size=24, max_position_embeddings=9)).eval()
    model = HookedEncoder.from_pretrained("bert-base-cased", hf_model=hf)
    x = torch.randn(2, 6, 12)
    layer = hf.bert.encoder.layer[0]
    with torch.no_grad():
        torch.testing.assert_close(model.blocks[0](x), _first(layer(x)), rtol=1e-5, atol=1e-5)
        want = layer.attention.output.dense(_first(layer.attention.self(x)))
        torch.testing.assert_close(model.blocks[0].attn(x, x, x), want, rtol=1e-5, atol=1e-5)
        additive = torch.zeros(2, 1, 1, 6)
        additive[0, ..., 4:] = float("-inf")  # row 0: the last two positions are padding
        out = model.blocks[0](x, additive_attention_mask=additive)
        torch.testing.assert_close(out[0, :4], _first(layer(x[:1, :4]))[0], rtol=1e-5, atol=1e-5)


def test_standalone_calls_refuse_cache_entries_and_mismatched_masks() -> None:
    model = _small_model()
    x = torch.randn(1, 4, 12)
    with pytest.raises(NotImplementedError, match="past_kv_cache"):
        model.blocks[0](x, past_kv_cache_entry=object())
    with pytest.raises(ValueError, match="covers 6 positions"):
        model.blocks[0].attn(x, x, x, attention_mask=torch.ones(1, 6))


def test_a_deep_copy_calls_its_own_rotary_tables_after_the_original_is_gone() -> None:
    import copy
    import gc

    _, model = hf_and_compat("llama")
    clone = copy.deepcopy(model)
    del model
    gc.collect()
    tokens = torch.randint(4, 60, (1, 5))
    with torch.no_grad():
        _, cache = clone.run_with_cache(tokens)
        torch.testing.assert_close(clone.blocks[1](cache["resid_pre", 1]), cache["resid_post", 1])
    assert len(clone.state_dict()) == len(copy.deepcopy(clone).state_dict())  # the model is no submodule of its blocks
