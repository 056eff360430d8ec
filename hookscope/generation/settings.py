"""Generation arguments, validated once with messages that say what to do; prompts in, token tensors out."""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

from hookscope.generation.processors import Processing
from hookscope.text import pad_sequences

EarlyStopping = Literal[True, False, "never"]


@dataclass(frozen=True, kw_only=True)
class GenerationSettings:
    """Everything that decides what ``generate`` does, after validation and defaulting."""

    max_new_tokens: int
    processing: Processing
    num_beams: int = 1
    length_penalty: float = 1.0
    early_stopping: EarlyStopping = False
    eos_token_ids: tuple[int, ...] = ()
    pad_token_id: int = 0
    stop_strings: tuple[str, ...] = ()
    seed: int | None = None
    use_cache: bool = True

    @property
    def stops_early(self) -> bool:
        return bool(self.eos_token_ids or self.stop_strings)


def make_settings(
    model: Any, max_new_tokens: int, *, do_sample: bool, temperature: float, top_k: int | None,
    top_p: float | None, min_p: float | None, repetition_penalty: float | None, num_beams: int,
    length_penalty: float, early_stopping: EarlyStopping, eos_token_id: int | Sequence[int] | None,
    stop_strings: str | Sequence[str] | None, seed: int | None, use_cache: bool, pad_token_id: int | None = None,
    freq_penalty: float = 0.0,
) -> GenerationSettings:
    """Check every argument (ValueError naming the argument and the accepted range) and resolve defaults."""
    _check_int("max_new_tokens", max_new_tokens, 1)
    _check_int("num_beams", num_beams, 1)
    if not (isinstance(temperature, (int, float)) and temperature > 0):
        raise ValueError(f"temperature must be > 0, got {temperature!r} (greedy decoding: do_sample=False)")
    if top_k is not None:
        _check_int("top_k", top_k, 0)
    if top_p is not None and not (isinstance(top_p, (int, float)) and 0 < top_p <= 1):
        raise ValueError(f"top_p must be in (0, 1], got {top_p!r}")
    if min_p is not None and not (isinstance(min_p, (int, float)) and 0 <= min_p <= 1):
        raise ValueError(f"min_p must be in [0, 1], got {min_p!r}")
    if repetition_penalty is not None and not (
        isinstance(repetition_penalty, (int, float)) and repetition_penalty > 0
    ):
        raise ValueError(f"repetition_penalty must be > 0 (1.0 = no penalty), got {repetition_penalty!r}")
    if isinstance(freq_penalty, bool) or not isinstance(freq_penalty, (int, float)) or freq_penalty < 0:
        raise ValueError(f"freq_penalty must be a number >= 0 (0 = no penalty), got {freq_penalty!r}")
    if isinstance(length_penalty, bool) or not isinstance(length_penalty, numbers.Real):
        raise ValueError(f"length_penalty must be a number (1.0 = HF's default), got {length_penalty!r}")
    if seed is not None and (isinstance(seed, bool) or not hasattr(seed, "__index__")):
        raise ValueError(f"seed must be an integer or None, got {seed!r}")
    if early_stopping not in (True, False, "never"):
        raise ValueError(f"early_stopping must be True, False or 'never', got {early_stopping!r}")
    if num_beams > 1 and do_sample:
        raise ValueError("beam sampling is not supported: use num_beams > 1 with do_sample=False")
    eos = _eos_ids(model, eos_token_id)
    if pad_token_id is not None:
        _check_int("pad_token_id", pad_token_id, 0)
    stops = (stop_strings,) if isinstance(stop_strings, str) else tuple(stop_strings or ())
    if stops and getattr(model, "tokenizer", None) is None:
        raise ValueError("stop_strings need a tokenizer to decode the generated text; set model.tokenizer")
    if stops and num_beams > 1:
        raise ValueError("stop_strings are not supported with beam search; use eos_token_id")
    if any(not isinstance(s, str) or not s for s in stops):
        raise ValueError(f"stop_strings must be non-empty strings, got {stops!r}")
    processing = Processing(
        do_sample=do_sample, temperature=float(temperature), top_k=top_k or None, top_p=top_p, min_p=min_p,
        repetition_penalty=repetition_penalty, freq_penalty=float(freq_penalty),
    )
    return GenerationSettings(
        max_new_tokens=max_new_tokens, processing=processing, num_beams=num_beams,
        length_penalty=float(length_penalty), early_stopping=early_stopping, eos_token_ids=eos,
        pad_token_id=_pad_id(model, eos, pad_token_id), stop_strings=stops, seed=seed, use_cache=use_cache,
    )


def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _config_ids(model: Any, key: str) -> tuple[int, ...]:
    """``key`` ("eos_token_id" / "pad_token_id": an id or a list) of the HF config the model was converted
    from, which is what HF ``generate`` defaults to; ids outside the vocabulary can never be generated
    or fed, so they are dropped."""
    cfg = getattr(model, "cfg", None)
    value = (getattr(cfg, "hf_config", None) or {}).get(key)
    ids = [value] if isinstance(value, int) else list(value) if isinstance(value, (list, tuple)) else []
    d_vocab = getattr(cfg, "d_vocab", 0)
    return tuple(i for i in ids if isinstance(i, int) and not isinstance(i, bool) and 0 <= i < d_vocab)


