"""Random HF T5 models (v1.0, v1.1, encoder only) with re-drawn weights and padded inputs, for the T5 tests.

Shape-hostile sizes: d_model 48, 5 heads of d_head 7 (so n_heads * d_head = 35 != d_model), d_ff 37,
vocab 101, 3 encoder and 2 decoder layers, 8 relative buckets with max distance 12 so that sequences of
9 and 6 tokens reach the logarithmic buckets.
"""

from __future__ import annotations

import torch
import transformers

from tests.helpers import redraw_parameters

VARIANTS = ("v1.0", "v1.1")
EOS = 1


def hf_config(variant: str, **overrides: object) -> transformers.T5Config:
    gated = variant == "v1.1"
    kwargs: dict[str, object] = dict(
        vocab_size=101,
        d_model=48,
        d_kv=7,
        d_ff=37,
        num_layers=3,
        num_decoder_layers=2,
        num_heads=5,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=12,
        dropout_rate=0.0,
        feed_forward_proj="gated-gelu" if gated else "relu",
        tie_word_embeddings=not gated,
        decoder_start_token_id=0,
        pad_token_id=0,
        eos_token_id=EOS,
    )
    kwargs.update(overrides)
    return transformers.T5Config(**kwargs)


def random_hf_t5(variant: str, dtype: torch.dtype = torch.float32, seed: int = 0) -> torch.nn.Module:
    """``T5ForConditionalGeneration``; v1.1 gets an LM head of its own (untied), as Flan-T5 checkpoints do."""
    torch.manual_seed(seed)
    hf = transformers.T5ForConditionalGeneration._from_config(hf_config(variant), attn_implementation="eager")
    if variant == "v1.1":
        hf.lm_head.weight = torch.nn.Parameter(hf.shared.weight.detach().clone())
    redraw_parameters(hf, seed=seed)
    return hf.to(dtype).eval()


def random_hf_encoder(dtype: torch.dtype = torch.float32, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    hf = transformers.T5EncoderModel._from_config(hf_config("v1.1"), attn_implementation="eager")
    redraw_parameters(hf, seed=seed)
    return hf.to(dtype).eval()


def inputs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Encoder ids ``[5, 9]`` with right and left padding; decoder ids ``[5, 6]`` with right padding."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, 101, (5, 9), generator=gen)
    mask = torch.ones(5, 9, dtype=torch.long)
    mask[1, 6:] = 0
    mask[2, 3:] = 0
    mask[3, :2] = 0  # left padding: T5 positions are relative, so either side works
    ids = ids.masked_fill(mask == 0, 0)
    dec = torch.randint(2, 101, (5, 6), generator=gen)
    dec[:, 0] = 0  # decoder_start_token_id
    dec_mask = torch.ones(5, 6, dtype=torch.long)
    dec_mask[0, 4:] = 0
    dec_mask[4, 5:] = 0
    return ids, mask, dec, dec_mask
