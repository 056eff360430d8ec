"""``generate`` and ``generate_stream``: text or tokens in, continuations out, hooks active at every step."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any, Literal

import torch

from hookscope.generation.beam import beam_search
from hookscope.generation.compiled import compiled_step
from hookscope.generation.decode import Decoding
from hookscope.generation.settings import (
    EarlyStopping,
    check_context,
    infer_padding_mask,
    make_settings,
    prepare_prompts,
)
from hookscope.generation.step_cache import StepRecorder
from hookscope.names import NamesFilter

ReturnType = Literal["tokens", "str"]


def generate(
    model: Any,
    inputs: str | list[str] | torch.Tensor | Sequence[Sequence[int]],
    max_new_tokens: int,
    *,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    min_p: float | None = None,
    repetition_penalty: float | None = None,
    freq_penalty: float = 0.0,
    num_beams: int = 1,
    length_penalty: float = 1.0,
    early_stopping: EarlyStopping = False,
    eos_token_id: int | Sequence[int] | None = None,
    pad_token_id: int | None = None,
    stop_strings: str | Sequence[str] | None = None,
    seed: int | None = None,
    use_cache: bool = True,
    return_type: ReturnType = "tokens",
    return_cache: bool | NamesFilter = False,
    return_beams: bool = False,
    attention_mask: torch.Tensor | None = None,
    verbose: bool = False,
    compile: bool = False,
) -> Any:
    """Continue prompts by greedy decoding, sampling or beam search, with the model's hooks active.

    Args:
        inputs: a string, a list of strings, token ids ``[pos]`` / ``[batch, pos]`` (with ``attention_mask``
            when left-padded; without one, pad-id tokens are taken as padding when the pad id is not an
            EOS id, as HF ``generate`` does), or a list of token sequences of different lengths (left-padded
            for you).
        max_new_tokens: tokens to add; prompt + new must fit in the model's context.
        do_sample: sample from the processed distribution instead of taking the most likely token.
        temperature, top_k, top_p, min_p: sampling filters (HF semantics, applied in HF's order).
        repetition_penalty: HF's CTRL penalty on tokens already in the sequence (prompt included).
        freq_penalty: TransformerLens's: subtract ``freq_penalty`` x (count of the token in the sequence so
            far, prompt included) from each logit (after the temperature when sampling; greedy too).
        num_beams, length_penalty, early_stopping: beam search (HF semantics: score = sum of log-probs /
            generated_len ** length_penalty; ``early_stopping`` True, False or "never").
        eos_token_id: one id or several; a row stops at any of them. Default, as HF ``generate``: the
            model config's ``eos_token_id`` (one or several), plus the tokenizer's EOS; ``[]``: none.
        pad_token_id: what finished rows are filled with. Default, as HF: the model config's
            ``pad_token_id``, else the tokenizer's pad token, else the first EOS id.
        stop_strings: a row stops once its generated text contains any of these (kept in the output).
        seed: seeds a private generator: the same seed gives the same samples.
        use_cache: decode with the static KV cache (False: re-run the whole sequence each step).
        return_type: "tokens" (``[batch, pos]``, prompt included, finished rows padded) or "str"
            (a string for a string prompt, else a list; special tokens dropped).
        return_cache: True or a names filter: also return an ActivationCache of every step, concatenated
            along positions, equal to one ``run_with_cache`` over the final sequence.
        return_beams: with beam search, return a :class:`BeamSearchOutput` holding every beam and its score.
        verbose: show a progress bar.
        compile: run the decode steps after the prompt through ``torch.compile`` (greedy, sampling and
            beams with the KV cache; the first call compiles, which takes a while, once per model and shape bucket:
            later calls reuse it). A step runs eagerly while a hook is attached (checked every step) or
            ``return_cache`` records the steps. On CUDA the compiled steps replay CUDA graphs.

    Hooks attached with ``model.hooks(...)`` fire on every forward: the prompt once, then each new
    position (activations ``[batch, 1, ...]`` per step with the cache).

    Returns:
        tokens or strings; ``(output, cache)`` with ``return_cache``.
    """
    s = make_settings(
        model, max_new_tokens, do_sample=do_sample, temperature=temperature, top_k=top_k, top_p=top_p,
        min_p=min_p, repetition_penalty=repetition_penalty, num_beams=num_beams,
        length_penalty=length_penalty, early_stopping=early_stopping, eos_token_id=eos_token_id,
        stop_strings=stop_strings, seed=seed, use_cache=use_cache, pad_token_id=pad_token_id,
        freq_penalty=freq_penalty,
    )
    _check_outputs(model, return_type, return_cache, return_beams, num_beams)
    tokens, mask = prepare_prompts(model, inputs, attention_mask)
    if attention_mask is None and isinstance(inputs, torch.Tensor):
        mask = infer_padding_mask(model, tokens, pad_token_id, s.eos_token_ids)
    check_context(model, tokens.shape[1], max_new_tokens)
    with torch.no_grad():
        if num_beams > 1:
            step = compiled_step(model) if compile and s.use_cache else None
            beams = beam_search(model, tokens, mask, s, all_beams=return_beams, trim_logits=True, step=step)
            if return_beams:
                return beams
            return _format(model, beams.sequences[:, 0], inputs, return_type, mask, None)
        recorder = StepRecorder(model, _filter(return_cache)) if return_cache is not False else None
        with recorder or contextlib.nullcontext():
            step = compiled_step(model) if compile and recorder is None and s.use_cache else None
            run = Decoding(model, tokens, mask, s, recorder, trim_logits=True, step=step)
            for _ in _progress(run, max_new_tokens, verbose):
                pass
    out = _format(model, run.sequences, inputs, return_type, mask, run.ends)
    return (out, recorder.cache()) if recorder is not None else out


def generate_stream(
    model: Any, inputs: Any, max_new_tokens: int, *, attention_mask: torch.Tensor | None = None, **kwargs: Any
) -> Iterator[torch.Tensor]:
    """An iterator over each step's new tokens ``[batch]``, produced as they are chosen (greedy or sampling).

    Takes ``generate``'s sampling and stopping arguments and ``compile`` (not beams or caches). Rows that
    finished yield the pad id. Stop iterating at any time; nothing is left running. Hooks attached between
    two tokens fire from the next step on.
    """
    for bad in ("num_beams", "return_cache", "return_beams", "return_type"):
        if bad in kwargs and kwargs[bad] not in (1, False, "tokens"):
            raise ValueError(f"generate_stream does not take {bad}={kwargs[bad]!r}; use generate() for that")
        kwargs.pop(bad, None)
    kwargs.pop("verbose", None)
    compile = bool(kwargs.pop("compile", False))
    defaults: dict[str, Any] = dict(
        do_sample=False, temperature=1.0, top_k=None, top_p=None, min_p=None, repetition_penalty=None,
        num_beams=1, length_penalty=1.0, early_stopping=False, eos_token_id=None, stop_strings=None,
        seed=None, use_cache=True, pad_token_id=None, freq_penalty=0.0,
    )
    unknown = set(kwargs) - set(defaults)
    if unknown:
        raise TypeError(f"generate_stream got unexpected arguments {sorted(unknown)}")
    s = make_settings(model, max_new_tokens, **{**defaults, **kwargs})
    tokens, mask = prepare_prompts(model, inputs, attention_mask)
    if attention_mask is None and isinstance(inputs, torch.Tensor):
        mask = infer_padding_mask(model, tokens, kwargs.get("pad_token_id"), s.eos_token_ids)
    check_context(model, tokens.shape[1], max_new_tokens)
    step = compiled_step(model) if compile and s.use_cache else None
    return iter(Decoding(model, tokens, mask, s, trim_logits=True, step=step))  # arguments checked now


def _check_outputs(
    model: Any, return_type: str, return_cache: bool | NamesFilter, return_beams: bool, num_beams: int
) -> None:
    if return_type not in ("tokens", "str"):
        raise ValueError(f"return_type must be 'tokens' or 'str', got {return_type!r}")
    if return_type == "str" and getattr(model, "tokenizer", None) is None:
        raise ValueError("return_type='str' needs a tokenizer: set model.tokenizer, or use 'tokens'")
    if return_beams and num_beams == 1:
        raise ValueError("return_beams=True needs beam search (num_beams > 1)")
    if return_cache is not False and num_beams > 1:
        raise ValueError("return_cache is not supported with beam search (beams are reordered every step)")


def _filter(return_cache: bool | NamesFilter) -> NamesFilter:
    return None if return_cache is True else return_cache  # type: ignore[return-value]


def _progress(run: Decoding, total: int, verbose: bool) -> Any:
    if not verbose:
        return run
    from tqdm.auto import tqdm

    return tqdm(run, total=total, desc="generating")


def _format(
    model: Any, seqs: torch.Tensor, inputs: Any, return_type: str, mask: torch.Tensor | None,
    ends: torch.Tensor | None,
) -> Any:
    """Tokens as they are, or text without the padding on either side (and without special tokens)."""
    if return_type == "tokens":
        return seqs
    batch, width = seqs.shape
    starts = [0] * batch if mask is None else (mask.cumsum(dim=1) == 0).sum(dim=1).tolist()  # leading padding
    stops = [width] * batch if ends is None else ends.clamp(max=width).tolist()
    rows = [row[a:b] for row, a, b in zip(seqs.tolist(), starts, stops)]
    texts = model.tokenizer.batch_decode(rows, skip_special_tokens=True)
    return texts[0] if isinstance(inputs, str) else texts