def _eos_ids(model: Any, eos_token_id: int | Sequence[int] | None) -> tuple[int, ...]:
    """Explicit ids (one or many; ``[]`` for none), else the model config's EOS ids (what HF ``generate``
    stops at) followed by the tokenizer's EOS when it is another id (chat checkpoints often list their
    end-of-turn token only in the tokenizer or in generation_config.json)."""
    if eos_token_id is None:
        ids = _config_ids(model, "eos_token_id")
        tok = getattr(model, "tokenizer", None)
        tok_eos = getattr(tok, "eos_token_id", None) if tok is not None else None
        return ids if tok_eos is None or int(tok_eos) in ids else (*ids, int(tok_eos))
    ids = (eos_token_id,) if isinstance(eos_token_id, int) else tuple(eos_token_id)
    d_vocab = model.cfg.d_vocab
    for i in ids:
        if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < d_vocab:
            raise ValueError(f"eos_token_id entries must be token ids in [0, {d_vocab}), got {i!r}")
    return ids


def _pad_id(model: Any, eos: tuple[int, ...], pad_token_id: int | None = None) -> int:
    """What finished rows are filled with: ``pad_token_id``, else the model config's pad id (HF
    ``generate``'s default), else the tokenizer's pad token, else the first EOS id (as HF), else the
    tokenizer's EOS, else 0."""
    if pad_token_id is not None:
        return pad_token_id
    from_config = _config_ids(model, "pad_token_id")
    if from_config:
        return from_config[0]
    tok = getattr(model, "tokenizer", None)
    pad = getattr(tok, "pad_token_id", None) if tok is not None else None
    if pad is not None:
        return int(pad)
    if eos:
        return eos[0]
    tok_eos = getattr(tok, "eos_token_id", None) if tok is not None else None
    return 0 if tok_eos is None else int(tok_eos)


# ---------------------------------------------------------------------- prompts
def prepare_prompts(
    model: Any, inputs: Any, attention_mask: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Prompts as left-padded ``tokens [batch, pos]`` and ``mask [batch, pos]`` (None when nothing is padded).

    ``inputs``: a string, a list of strings, token ids ``[pos]`` / ``[batch, pos]``, or a list of token
    sequences of different lengths.
    """
    device = next(model.parameters()).device
    if attention_mask is not None and not isinstance(inputs, torch.Tensor):
        raise ValueError("attention_mask goes with a token tensor (text and token lists are padded for you)")
    if isinstance(inputs, str) or (isinstance(inputs, list) and inputs and isinstance(inputs[0], str)):
        tokens, mask = model.to_tokens(inputs, return_mask=True)
    elif isinstance(inputs, torch.Tensor):
        tokens = inputs[None] if inputs.ndim == 1 else inputs
        mask = attention_mask
        if mask is not None:
            mask = mask[None] if mask.ndim == 1 else mask
            if mask.shape != tokens.shape:
                raise ValueError(f"attention_mask shape {tuple(mask.shape)} != tokens {tuple(tokens.shape)}")
            if bool((mask[:, -1] == 0).any()):
                raise ValueError("generation needs left padding: every row's last position must be real")
    elif isinstance(inputs, (list, tuple)) and inputs:
        seqs = [_token_list(s) for s in inputs]
        tokens, mask = pad_sequences(seqs, _pad_id(model, ()), "left")
    else:
        raise TypeError(
            "inputs must be a string, a list of strings, a token tensor or a list of token sequences, "
            f"got {type(inputs).__name__}"
        )
    if tokens.ndim != 2 or tokens.shape[1] == 0 or tokens.is_floating_point():
        raise ValueError(
            f"prompts must be token ids [batch, pos], pos >= 1; got {tuple(tokens.shape)} {tokens.dtype}"
        )
    tokens = tokens.to(device=device, dtype=torch.long)
    if mask is not None:
        mask = mask.to(device=device, dtype=torch.long)
        if bool(mask.all()):
            mask = None
    return tokens, mask


def _token_list(seq: Any) -> list[int]:
    """One prompt given as a sequence of token ids; floats would be truncated silently, so they are refused."""
    ids = torch.as_tensor(seq)
    if ids.numel() and (ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool):
        raise ValueError(f"a prompt's token ids must be integers, got {ids.dtype} values")
    return ids.reshape(-1).tolist()


def check_context(model: Any, prompt_len: int, max_new_tokens: int) -> None:
    n_ctx = model.cfg.n_ctx
    d_vocab, d_vocab_out = getattr(model.cfg, "d_vocab", None), getattr(model.cfg, "d_vocab_out", None)
    if isinstance(d_vocab, int) and isinstance(d_vocab_out, int) and d_vocab_out > d_vocab:
        raise ValueError(
            f"generate feeds each predicted id back as the next input token, but this model predicts "
            f"{d_vocab_out} ids and embeds only {d_vocab} (d_vocab_out > d_vocab): ids from {d_vocab} up "
            f"cannot be fed back; run the forward yourself and map the predictions to input tokens"
        )
    if prompt_len + max_new_tokens > n_ctx:
        raise ValueError(
            f"prompt ({prompt_len} tokens) + max_new_tokens ({max_new_tokens}) = "
            f"{prompt_len + max_new_tokens} exceeds the model's context of {n_ctx} positions; "
            f"lower max_new_tokens to at most "
            f"{max(n_ctx - prompt_len, 0)}"
        )


def infer_padding_mask(
    model: Any, tokens: torch.Tensor, pad_token_id: int | None, eos_ids: tuple[int, ...]
) -> torch.Tensor | None:
    """HF ``generate``'s rule for a token tensor given without ``attention_mask``: when the pad id
    (``pad_token_id``, else the model config's) occurs in the prompt and is not an EOS id, every
    occurrence is padding. Returns that mask, or None (no padding known). A prompt that ends with the
    pad id (right padding, which HF only warns about) is left unmasked: generation continues from it."""
    pad = pad_token_id
    if pad is None:
        from_config = _config_ids(model, "pad_token_id")
        pad = from_config[0] if from_config else None
    if pad is None or pad in eos_ids or not bool((tokens == pad).any()) or bool((tokens[:, -1] == pad).any()):
        return None
    return (tokens != pad).long()

