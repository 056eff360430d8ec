"""GPT-Neo, Gemma (1) and OPT: config values hookscope cannot reproduce exactly are refused by name, and the
family-specific layouts (OPT's offset position table) look as TransformerLens shows them."""

from __future__ import annotations

import pytest
import torch
import transformers as T

import hookscope
from hookscope.convert.decoder_hf import decoder_config_from_hf
from hookscope.errors import ConfigError, ConversionError
from tests.equivalence.decoder_configs import hf_config_with, random_hf_model, random_tokens


@pytest.mark.parametrize(
    ("name", "changes", "named"),
    [
        ("opt", {"do_layer_norm_before": False}, "do_layer_norm_before"),
        ("opt", {"word_embed_proj_dim": 32}, "word_embed_proj_dim=32"),
        ("opt", {"num_attention_heads": 3}, "num_attention_heads=3"),
        ("gpt_neo", {"num_heads": 3}, "num_heads=3"),
        ("gpt_neo", {"attention_layers": ["global", "sparse", "local"]}, "sparse"),
        ("gpt_neo", {"attention_layers": ["global", "local"]}, "attention_layers"),
        ("gemma", {"hidden_activation": "gelu"}, "hidden_activation='gelu'"),
        ("gemma", {"use_bidirectional_attention": True}, "use_bidirectional_attention"),
    ],
)
def test_unsupported_values_are_refused_naming_them(name: str, changes: dict, named: str) -> None:
    config = hf_config_with(name, **changes)
    with pytest.raises(ConfigError, match=named) as info:
        decoder_config_from_hf(config)
    assert isinstance(info.value, ConversionError)  # a failure of load() as well


def test_opt_350m_model_is_refused_by_load() -> None:
    config = T.OPTConfig(hidden_size=40, num_attention_heads=5, ffn_dim=37, vocab_size=101, num_hidden_layers=1,
                         max_position_embeddings=16, do_layer_norm_before=False)
    with pytest.raises(ConversionError, match="do_layer_norm_before=False"):
        hookscope.load(T.OPTForCausalLM(config))


def test_opt_position_table_is_read_two_rows_in_and_w_pos_starts_at_position_zero() -> None:
    hf = random_hf_model("opt")
    model = hookscope.load(hf)
    table = hf.model.decoder.embed_positions.weight
    assert model.W_pos.shape == (64, 40) and torch.equal(model.W_pos, table[2:])
    tokens = random_tokens(2, 5)
    _, cache = model.run_with_cache(tokens, names_filter="hook_pos_embed")
    torch.testing.assert_close(cache["hook_pos_embed"], table[2:7].expand(2, -1, -1), atol=0, rtol=0)
    with pytest.raises(IndexError, match="beyond the model's 64 positions"):
        model(random_tokens(1, 65))


def test_gpt_neo_local_layers_see_exactly_the_last_window_keys() -> None:
    model = hookscope.load(random_hf_model("gpt_neo"))
    assert model.cfg.sliding_windows == (None, 3, 3) and model.cfg.attn_scale == 1.0
    _, cache = model.run_with_cache(random_tokens(1, 7), names_filter=lambda n: n.endswith("hook_pattern"))
    seen = cache["pattern", 1][0, 0] > 0  # [query_pos, key_pos]
    query, key = torch.meshgrid(torch.arange(7), torch.arange(7), indexing="ij")
    assert torch.equal(seen, (key <= query) & (query - key < 3))
    assert bool((cache["pattern", 0][0, 0, 6] > 0).all())  # the global layer sees every earlier key


@pytest.mark.parametrize("name", ["gpt_neo", "gptj"])
def test_float32_qk_families_bfloat16_forward_is_hf_exactly(name: str) -> None:
    """HF GPT-Neo and GPT-J multiply q and k (GPT-J also scales) in float32 whatever the model dtype; so do
    ours (not SDPA in bf16)."""
    hf = random_hf_model(name).to(torch.bfloat16)
    model = hookscope.load(hf, dtype=torch.bfloat16)
    tokens = random_tokens(3, 9)
    with torch.no_grad():
        torch.testing.assert_close(model(tokens), hf(tokens).logits, atol=0, rtol=0)


def test_opt_checkpoint_saved_from_opt_model_without_the_model_prefix_loads(tmp_path) -> None:
    from safetensors.torch import load_file, save_file

    hf = random_hf_model("opt")
    hf.save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    state = load_file(weights)
    save_file({k.removeprefix("model."): v for k, v in state.items()}, weights, metadata={"format": "pt"})
    assert any(k.startswith("decoder.layers.") for k in load_file(weights))
    model = hookscope.load(tmp_path)
    tokens = random_tokens(2, 6)
    with torch.no_grad():
        torch.testing.assert_close(model(tokens), hf(tokens).logits, atol=1e-5, rtol=1e-5)


# The attributes of published config.json files (sizes shrunk): TinyStories (GPT-Neo), facebook/opt-125m, gemma-2b
PUBLISHED = {
    "gpt_neo": {"activation_function": "gelu_new", "attention_dropout": 0, "attention_layers": ["global", "local"] * 2,
                "attention_types": [[["global", "local"], 2]], "embed_dropout": 0, "gradient_checkpointing": False,
                "hidden_size": 64, "intermediate_size": None, "layer_norm_epsilon": 1e-05,
                "max_position_embeddings": 2048, "num_heads": 16, "num_layers": 4, "resid_dropout": 0,
                "summary_activation": None, "summary_first_dropout": 0.1, "summary_proj_to_labels": True,
                "summary_type": "cls_index", "summary_use_proj": True, "vocab_size": 50257, "window_size": 256},
    "opt": {"_remove_final_layer_norm": False, "activation_dropout": 0.0, "activation_function": "relu",
            "attention_dropout": 0.0, "do_layer_norm_before": True, "dropout": 0.1, "ffn_dim": 3072,
            "hidden_size": 768, "init_std": 0.02, "layerdrop": 0.0, "max_position_embeddings": 2048,
            "num_attention_heads": 12, "num_hidden_layers": 2, "pad_token_id": 1, "prefix": "</s>",
            "vocab_size": 50272, "word_embed_proj_dim": 768},
    "gemma": {"attention_bias": False, "attention_dropout": 0.0, "head_dim": 256, "hidden_act": "gelu",
              "hidden_activation": "gelu_pytorch_tanh", "hidden_size": 2048, "intermediate_size": 16384,
              "max_position_embeddings": 8192, "num_attention_heads": 8, "num_hidden_layers": 2,
              "num_key_value_heads": 1, "rms_norm_eps": 1e-06, "rope_scaling": None, "rope_theta": 10000.0,
              "vocab_size": 256000},
}


@pytest.mark.parametrize("model_type", PUBLISHED)
def test_published_config_attributes_are_accepted(model_type: str) -> None:
    config = T.AutoConfig.for_model(model_type, **PUBLISHED[model_type])
    cfg, _ = decoder_config_from_hf(config)
    if model_type == "gpt_neo":
        assert cfg.sliding_windows == (None, 256, None, 256) and cfg.d_mlp == 4 * 64
    else:
        assert cfg.n_layers == 2
    if model_type == "gemma":  # the legacy "gelu" is HF's tanh approximation, as hidden_activation says
        assert cfg.act_fn == "gelu_pytorch_tanh" and cfg.n_kv_heads == 1 and cfg.d_head == 256
