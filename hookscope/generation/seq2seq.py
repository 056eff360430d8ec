"""Generation for encoder-decoder models (T5): the encoder runs once, then the shared decoder-only loops.

:class:`DecoderView` presents "the decoder, conditioned on one encoder output" with the call signature
the decoder-only machinery expects (``view(tokens, mask, kv_cache=...) -> logits``), so greedy decoding,
every sampler (:class:`~hookscope.generation.decode.Decoding`) and HF-identical beam search
(:func:`~hookscope.generation.beam.beam_search`) run unchanged. The self-attention keys/values live in
the static :class:`~hookscope.generation.kv_cache.KVCache` those loops allocate; the cross-attention
ones are projected from the encoder output on the first step and reused
(:class:`~hookscope.generation.kv_cache.EncoderDecoderKVCache`).

Hooks attached while generating fire at every decoder step; encoder hooks fire once; the
cross-attention ``hook_k``/``hook_v`` fire on the first step only, when those keys/values are computed.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator, Sequence
from types import SimpleNamespace
from typing import Any

import torch

from hookscope.cache import ActivationCache
from hookscope.generation.beam import beam_search
from hookscope.generation.decode import Decoding
from hookscope.generation.kv_cache import EncoderDecoderKVCache, KVCache
from hookscope.generation.settings import EarlyStopping, make_settings
from hookscope.generation.step_cache import StepRecorder
from hookscope.names import NamesFilter


class DecoderView:
    """An encoder-decoder's decoder over a fixed encoder output, callable like a decoder-only model.

    Args:
        model: a native encoder-decoder (``decode``, ``unembed``, ``_scale_for_head``, ``cfg``).
        encoder_output: ``[rows, enc_pos, d_model]``, one row per decoded sequence (beams repeated).
        encoder_mask: ``[rows, enc_pos]`` (0 at padding) or None.
    """

    def __init__(self, model: Any, encoder_output: torch.Tensor, encoder_mask: torch.Tensor | None) -> None:
        self.model, self.encoder_output, self.encoder_mask = model, encoder_output, encoder_mask
        cfg = model.cfg
        # what KVCache.for_model and the settings read
        self.cfg = SimpleNamespace(
            n_layers=cfg.n_decoder_layers, n_kv_heads=cfg.n_heads, d_head=cfg.d_head, d_vocab=cfg.d_vocab
        )
        self.tokenizer = model.tokenizer
        self._cache: EncoderDecoderKVCache | None = None

    def parameters(self) -> Iterator[torch.nn.Parameter]:
        return self.model.parameters()

    def __call__(
        self, tokens: torch.Tensor, mask: torch.Tensor | None = None, kv_cache: KVCache | None = None
    ) -> torch.Tensor:
        """Logits ``[rows, pos, d_vocab]`` of decoder tokens ``[rows, pos]`` (with a cache: the new ones)."""
        cache = None
        if kv_cache is not None:
            if self._cache is None or self._cache.self_attn is not kv_cache:
                self._cache = EncoderDecoderKVCache(kv_cache)
            cache = self._cache
        x = self.model.decode(tokens, self.encoder_output, self.encoder_mask, mask, cache=cache)
        return self.model.unembed(self.model._scale_for_head(x))


@torch.no_grad()
def generate_seq2seq(
    model: Any,
    input: Any,
    max_new_tokens: int = 20,
    *,
    attention_mask: torch.Tensor | None = None,
    num_beams: int = 1,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    min_p: float | None = None,
    repetition_penalty: float | None = None,
    length_penalty: float = 1.0,
    early_stopping: EarlyStopping = False,
    eos_token_id: int | Sequence[int] | None = None,
    seed: int | None = None,
    use_cache: bool = True,
    return_cache: bool | NamesFilter = False,
) -> torch.Tensor | tuple[torch.Tensor, ActivationCache]:
    """Decoder token ids ``[batch, 1 + generated]`` starting with ``decoder_start_token_id``, as HF returns.

    Args:
        input: encoder token ids ``[batch, pos]``, a string or a list of strings.
        attention_mask: ``[batch, pos]`` for token ids (0 at padding, either side). Unlike HF it is not
            guessed from pad tokens: pass it whenever the input is padded.
        num_beams: 1 for greedy / sampling; more for beam search (``length_penalty``, ``early_stopping``
            with HF's meaning).
        do_sample, temperature, top_k, top_p, min_p, repetition_penalty, seed: as in
            :func:`hookscope.generation.api.generate`.
        eos_token_id: default the model config's EOS ids; ``[]`` never stops early.
        use_cache: False re-runs the whole decoder each step (the encoder still runs once).
        return_cache: True or a names filter: also return an :class:`ActivationCache` of every step
            (greedy / sampling only): the encoder's activations as computed once, the decoder's
            concatenated along positions, equal to one teacher-forced ``run_with_cache(input,
            decoder_input_ids=tokens)`` over the returned tokens.
    """
    if return_cache is not False and num_beams > 1:
        raise ValueError("return_cache is not supported with beam search (beams are reordered every step)")
    cfg = model.cfg
    if eos_token_id is None:
        eos_token_id = list(cfg.eos_token_ids)
    settings = make_settings(
        model, max_new_tokens, do_sample=do_sample, temperature=temperature, top_k=top_k, top_p=top_p,
        min_p=min_p, repetition_penalty=repetition_penalty, num_beams=num_beams,
        length_penalty=length_penalty, early_stopping=early_stopping, eos_token_id=eos_token_id,
        stop_strings=None, seed=seed, use_cache=use_cache,
    )
    settings = dataclasses.replace(settings, pad_token_id=cfg.pad_token_id)
    tokens, mask = model._tokens(input, attention_mask)
    device = next(model.parameters()).device
    tokens = tokens.to(device)
    mask = None if mask is None else mask.to(device)
    start = torch.full((tokens.shape[0], 1), cfg.decoder_start_token_id, dtype=torch.long, device=device)
    if num_beams == 1:
        recorder = step_recorder(model, return_cache)
        with recorder or contextlib.nullcontext():
            encoder_output = model._run_encoder(tokens, mask)  # the encoder runs once
            if recorder is not None:
                recorder.pin()
            run = Decoding(DecoderView(model, encoder_output, mask), start, None, settings, recorder)
            for _ in run:
                pass
        return (run.sequences, recorder.cache()) if recorder is not None else run.sequences
    encoder_output = model._run_encoder(tokens, mask)  # the encoder runs once
    encoder_output = encoder_output.repeat_interleave(num_beams, dim=0)
    mask = None if mask is None else mask.repeat_interleave(num_beams, dim=0)
    # HF fills unfinished tails of shorter beams with `pad_token_id or eos_token_id[0]`: a pad id of 0
    # (T5's) is falsy there, so T5 beams are padded with EOS.
    fill = cfg.pad_token_id or (settings.eos_token_ids[0] if settings.eos_token_ids else cfg.pad_token_id)
    settings = dataclasses.replace(settings, pad_token_id=fill)
    beams = beam_search(DecoderView(model, encoder_output, mask), start, None, settings, all_beams=False)
    return beams.sequences[:, 0]


def step_recorder(model: Any, return_cache: bool | NamesFilter) -> StepRecorder | None:
    """A :class:`StepRecorder` for ``return_cache`` (True: every name; a filter: those), or None."""
    if return_cache is False:
        return None
    return StepRecorder(model, None if return_cache is True else return_cache)  # type: ignore[arg-type]
