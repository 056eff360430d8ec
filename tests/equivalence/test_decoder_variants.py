"""Decoder variants the main decoder tests do not cover, each against HF at float64 1e-10.

* Real checkpoints' config.json carry keys HF never reads (SmolLM2: ``is_llama_config``,
  ``rope_interleaved``; Gemma 2: ``cache_implementation="hybrid"``); they used to be refused as
  unmodelled attributes, so ``load("HuggingFaceTB/SmolLM2-135M")`` and Gemma 2 checkpoints failed.
* Config variants: explicit ``head_dim`` != hidden/heads, Qwen2/3 ``use_sliding_window`` with
  ``max_window_layers``, GPT-NeoX ``rotary_pct`` with sequential residual and tied embeddings, Gemma 2
  without soft-caps and with an odd ``query_pre_attn_scalar``.
"""

from __future__ import annotations

import pytest
import torch
import transformers as T

import hookscope
from hookscope.convert.engine import ConversionError
from tests.equivalence.decoder_configs import VOCAB, _llama_kwargs, random_tokens
from tests.helpers import TOLERANCES, first_divergence, redraw_parameters


def _variants() -> dict[str, T.PretrainedConfig]:
    llama = _llama_kwargs()
    return {
        "smollm2_hub_keys": T.LlamaConfig(**llama, is_llama_config=True, rope_interleaved=False,
                                          tie_word_embeddings=True),
        "gemma2_hub_keys": T.Gemma2Config(**llama, query_pre_attn_scalar=12, sliding_window=3,
                                          cache_implementation="hybrid", hidden_act="gelu_pytorch_tanh"),
        "llama_head_dim_20_relu": T.LlamaConfig(**{**llama, "head_dim": 20}, hidden_act="relu"),
        "qwen2_max_window_layers": T.Qwen2Config(**{**llama, "num_hidden_layers": 4}, use_sliding_window=True,
                                                 sliding_window=3, max_window_layers=2),
        "qwen3_sliding": T.Qwen3Config(**llama, use_sliding_window=True, sliding_window=4, max_window_layers=1),
        "neox_rotary_pct_sequential_tied": T.GPTNeoXConfig(
            hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37, vocab_size=VOCAB,
            max_position_embeddings=64, rotary_pct=0.25, use_parallel_residual=False, tie_word_embeddings=True,
            attention_bias=False, hidden_act="gelu_new"),
        "gemma2_odd_scalar_no_caps_untied": T.Gemma2Config(
            **llama, query_pre_attn_scalar=7, sliding_window=5, attn_logit_softcapping=None,
            final_logit_softcapping=None, tie_word_embeddings=False),
    }


def _hf(name: str, dtype: torch.dtype = torch.float64) -> torch.nn.Module:
    torch.manual_seed(0)
    model = T.AutoModelForCausalLM.from_config(_variants()[name], attn_implementation="eager")
    redraw_parameters(model, norm_center=0.0 if name.startswith("gemma") else 1.0)
    return model.to(dtype).eval()


@pytest.mark.parametrize("name", list(_variants()))
def test_variant_matches_hf_every_layer(name: str) -> None:
    hf = _hf(name)
    model = hookscope.load(hf, dtype=torch.float64)
    tokens = random_tokens(3, 9)  # longer than every sliding window above
    with torch.no_grad():
        ref = hf(tokens, output_hidden_states=True, output_attentions=True)
        logits, cache = model.run_with_cache(tokens)
    n = model.cfg.n_layers
    pairs = [(f"blocks.{i}.hook_resid_pre", cache["resid_pre", i], ref.hidden_states[i]) for i in range(n)]
    pairs += [(f"blocks.{i}.attn.hook_pattern", cache["pattern", i], ref.attentions[i]) for i in range(n)]
    pairs += [("ln_final.hook_normalized", cache["ln_final.hook_normalized"], ref.hidden_states[n])]
    pairs += [("logits", logits, ref.logits)]
    problem = first_divergence(pairs, *TOLERANCES[torch.float64])
    assert problem is None, f"{name}: first divergent hook: {problem}"


