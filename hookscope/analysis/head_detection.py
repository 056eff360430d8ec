"""Attention-head detection (TransformerLens's ``detect_head``) and batched induction / previous-token scores.

``detect_head`` compares every head's attention pattern with a detection pattern (a lower-triangular
``[pos, pos]`` matrix, built-in for previous-token, duplicate-token and induction heads) and scores the match
as TransformerLens does:

- ``"mul"``: the fraction of the head's attention that falls where the detection pattern is 1
  (``sum(pattern * detection) / sum(pattern)``, after the excluded entries are zeroed);
- ``"abs"``: ``1 - round(sum|pattern - detection| / pos, 3)`` (1 is a perfect match, -1 a perfect mismatch).

Heads not asked for score -1. Scores are computed for all heads at once from one cached run per sequence.
Works on any model with ``blocks.{i}.attn.hook_pattern`` (native decoders, wrapped models).
"""

from __future__ import annotations

import logging
from typing import Any, Literal

import torch

from hookscope.errors import InputCheckError

logger = logging.getLogger(__name__)

HeadName = Literal["previous_token_head", "duplicate_token_head", "induction_head"]
HEAD_NAMES: tuple[str, ...] = ("previous_token_head", "duplicate_token_head", "induction_head")
ErrorMeasure = Literal["abs", "mul"]


# ---------------------------------------------------------------------------------------------- patterns
def get_previous_token_head_detection_pattern(tokens: torch.Tensor) -> torch.Tensor:
    """``[pos, pos]`` with ones just below the diagonal: each token attends to the one before it."""
    n = tokens.shape[-1]
    return torch.diag(torch.ones(n - 1), -1)


def get_duplicate_token_head_detection_pattern(tokens: torch.Tensor) -> torch.Tensor:
    """``[pos, pos]``: 1 where an earlier token equals the current one (the diagonal excluded)."""
    t = tokens.reshape(-1).cpu()
    same = (t[:, None] == t[None, :]).float()
    return torch.tril(same, diagonal=-1)


def get_induction_head_detection_pattern(tokens: torch.Tensor) -> torch.Tensor:
    """``[pos, pos]``: 1 on the token right after each earlier occurrence of the current token."""
    dup = get_duplicate_token_head_detection_pattern(tokens)
    shifted = torch.zeros_like(dup)
    shifted[:, 1:] = dup[:, :-1]  # attend one position to the right of the duplicate
    return torch.tril(shifted)


_BUILDERS = {
    "previous_token_head": get_previous_token_head_detection_pattern,
    "duplicate_token_head": get_duplicate_token_head_detection_pattern,
    "induction_head": get_induction_head_detection_pattern,
}


# ---------------------------------------------------------------------------------------------- scores
def compute_head_attention_similarity_score(
    attention_pattern: torch.Tensor, detection_pattern: torch.Tensor, *, exclude_bos: bool,
    exclude_current_token: bool, error_measure: ErrorMeasure,
) -> torch.Tensor:
    """Scores of patterns ``[..., pos, pos]`` against ``detection_pattern [pos, pos]`` -> ``[...]``."""
    if attention_pattern.shape[-1] != attention_pattern.shape[-2]:
        raise InputCheckError(f"attention pattern is not square: {tuple(attention_pattern.shape)}")
    detection = detection_pattern.to(attention_pattern.device, attention_pattern.dtype)
    size = attention_pattern.shape[-1]
    if error_measure == "mul":
        p = _excluded(attention_pattern.clone(), exclude_bos, exclude_current_token)
        return (p * detection).sum((-2, -1)) / p.sum((-2, -1))
    diff = (attention_pattern - detection).abs()
    if bool((torch.triu(diff, diagonal=1) > 0).any()):
        raise ValueError("error_measure='abs' compares causal (lower-triangular) patterns; this model's heads attend "
                         "to later positions (use error_measure='mul')")
    diff = _excluded(diff, exclude_bos, exclude_current_token)
    return 1 - torch.round(diff.mean((-2, -1)) * size * 1000) / 1000


def _excluded(p: torch.Tensor, exclude_bos: bool, exclude_current_token: bool) -> torch.Tensor:
    if exclude_bos:
        p[..., :, 0] = 0
    if exclude_current_token:
        p.diagonal(dim1=-2, dim2=-1).zero_()
    return p


