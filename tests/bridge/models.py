"""Tiny random transformers models of every known layout, with shape-hostile sizes and re-drawn weights."""

from __future__ import annotations

import torch
import transformers as T

from tests.helpers import redraw_parameters

D, HEADS, KV, D_HEAD, D_MLP, VOCAB, LAYERS = 48, 4, 2, 12, 37, 101, 3
BATCH, POS = 3, 7

_COMMON = dict(vocab_size=VOCAB, pad_token_id=0, bos_token_id=1, eos_token_id=2)
_LLAMA = dict(
    hidden_size=D,
    num_hidden_layers=LAYERS,
    num_attention_heads=HEADS,
    num_key_value_heads=KV,
    intermediate_size=D_MLP,
    **_COMMON,
)

DECODER_CONFIGS = {
    "gpt2": lambda: T.GPT2Config(
        n_embd=D, n_layer=LAYERS, n_head=HEADS, n_inner=D_MLP, n_positions=32, **_COMMON
    ),
    "gpt_neox": lambda: T.GPTNeoXConfig(
        hidden_size=D,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        intermediate_size=D_MLP,
        rotary_pct=0.5,
        **_COMMON,
    ),
    "gpt_neox_sequential": lambda: T.GPTNeoXConfig(
        hidden_size=D,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        intermediate_size=D_MLP,
        use_parallel_residual=False,
        **_COMMON,
    ),
    "llama": lambda: T.LlamaConfig(**_LLAMA),
    "mistral": lambda: T.MistralConfig(**_LLAMA, sliding_window=4),
    "qwen2": lambda: T.Qwen2Config(**_LLAMA),
    "qwen3": lambda: T.Qwen3Config(**_LLAMA, head_dim=D_HEAD),
    "gemma2": lambda: T.Gemma2Config(
        **_LLAMA,
        head_dim=D_HEAD,
        sliding_window=4,
        query_pre_attn_scalar=10,
        attn_logit_softcapping=5.0,
        final_logit_softcapping=7.0,
    ),
    "phi3": lambda: T.Phi3Config(**_LLAMA),
    "olmo2": lambda: T.Olmo2Config(**_LLAMA),
}


def decoder(
    name: str, attn: str = "eager", dtype: torch.dtype = torch.float32, seed: int = 0
) -> T.PreTrainedModel:
    """A causal LM of layout ``name``, parameters re-drawn, in eval mode."""
    torch.manual_seed(seed)
    model = T.AutoModelForCausalLM.from_config(DECODER_CONFIGS[name](), attn_implementation=attn)
    return redraw_parameters(model.to(dtype), seed).eval()


def tokens(batch: int = BATCH, pos: int = POS, seed: int = 1) -> torch.Tensor:
    return torch.randint(3, VOCAB, (batch, pos), generator=torch.Generator().manual_seed(seed))


def bert(attn: str = "eager") -> T.PreTrainedModel:
    cfg = T.BertConfig(
        hidden_size=D,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        intermediate_size=D_MLP,
        vocab_size=VOCAB,
        max_position_embeddings=32,
    )
    cfg._attn_implementation = attn
    return redraw_parameters(T.BertModel(cfg, add_pooling_layer=False)).eval()


def vit(attn: str = "eager") -> T.PreTrainedModel:
    cfg = T.ViTConfig(
        hidden_size=D,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        intermediate_size=D_MLP,
        image_size=12,
        patch_size=4,
        num_channels=3,
    )
    cfg._attn_implementation = attn
    return redraw_parameters(T.ViTModel(cfg, add_pooling_layer=False)).eval()


def t5(attn: str = "eager") -> T.PreTrainedModel:
    cfg = T.T5Config(
        d_model=D,
        d_kv=D_HEAD,
        d_ff=D_MLP,
        num_layers=LAYERS,
        num_decoder_layers=2,
        num_heads=HEADS,
        vocab_size=VOCAB,
        feed_forward_proj="gated-gelu",
        decoder_start_token_id=0,
        **{k: v for k, v in _COMMON.items() if k != "vocab_size"},
    )
    cfg._attn_implementation = attn
    return redraw_parameters(T.T5ForConditionalGeneration(cfg)).eval()


def whisper(attn: str = "eager") -> T.PreTrainedModel:
    cfg = T.WhisperConfig(
        d_model=D,
        encoder_layers=2,
        decoder_layers=LAYERS,
        encoder_attention_heads=HEADS,
        decoder_attention_heads=HEADS,
        encoder_ffn_dim=D_MLP,
        decoder_ffn_dim=D_MLP,
        vocab_size=VOCAB,
        num_mel_bins=8,
        max_source_positions=6,
        max_target_positions=32,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        decoder_start_token_id=1,
        suppress_tokens=None,
        begin_suppress_tokens=None,
    )
    cfg._attn_implementation = attn
    return redraw_parameters(T.WhisperForConditionalGeneration(cfg)).eval()