def test_hub_style_folder_loads_and_round_trips(tmp_path) -> None:
    hf = _hf("smollm2_hub_keys", torch.float32)
    hf.save_pretrained(tmp_path, max_shard_size="20KB")  # sharded, with the SmolLM2 config keys
    model = hookscope.load(tmp_path)
    tokens = random_tokens(2, 6)
    with torch.no_grad():
        torch.testing.assert_close(model(tokens), hf(tokens).logits, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(model.to_hf()(tokens).logits, hf(tokens).logits, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("rope_type", ["dynamic", "yarn"])
def test_unsupported_rope_scaling_is_refused_naming_it(rope_type: str) -> None:
    config = T.LlamaConfig(**_llama_kwargs(), rope_parameters={
        "rope_type": rope_type, "rope_theta": 10000.0, "factor": 2.0, "original_max_position_embeddings": 32})
    with pytest.raises(ConversionError, match=rf"rope_type '{rope_type}'.*wrap"):
        hookscope.load(T.LlamaForCausalLM(config))


def test_one_dimensional_tokens_mask_and_positions() -> None:
    hf = _hf("llama_head_dim_20_relu", torch.float32)
    model = hookscope.load(hf)
    tokens = random_tokens(1, 6)
    mask = torch.tensor([0, 1, 1, 1, 1, 1])
    with torch.no_grad():
        torch.testing.assert_close(model(tokens[0], mask), model(tokens, mask[None]), atol=0, rtol=0)
        torch.testing.assert_close(model(tokens, position_ids=torch.arange(6)), model(tokens), atol=0, rtol=0)
        with pytest.raises(ValueError, match="attention_mask has 2 rows for a batch of 1"):
            model(tokens, torch.ones(2, 6, dtype=torch.long))


@pytest.mark.parametrize("name", ["gpt2", "llama_linear_rope_bias"])
def test_weight_views_reproduce_the_hooks(name: str) -> None:
    """TransformerLens-shaped views (model-level stacks included) compute what the hooks saw."""
    from tests.equivalence.decoder_configs import random_hf_model

    model = hookscope.load(random_hf_model(name, torch.float64), dtype=torch.float64)
    with torch.no_grad():
        _, c = model.run_with_cache(random_tokens(2, 5))
    layer = 1
    x = c["blocks.1.ln1.hook_normalized"]
    attn = model.blocks[layer].attn
    rep = model.cfg.n_heads // attn.n_kv_heads
    assert model.W_K.shape[1] == model.W_V.shape[1] == model.cfg.n_heads  # GQA shown per query head, as in TL
    pairs = [
        ("hook_q", torch.einsum("bpm,hme->bphe", x, model.W_Q[layer]) + model.b_Q[layer], c["q", layer]),
        ("hook_k", torch.einsum("bpm,hme->bphe", x, model.W_K[layer]) + model.b_K[layer],
         c["k", layer].repeat_interleave(rep, dim=2)),
        ("hook_v", torch.einsum("bpm,hme->bphe", x, model.W_V[layer]) + model.b_V[layer],
         c["v", layer].repeat_interleave(rep, dim=2)),
        ("hook_k (KV heads)", torch.einsum("bpm,hme->bphe", x, attn._W_K) + attn._b_K, c["k", layer]),
        ("hook_v (KV heads)", torch.einsum("bpm,hme->bphe", x, attn._W_V) + attn._b_V, c["v", layer]),
        ("hook_attn_out", torch.einsum("bphe,hem->bpm", c["z", layer], model.W_O[layer]) + model.b_O[layer],
         c["attn_out", layer]),
    ]
    m = c["blocks.1.ln2.hook_normalized"]
    linear = "hook_pre_linear" if model.cfg.mlp == "gated" else "hook_pre"
    pairs.append((linear, m @ model.W_in[layer] + model.b_in[layer], c[f"blocks.1.mlp.{linear}"]))
    if model.cfg.mlp == "gated":
        gate = m @ model.W_gate[layer] + model.blocks[layer].mlp.b_gate
        pairs.append(("hook_pre (gate)", gate, c["blocks.1.mlp.hook_pre"]))
    pairs.append(("hook_mlp_out", c["post", layer] @ model.W_out[layer] + model.b_out[layer], c["mlp_out", layer]))
    pairs.append(("logits", c["ln_final.hook_normalized"] @ model.W_U + model.b_U, model.unembed(
        c["ln_final.hook_normalized"])))
    problem = first_divergence(pairs, *TOLERANCES[torch.float64])
    assert problem is None, problem


@pytest.mark.parametrize("cls", ["LlamaModel", "LlamaForSequenceClassification", "LlamaForTokenClassification"])
def test_llama_classes_without_an_lm_head_are_refused_by_name(cls: str) -> None:
    from tests.equivalence.decoder_configs import hf_configs

    hf = getattr(T, cls)(hf_configs()["llama"])
    with pytest.raises(ConversionError, match=f"{cls} is not a causal language model.*wrap"):
        hookscope.load(hf)
