"""GPT-J and Phi: values hookscope cannot reproduce exactly are refused by name; GPT-J's interleaved rotary
keeps HF's q/k layout in the hooks; the one shared block norm becomes ln1 and ln2 (as TransformerLens has it)."""

from __future__ import annotations

import pytest
import torch
import transformers as T
from transformers.models.gptj import modeling_gptj

import hookscope
from hookscope.convert.decoder_hf import decoder_config_from_hf
from hookscope.errors import ConfigError, ConversionError
from tests.equivalence.decoder_configs import hf_config_with, random_hf_model, random_tokens


@pytest.mark.parametrize(
    ("name", "changes", "named"),
    [
        ("gptj", {"rotary_dim": 5}, "rotary_dim=5"),
        ("gptj", {"rotary_dim": 14}, "rotary_dim=14"),
        ("gptj", {"n_head": 7}, "n_head=7"),
        ("phi", {"rope_parameters": {"rope_type": "default", "rope_theta": 1e4, "partial_rotary_factor": 0.25}},
         "partial_rotary_factor=0.25"),
        ("phi", {"rope_parameters": {"rope_type": "linear", "rope_theta": 1e4, "factor": 2.0,
                                     "partial_rotary_factor": 0.5}}, "'linear'"),
    ],
)
def test_unsupported_values_are_refused_naming_them(name: str, changes: dict, named: str) -> None:
    config = hf_config_with(name, **changes)
    with pytest.raises(ConfigError, match=named) as info:
        decoder_config_from_hf(config)
    assert isinstance(info.value, ConversionError)


def test_gptj_hook_q_is_hf_query_and_rot_q_is_its_rotate_every_two() -> None:
    hf = random_hf_model("gptj", torch.float64)
    model = hookscope.load(hf, dtype=torch.float64)
    assert model.cfg.rotary_interleaved and model.cfg.rotary_dim == 6
    tokens = random_tokens(2, 5)
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: n.startswith("blocks.0.attn.hook_"))
    attn = hf.transformer.h[0].attn
    x = hf.transformer.h[0].ln_1(hf.transformer.wte(tokens))
    q = attn.q_proj(x).view(2, 5, 5, 12)  # [batch, pos, head_index, d_head], HF's own layout
    torch.testing.assert_close(cache["blocks.0.attn.hook_q"], q, atol=1e-12, rtol=0)
    sin, cos = hf.transformer.rotary_emb(x, torch.arange(5)[None])
    rotated = torch.cat([modeling_gptj.apply_rotary_pos_emb(q[..., :6], sin, cos), q[..., 6:]], dim=-1)
    torch.testing.assert_close(cache["blocks.0.attn.hook_rot_q"], rotated, atol=1e-12, rtol=0)
    passed = cache["blocks.0.attn.hook_q"][..., 6:]  # features past rotary_dim pass through unchanged
    assert torch.equal(cache["blocks.0.attn.hook_rot_q"][..., 6:], passed)


