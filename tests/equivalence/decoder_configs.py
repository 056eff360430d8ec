"""Small, shape-hostile HF configs for every supported decoder architecture (shared by decoder tests)."""

from __future__ import annotations

import torch
import transformers as T

from tests.helpers import redraw_parameters

VOCAB = 101


def _llama_kwargs() -> dict:
    return dict(hidden_size=48, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2, head_dim=12,
                intermediate_size=37, vocab_size=VOCAB, max_position_embeddings=64, rms_norm_eps=1e-5,
                bos_token_id=1, eos_token_id=2, pad_token_id=0)


def hf_configs() -> dict[str, T.PretrainedConfig]:
    """One config per architecture and notable variant."""
    neox = dict(hidden_size=64, num_hidden_layers=3, num_attention_heads=4, intermediate_size=37, vocab_size=VOCAB,
                max_position_embeddings=64, bos_token_id=1, eos_token_id=2)
    neo = dict(hidden_size=40, num_heads=5, intermediate_size=37, vocab_size=VOCAB, max_position_embeddings=64,
               bos_token_id=1, eos_token_id=2)
    opt = dict(hidden_size=40, num_attention_heads=5, ffn_dim=37, vocab_size=VOCAB, max_position_embeddings=64,
               bos_token_id=1, eos_token_id=2, pad_token_id=0)
    gptj = dict(n_embd=60, n_head=5, n_inner=37, vocab_size=VOCAB, n_positions=64, bos_token_id=1, eos_token_id=2)
    phi = dict(hidden_size=60, num_attention_heads=5, intermediate_size=37, vocab_size=VOCAB,
               max_position_embeddings=64, bos_token_id=1, eos_token_id=2)
    return {
        # d_head 12, interleaved rotary on its first 6 features (rotate_every_two), q.k and its scale in float32
        "gptj": T.GPTJConfig(**gptj, n_layer=3, rotary_dim=6),
        "gptj_full_rotary_tied_gelu": T.GPTJConfig(**gptj, n_layer=2, rotary_dim=12, activation_function="gelu",
                                                   tie_word_embeddings=True),
        # partial rotary (rotate half) on 4 of 12 features; one with per-head q/k LayerNorms and GQA
        "phi": T.PhiConfig(**phi, num_hidden_layers=3, partial_rotary_factor=1 / 3, pad_token_id=0),
        "phi_qk_layernorm_gqa": T.PhiConfig(**phi, num_hidden_layers=2, qk_layernorm=True, num_key_value_heads=1,
                                            partial_rotary_factor=0.5, tie_word_embeddings=True),
        # local layers see 3 keys (the sequences are longer); GPT-Neo's scores are unscaled, q.k in float32
        "gpt_neo": T.GPTNeoConfig(**neo, num_layers=3, window_size=3,
                                  attention_types=[[["global", "local"], 1], [["local"], 1]]),
        "gpt_neo_untied": T.GPTNeoConfig(**neo, num_layers=2, window_size=5, activation_function="gelu",
                                         attention_types=[[["local", "global"], 1]], tie_word_embeddings=False),
        # HF OPT reads positions 2 rows into its table and scales the query before q.k
        "opt": T.OPTConfig(**opt, num_hidden_layers=3),
        "opt_untied_gelu_nobias": T.OPTConfig(**opt, num_hidden_layers=2, activation_function="gelu",
                                              enable_bias=False, tie_word_embeddings=False),
        "opt_no_affine_no_final_norm": T.OPTConfig(**opt, num_hidden_layers=2, layer_norm_elementwise_affine=False,
                                                   _remove_final_layer_norm=True),
        "gpt2": T.GPT2Config(n_embd=48, n_layer=3, n_head=4, n_positions=64, vocab_size=VOCAB, n_inner=37,
                             bos_token_id=1, eos_token_id=2),
        "gpt2_untied": T.GPT2Config(n_embd=48, n_layer=2, n_head=4, n_positions=64, vocab_size=VOCAB,
                                    activation_function="gelu", tie_word_embeddings=False, bos_token_id=1,
                                    eos_token_id=2),
        "neox": T.GPTNeoXConfig(**neox),
        "neox_sequential": T.GPTNeoXConfig(**neox, use_parallel_residual=False),
        "llama": T.LlamaConfig(**_llama_kwargs()),
        "llama_mqa_tied": T.LlamaConfig(**{**_llama_kwargs(), "num_key_value_heads": 1}, tie_word_embeddings=True),
        "llama3_rope": T.LlamaConfig(**_llama_kwargs(), rope_parameters={
            "rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 16}),
        "llama_linear_rope_bias": T.LlamaConfig(**_llama_kwargs(), attention_bias=True, mlp_bias=True,
                                                rope_parameters={"rope_type": "linear", "rope_theta": 10000.0,
                                                                 "factor": 2.0}),
        # HF Llama's default RoPE rotates the whole head whatever partial_rotary_factor says
        "llama_partial_factor_ignored": T.LlamaConfig(**_llama_kwargs(), partial_rotary_factor=0.5),
        "mistral": T.MistralConfig(**_llama_kwargs(), sliding_window=4),
        "qwen2": T.Qwen2Config(**_llama_kwargs()),
        "qwen3": T.Qwen3Config(**_llama_kwargs()),
        # head_dim 10 while d_model / n_heads is 12; the embedding scale and 1 + w norms as in Gemma 2
        "gemma": T.GemmaConfig(**{**_llama_kwargs(), "head_dim": 10}),
        "gemma_mqa_untied_bias": T.GemmaConfig(**{**_llama_kwargs(), "num_key_value_heads": 1, "head_dim": 16},
                                               tie_word_embeddings=False, attention_bias=True),
        "gemma2": T.Gemma2Config(**{**_llama_kwargs(), "num_hidden_layers": 4}, query_pre_attn_scalar=10,
                                 sliding_window=4, attn_logit_softcapping=5.0, final_logit_softcapping=3.0),
    }


def hf_config_with(name: str, **changes: object) -> T.PretrainedConfig:
    """``hf_configs()[name]`` with some attributes set (e.g. a value a family must refuse)."""
    config = hf_configs()[name]
    for key, value in changes.items():
        setattr(config, key, value)
    return config


def random_hf_model(name: str, dtype: torch.dtype = torch.float32, seed: int = 0) -> torch.nn.Module:
    """The HF reference model: eager attention, every parameter re-drawn."""
    torch.manual_seed(seed)
    config = hf_configs()[name]
    model = T.AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    redraw_parameters(model, seed=seed, norm_center=0.0 if name.startswith("gemma") else 1.0)
    return model.to(dtype).eval()


def random_tokens(batch: int, pos: int, seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(3, VOCAB, (batch, pos), generator=gen)


ARCHS = list(hf_configs())