def _patterns(model: Any, tokens: torch.Tensor, cache: Any) -> torch.Tensor:
    """``[layer, head, pos, pos]`` for a single sequence (from ``cache`` or one run)."""
    if cache is None:
        with torch.no_grad():
            _, cache = model.run_with_cache(tokens, names_filter=lambda n: n.endswith("attn.hook_pattern"))
    layers = []
    while f"blocks.{len(layers)}.attn.hook_pattern" in cache:
        p = cache[f"blocks.{len(layers)}.attn.hook_pattern"]
        layers.append(p[0] if p.ndim == 4 else p)
    if not layers:
        raise KeyError("detect_head needs 'blocks.{i}.attn.hook_pattern' (in the cache, or from the model)")
    return torch.stack(layers)


def require_decoder_patterns(model: Any, what: str) -> None:
    """Head scores read ``blocks.{i}.attn.hook_pattern`` from a run on token ids alone: say so where a model
    has no such stack (an encoder-decoder such as Whisper or T5 names its layers ``encoder.{i}``/``decoder.{i}``
    and needs a second input)."""
    if "blocks.0.attn.hook_pattern" not in getattr(model, "hook_dict", {}):
        raise InputCheckError(
            f"{what} needs self-attention patterns at 'blocks.{{i}}.attn.hook_pattern' from a run on token ids "
            f"alone; {type(model).__name__} has no 'blocks.0.attn.hook_pattern'. For an encoder-decoder, cache its "
            "layers' patterns (e.g. 'decoder.{i}.attn.hook_pattern') and score them with "
            "compute_head_attention_similarity_score")


def _tokens(model: Any, seq: str | torch.Tensor) -> torch.Tensor:
    if isinstance(seq, torch.Tensor):
        if seq.ndim == 2 and seq.shape[0] != 1:
            raise InputCheckError("pass one sequence at a time (or a list of strings)")
        return seq.reshape(1, -1)
    return model.to_tokens(seq)


def detect_head(
    model: Any,
    seq: str | list[str] | torch.Tensor,
    detection_pattern: torch.Tensor | HeadName,
    heads: list[tuple[int, int]] | dict[int, list[int]] | None = None,
    cache: Any = None,
    *,
    exclude_bos: bool = False,
    exclude_current_token: bool = False,
    error_measure: ErrorMeasure = "mul",
) -> torch.Tensor:
    """How well every head matches ``detection_pattern`` on ``seq``: ``[n_layers, n_heads]`` (-1: not asked).

    Args:
        seq: a string, a list of strings (scores averaged over them) or token ids ``[pos]``.
        detection_pattern: a lower-triangular ``[pos, pos]`` tensor, or one of ``HEAD_NAMES``.
        heads: ``[(layer, head), ...]`` or ``{layer: [heads]}`` to score (default: all).
        cache: a cache of this sequence's patterns (skips the run).
        exclude_bos / exclude_current_token: ignore attention to position 0 / to the token itself.
        error_measure: "mul" or "abs" (see the module docstring).
    """
    if error_measure not in ("mul", "abs"):
        raise InputCheckError(f"error_measure must be 'mul' or 'abs', got {error_measure!r}")
    if cache is None:
        require_decoder_patterns(model, "detect_head")
    if isinstance(detection_pattern, str) and detection_pattern not in _BUILDERS:
        raise InputCheckError(f"detection_pattern must be a tensor or one of {HEAD_NAMES}, got {detection_pattern!r}")
    opts = dict(exclude_bos=exclude_bos, exclude_current_token=exclude_current_token, error_measure=error_measure)
    if isinstance(seq, list):
        if cache is not None:
            raise InputCheckError("a cache goes with a single sequence, not a list")
        return _detect_many(model, seq, detection_pattern, heads, opts)
    tokens = _tokens(model, seq)
    n = tokens.shape[-1]
    n_ctx = getattr(getattr(model, "cfg", None), "n_ctx", None)
    if n < 2 or (n_ctx is not None and n >= n_ctx):
        raise InputCheckError(f"the sequence must have 2 to {n_ctx} tokens, got {n}")
    detection = _BUILDERS[detection_pattern](tokens) if isinstance(detection_pattern, str) else detection_pattern
    if detection.shape != (n, n) or bool((torch.triu(detection, diagonal=1) != 0).any()):
        raise InputCheckError(f"The detection pattern must be a lower triangular matrix of shape ({n}, {n}), "
                         f"got {tuple(detection.shape)}")
    if error_measure == "mul" and not set(detection.unique().tolist()) <= {0.0, 1.0}:
        logger.warning("detection pattern has values other than 0 and 1 with error_measure='mul'")
    patterns = _patterns(model, tokens, cache)  # [layer, head, pos, pos]
    scores = compute_head_attention_similarity_score(
        patterns, detection, exclude_bos=exclude_bos, exclude_current_token=exclude_current_token,
        error_measure=error_measure)
    return _select(scores, heads)