@pytest.mark.parametrize("name", ["gptj", "phi_qk_layernorm_gqa"])
def test_shared_norm_gradient_is_the_sum_of_ln1_and_ln2_gradients(name: str) -> None:
    hf = random_hf_model(name, torch.float64)
    model = hookscope.load(hf, dtype=torch.float64)
    tokens = random_tokens(2, 6)
    hf(tokens, labels=tokens).loss.backward()
    model(tokens, return_type="loss").backward()
    hf_norm = hf.transformer.h[0].ln_1 if name == "gptj" else hf.model.layers[0].input_layernorm
    block = model.blocks[0]
    for w in ("weight", "bias"):
        ours = getattr(block.ln1, w).grad + getattr(block.ln2, w).grad
        torch.testing.assert_close(ours, getattr(hf_norm, w).grad, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(model.unembed.bias.grad, hf.lm_head.bias.grad, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(block.attn.q_proj.weight.grad,
                               (hf.transformer.h[0].attn if name == "gptj" else hf.model.layers[0].self_attn)
                               .q_proj.weight.grad, atol=1e-10, rtol=1e-10)


def test_export_refuses_block_norms_that_came_apart() -> None:
    model = hookscope.load(random_hf_model("phi"))
    with torch.no_grad():
        model.blocks[1].ln2.weight.add_(0.5)
    with pytest.raises(ConversionError, match="ln1 and ln2"):
        model.to_hf()


def test_phi_qk_layernorms_are_layernorms_with_bias_over_d_head() -> None:
    hf = random_hf_model("phi_qk_layernorm_gqa")
    model = hookscope.load(hf)
    q_norm = model.blocks[0].attn.q_norm
    assert model.cfg.qk_norm_type == "layernorm" and q_norm.weight.shape == (12,)
    assert torch.equal(q_norm.bias, hf.model.layers[0].self_attn.q_layernorm.bias)
    assert model.cfg.rotary_dim == 6 and model.cfg.n_kv_heads == 1


# The attributes of published config.json files (sizes shrunk): EleutherAI/gpt-j-6B, microsoft/phi-2
PUBLISHED = {
    "gptj": {"activation_function": "gelu_new", "attn_pdrop": 0.0, "bos_token_id": 50256, "embd_pdrop": 0.0,
             "eos_token_id": 50256, "gradient_checkpointing": False, "initializer_range": 0.02,
             "layer_norm_epsilon": 1e-05, "n_embd": 256, "n_head": 4, "n_inner": None, "n_layer": 2,
             "n_positions": 2048, "resid_pdrop": 0.0, "rotary": True, "rotary_dim": 64, "scale_attn_weights": True,
             "summary_activation": None, "summary_first_dropout": 0.1, "summary_proj_to_labels": True,
             "summary_type": "cls_index", "summary_use_proj": True, "tie_word_embeddings": False,
             "tokenizer_class": "GPT2Tokenizer", "vocab_size": 50400},
    "phi": {"attention_dropout": 0.0, "bos_token_id": 50256, "embd_pdrop": 0.0, "eos_token_id": 50256,
            "hidden_act": "gelu_new", "hidden_size": 320, "initializer_range": 0.02, "intermediate_size": 1280,
            "layer_norm_eps": 1e-05, "max_position_embeddings": 2048, "num_attention_heads": 4,
            "num_hidden_layers": 2, "num_key_value_heads": 4, "partial_rotary_factor": 0.4, "qk_layernorm": False,
            "resid_pdrop": 0.1, "rope_scaling": None, "rope_theta": 10000.0, "tie_word_embeddings": False,
            "vocab_size": 51200},
}


@pytest.mark.parametrize("model_type", PUBLISHED)
def test_published_config_attributes_are_accepted(model_type: str) -> None:
    config = T.AutoConfig.for_model(model_type, **PUBLISHED[model_type])
    cfg, _ = decoder_config_from_hf(config)
    assert cfg.n_layers == 2 and cfg.parallel_attn_mlp and cfg.unembed_bias
    assert (cfg.rotary_dim, cfg.rotary_interleaved) == ((64, True) if model_type == "gptj" else (32, False))


def test_transformerlens_config_carries_gptj_rotary_pairing_both_ways() -> None:
    from hookscope.compat import HookedTransformerConfig

    native = hookscope.load(random_hf_model("gptj")).cfg
    tl = HookedTransformerConfig.from_native(native)
    assert tl.rotary_adjacent_pairs and tl.rotary_dim == 6
    assert tl.to_native().rotary_interleaved
    plain = HookedTransformerConfig(d_model=12, d_head=4, n_layers=1, n_ctx=9, d_vocab=30, act_fn="gelu",
                                    positional_embedding_type="rotary")
    assert not plain.to_native().rotary_interleaved


@pytest.mark.parametrize("name", ["gptj_full_rotary_tied_gelu", "phi_qk_layernorm_gqa"])
def test_saved_checkpoint_folder_loads(name: str, tmp_path) -> None:
    hf = random_hf_model(name)
    hf.save_pretrained(tmp_path)
    model = hookscope.load(tmp_path)
    tokens = random_tokens(2, 6)
    with torch.no_grad():
        torch.testing.assert_close(model(tokens), hf(tokens).logits, atol=1e-5, rtol=1e-5)
