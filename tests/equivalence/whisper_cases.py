"""Random Whisper models for the equivalence tests: every size different, so a swapped axis fails."""

from __future__ import annotations

import torch
import transformers

from tests.helpers import redraw_parameters

N_MELS, D_MODEL, VOCAB = 11, 48, 101
N_AUDIO_CTX, N_TEXT_CTX = 13, 23  # the encoder reads 26 mel frames
N_ENC, N_DEC = 3, 2
START, EOS = 3, 2
SUPPRESS, BEGIN_SUPPRESS = [5, 17, 40], [9, EOS]


def random_hf_whisper(
    dtype: torch.dtype = torch.float32, seed: int = 0, vocab: int = VOCAB, start: int = START, eos: int = EOS
) -> transformers.WhisperForConditionalGeneration:
    """A re-drawn random ``WhisperForConditionalGeneration``: 3 encoder layers (4 heads, MLP 37) and
    2 decoder layers (6 heads, MLP 29); d_model 48, 11 mel bins, vocab 101."""
    cfg = transformers.WhisperConfig(
        vocab_size=vocab,
        num_mel_bins=N_MELS,
        d_model=D_MODEL,
        encoder_layers=N_ENC,
        decoder_layers=N_DEC,
        encoder_attention_heads=4,
        decoder_attention_heads=6,
        encoder_ffn_dim=37,
        decoder_ffn_dim=29,
        max_source_positions=N_AUDIO_CTX,
        max_target_positions=N_TEXT_CTX,
        decoder_start_token_id=start,
        eos_token_id=eos,
        pad_token_id=eos,
        bos_token_id=eos,
        suppress_tokens=SUPPRESS,
        begin_suppress_tokens=BEGIN_SUPPRESS,
    )
    cfg._attn_implementation = "eager"
    torch.manual_seed(seed)
    hf = transformers.WhisperForConditionalGeneration(cfg).eval()
    redraw_parameters(hf, seed=seed)
    return hf.to(dtype)


def inputs(
    batch: int = 5, n_tokens: int = 7, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-mel-like features ``[batch, n_mels, 2 * n_audio_ctx]`` and decoder tokens ``[batch, n_tokens]``."""
    gen = torch.Generator().manual_seed(1)
    feats = torch.randn(batch, N_MELS, 2 * N_AUDIO_CTX, generator=gen).to(dtype)
    tokens = torch.randint(0, VOCAB, (batch, n_tokens), generator=gen)
    tokens[:, 0] = START
    return feats, tokens