def _detect_many(model: Any, seqs: list[str], detection_pattern: Any, heads: Any, opts: dict) -> torch.Tensor:
    """The mean score over several sequences; sequences of one length share a single batched run."""
    token_lists = [_tokens(model, s) for s in seqs]
    if len({t.shape[-1] for t in token_lists}) != 1:
        return torch.stack([detect_head(model, s, detection_pattern, heads, **opts) for s in seqs]).mean(0)
    with torch.no_grad():
        _, cache = model.run_with_cache(torch.cat(token_lists), names_filter=lambda n: n.endswith("attn.hook_pattern"))
    scores = []
    for i, tokens in enumerate(token_lists):
        one = {name: cache[name][i:i + 1] for name in cache}
        scores.append(detect_head(model, tokens[0], detection_pattern, heads, one, **opts))
    return torch.stack(scores).mean(0)


def _select(scores: torch.Tensor, heads: Any) -> torch.Tensor:
    if heads is None:
        return scores
    pairs = [(layer, h) for layer, hs in heads.items() for h in hs] if isinstance(heads, dict) else list(heads)
    out = -torch.ones_like(scores)
    for layer, h in pairs:
        out[layer, h] = scores[layer, h]
    return out


def repeated_random_tokens(
    d_vocab: int, seq_len: int, batch: int = 8, bos_token_id: int | None = None, seed: int = 0,
    low: int = 0,
) -> torch.Tensor:
    """``[batch, (1 +) 2 * seq_len]``: random tokens in ``[low, d_vocab)`` repeated once (BOS first if given)."""
    gen = torch.Generator().manual_seed(seed)
    half = torch.randint(low, d_vocab, (batch, seq_len), generator=gen)
    tokens = torch.cat([half, half], dim=1)
    if bos_token_id is not None:
        tokens = torch.cat([torch.full((batch, 1), bos_token_id), tokens], dim=1)
    return tokens


def induction_scores(model: Any, tokens: torch.Tensor, seq_len: int) -> dict[str, torch.Tensor]:
    """Induction and previous-token scores ``[n_layers, n_heads]`` of every head from ONE batched run.

    ``tokens`` are repeated random sequences (:func:`repeated_random_tokens`); the last ``2 * seq_len``
    positions are the two copies. The induction score is the mean attention from each second-copy token to
    the token after its first occurrence; the previous-token score the mean attention to the previous token.
    """
    require_decoder_patterns(model, "induction_scores")
    if tokens.ndim != 2 or tokens.shape[1] < 2 * seq_len:
        raise ValueError(f"tokens must be [batch, >= {2 * seq_len}] repeated sequences")
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=lambda n: n.endswith("attn.hook_pattern"))
    layers = []
    while f"blocks.{len(layers)}.attn.hook_pattern" in cache:
        layers.append(cache[f"blocks.{len(layers)}.attn.hook_pattern"])
    p = torch.stack(layers)  # [layer, batch, head, query_pos, key_pos]
    offset = tokens.shape[1] - 2 * seq_len
    dest = torch.arange(offset + seq_len, offset + 2 * seq_len)
    induction = p[..., dest, dest - seq_len + 1].mean((1, -1))  # [layer, head]
    prev = torch.arange(1, tokens.shape[1])
    previous = p[..., prev, prev - 1].mean((1, -1))
    return {"induction": induction, "previous_token": previous}
