"""Whisper decoding through the shared generation machinery, plus what only Whisper needs.

:class:`WhisperDecoderView` presents "Whisper's decoder over one batch of audio" with the call signature
of a native decoder (``view(tokens, mask, kv_cache=...) -> logits``), as T5's
:class:`~hookscope.generation.seq2seq.DecoderView` does, so greedy decoding
(:class:`~hookscope.generation.decode.Decoding`) and HF-identical beam search
(:func:`~hookscope.generation.beam.beam_search`) run unchanged over the static
:class:`~hookscope.generation.kv_cache.KVCache`. The checkpoint's ``suppress_tokens`` and
``begin_suppress_tokens`` become the :class:`~hookscope.generation.processors.Processing` fields of the
same name, applied where and as HF applies them.

The encoder runs once per batch of clips and each decoder layer's cross-attention K/V are projected once
from its output (their ``hook_k``/``hook_v`` fire then); every step feeds only the newest token. Hooks
attached with ``model.hooks()`` fire at every step. Left here: the decoder prompt
(``<|startoftranscript|>`` ...), audio in, text out.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator, Sequence
from types import SimpleNamespace
from typing import Any

import torch

from hookscope.audio import chunks, load_audio, log_mel, prepare_waveform
from hookscope.cache import ActivationCache
from hookscope.generation.beam import beam_search
from hookscope.generation.decode import Decoding
from hookscope.generation.kv_cache import KVCache
from hookscope.generation.seq2seq import step_recorder
from hookscope.generation.settings import EarlyStopping, GenerationSettings, check_context, make_settings
from hookscope.names import NamesFilter


class WhisperDecoderView:
    """Whisper's decoder over fixed cross-attention keys/values, callable like a decoder-only model.

    Args:
        model: a native :class:`~hookscope.models.whisper.Whisper`.
        cross_kv: per decoder layer, ``(k, v)`` each ``[rows, audio_pos, head_index, d_head]``, one row per
            decoded sequence (beams repeated), from ``model.cross_kv(model.encode(features))``.
    """

    def __init__(self, model: Any, cross_kv: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        self.model, self.cross_kv = model, cross_kv
        cfg, attn = model.cfg, model.decoder[0].attn
        # what KVCache.for_model, make_settings and check_context read
        self.cfg = SimpleNamespace(
            n_layers=cfg.n_decoder_layers, n_kv_heads=attn.n_kv_heads, d_head=attn.d_head,
            d_vocab=cfg.d_vocab, n_ctx=cfg.n_text_ctx,
        )
        self.tokenizer = model.tokenizer

    def parameters(self) -> Iterator[torch.nn.Parameter]:
        return self.model.parameters()

    def __call__(
        self, tokens: torch.Tensor, mask: torch.Tensor | None = None, kv_cache: KVCache | None = None
    ) -> torch.Tensor:
        """Logits ``[rows, pos, d_vocab]`` of decoder tokens ``[rows, pos]`` (with a cache: the new ones)."""
        if mask is not None and not bool(mask.all()):
            raise ValueError("Whisper decoder prompts are not padded: every row takes the same prompt")
        if kv_cache is None:
            return self.model.decode(tokens, self.cross_kv)
        layers = [kv_cache.layer(i) for i in range(self.cfg.n_layers)]
        logits = self.model.decode(tokens, self.cross_kv, kv_caches=layers, offset=kv_cache.length)
        kv_cache.advance(tokens.shape[1])
        return logits


def whisper_settings(
    view: WhisperDecoderView, n_prompt: int, max_new_tokens: int, *, num_beams: int = 1,
    length_penalty: float = 1.0, early_stopping: EarlyStopping = False, use_cache: bool = True,
    eos_token_id: int | Sequence[int] | None = None,
) -> GenerationSettings:
    """Validated settings with the checkpoint's EOS (unless given: one id or many), pad and token
    suppression (HF's Whisper defaults)."""
    cfg = view.model.cfg
    if eos_token_id is None:
        eos_token_id = [cfg.eos_token_id]
    settings = make_settings(
        view, max_new_tokens, do_sample=False, temperature=1.0, top_k=None, top_p=None, min_p=None,
        repetition_penalty=None, num_beams=num_beams, length_penalty=length_penalty,
        early_stopping=early_stopping, eos_token_id=eos_token_id, stop_strings=None, seed=None,
        use_cache=use_cache,
    )
    check_context(view, n_prompt, max_new_tokens)
    processing = dataclasses.replace(
        settings.processing, suppress_tokens=cfg.suppress_tokens,
        begin_suppress_tokens=cfg.begin_suppress_tokens, begin_index=n_prompt,
    )
    return dataclasses.replace(settings, processing=processing, pad_token_id=cfg.pad_token_id)


@torch.no_grad()
def generate(
    model: Any,
    features: torch.Tensor,
    prompt: Sequence[int],
    max_new_tokens: int,
    *,
    num_beams: int = 1,
    length_penalty: float = 1.0,
    early_stopping: EarlyStopping = False,
    use_cache: bool = True,
    eos_token_id: int | Sequence[int] | None = None,
    return_cache: bool | NamesFilter = False,
) -> torch.Tensor | tuple[torch.Tensor, ActivationCache]:
    """Tokens ``[batch, len(prompt) + new]`` for log-mel ``features [batch, n_mels, frames]`` (or one clip).

    Greedy (``num_beams=1``; finished rows are padded with the pad id, as HF does) or beam search (the best
    beam per clip, HF ``generate(num_beams=...)``'s sequences; ``length_penalty`` and ``early_stopping``
    with HF's meaning). Decoding stops at the checkpoint's EOS, or at any of ``eos_token_id``.
    ``return_cache`` (greedy only): True or a names filter; also returns an :class:`ActivationCache` of
    every step, equal to one teacher-forced ``run_with_cache(features, tokens)`` over the returned tokens
    (encoder and cross-attention keys/values as computed once, decoder steps joined along positions).
    """
    if return_cache is not False and num_beams > 1:
        raise ValueError("return_cache is not supported with beam search (beams are reordered every step)")
    features = features[None] if features.ndim == 2 else features
    batch, n_prompt = features.shape[0], len(prompt)
    if n_prompt == 0:
        raise ValueError("the decoder prompt needs at least one token (e.g. <|startoftranscript|>)")
    if any(isinstance(i, bool) or not hasattr(i, "__index__") for i in prompt):
        raise TypeError(f"prompt must be a list of integer token ids, got {list(prompt)!r}")
    recorder = step_recorder(model, return_cache)
    with recorder or contextlib.nullcontext():
        cross = model.cross_kv(model.encode(features))  # the encoder runs once
        if recorder is not None:
            recorder.pin()
        if num_beams > 1:
            cross = [(k.repeat_interleave(num_beams, 0), v.repeat_interleave(num_beams, 0)) for k, v in cross]
        view = WhisperDecoderView(model, cross)
        settings = whisper_settings(
            view, n_prompt, max_new_tokens, num_beams=num_beams, length_penalty=length_penalty,
            early_stopping=early_stopping, use_cache=use_cache, eos_token_id=eos_token_id,
        )
        start = torch.tensor(list(prompt), dtype=torch.long, device=cross[0][0].device)[None].repeat(batch, 1)
        if num_beams > 1:
            return beam_search(view, start, None, settings, all_beams=False).sequences[:, 0]
        run = Decoding(view, start, None, settings, recorder)
        for _ in run:
            pass
        return (run.sequences, recorder.cache()) if recorder is not None else run.sequences


def default_prompt(model: Any, language: str = "en", task: str = "transcribe") -> list[int]:
    """``<|startoftranscript|>`` (+ language and task for multilingual models) + ``<|notimestamps|>``."""
    tok = model.tokenizer
    if tok is None:
        raise ValueError("transcribe needs the model's tokenizer (load() attaches it), or pass prompt=[ids]")
    names = ["<|startoftranscript|>"]
    if model.cfg.d_vocab >= 51865:  # multilingual checkpoints (openai-whisper's rule)
        names += [f"<|{language}|>", f"<|{task}|>"]
    names.append("<|notimestamps|>")
    ids = tok.convert_tokens_to_ids(names)
    unknown = [n for n, i in zip(names, ids) if i is None or i == tok.unk_token_id]
    if unknown:
        raise ValueError(f"the tokenizer has no {unknown}; pass prompt=[token ids]")
    return list(ids)


def transcribe(
    model: Any,
    audio: Any,
    *,
    sample_rate: int | None = None,
    num_beams: int = 1,
    max_new_tokens: int | None = None,
    prompt: list[int] | None = None,
    return_cache: bool | NamesFilter = False,
) -> str | tuple[str, ActivationCache]:
    """Text of a recording: a path (read with soundfile) or a waveform with ``sample_rate``.

    ``return_cache``: also return the per-step cache of :func:`generate` (one row per 30-s window).
    """
    if isinstance(audio, (str, bytes)) or hasattr(audio, "__fspath__"):
        wave = load_audio(audio)
    else:
        wave = prepare_waveform(audio, sample_rate)
    prompt = list(prompt) if prompt is not None else default_prompt(model)
    max_new = max_new_tokens or model.cfg.n_text_ctx // 2
    dtype = model.embed.weight.dtype
    features = torch.stack([log_mel(c, model.cfg.n_mels) for c in chunks(wave)]).to(
        model.embed.weight.device, dtype
    )
    rows = generate(model, features, prompt, max_new, num_beams=num_beams, return_cache=return_cache)
    cache = None
    if return_cache is not False:
        rows, cache = rows
    texts = [
        model.tokenizer.decode(r[len(prompt) :].tolist(), skip_special_tokens=True).strip() for r in rows
    ]
    text = " ".join(t for t in texts if t)
    return (text, cache) if cache is not None else text
