"""Beam search with length penalty and early stopping, returning what HF ``generate(num_beams=...)`` returns.

The algorithm is HF's vectorised beam search (transformers >= 4.50), re-derived so that sequences and
``sequences_scores`` agree:

* every step, each row's ``num_beams * d_vocab`` continuations are scored by accumulated log-probability;
  the top ``K = max(2, 1 + n_eos) * num_beams`` are kept (enough that ``num_beams`` stay unfinished);
* continuations that end (an EOS id, or the maximum length) leave the running set; those among the top
  ``num_beams`` compete for the finished set with score ``sum_logprobs / generated_len ** length_penalty``;
* the best ``num_beams`` unfinished continuations run on (the KV cache rows follow their parent beams);
* a row stops when no running beam can still beat its worst finished one (HF's heuristic, controlled by
  ``early_stopping``: True stops once ``num_beams`` are finished, ``"never"`` assumes the best case length).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from hookscope.generation.kv_cache import KVCache
from hookscope.generation.lean import lean_step
from hookscope.generation.processors import process_logits
from hookscope.generation.settings import GenerationSettings

NEG = -1.0e9  # HF's "impossible" score offset


@dataclass
class BeamSearchOutput:
    """Finished beams, best first.

    Attributes:
        sequences: ``[batch, num_beams, pos]`` prompt + generated tokens (shorter beams padded).
        scores: ``[batch, num_beams]`` length-penalised log-probabilities (HF ``sequences_scores``).
    """

    sequences: torch.Tensor
    scores: torch.Tensor


def _gather(t: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``t [batch, beams, ...]`` rows picked by ``index [batch, k]`` along the beam axis."""
    while index.ndim < t.ndim:
        index = index.unsqueeze(-1)
    return torch.take_along_dim(t, index, dim=1)


@dataclass
class _Beams:
    """Running and finished beams of every batch row."""

    running: torch.Tensor  # [batch, beams, total] tokens
    running_scores: torch.Tensor  # [batch, beams] accumulated log-probs
    done: torch.Tensor  # [batch, beams, total] finished sequences
    done_scores: torch.Tensor  # [batch, beams] length-penalised
    done_len: torch.Tensor  # [batch, beams] generated tokens in each finished sequence
    is_done: torch.Tensor  # [batch, beams] bool: that finished slot is filled
    improvable: torch.Tensor  # [batch, 1] bool: a running beam may still beat the finished ones


def beam_search(
    model: Any, tokens: torch.Tensor, mask: torch.Tensor | None, s: GenerationSettings, *, all_beams: bool,
    trim_logits: bool = False, step: Any = None,
) -> BeamSearchOutput:
    """Beam search from left-padded prompts ``tokens [batch, prompt_pos]``.

    ``trim_logits``: the model's forward takes ``logits_to_keep=1`` (see :class:`~.decode.Decoding`).
    ``step``: a compiled decode step for the cached steps after the prompt (as in ``Decoding``), or None
    (then the lean step while no hook is attached, the model's forward otherwise).

    Returns all ``num_beams`` finished beams per row when ``all_beams``, else only the best
    (``[batch, 1, pos]``), cropped like HF to the longest returned sequence.
    """
    nb, device = s.num_beams, tokens.device
    batch, prompt_len = tokens.shape
    total = prompt_len + s.max_new_tokens
    k = max(2, 1 + len(s.eos_token_ids)) * nb
    top_slots = torch.arange(k, device=device) < nb  # [k]
    eos = torch.tensor(s.eos_token_ids, device=device, dtype=torch.long)
    flat_mask = None
    if mask is not None:
        flat_mask = torch.ones((batch * nb, total), dtype=torch.long, device=device)
        flat_mask[:, :prompt_len] = mask.repeat_interleave(nb, dim=0)
    # HF fills shorter beams with `pad_token_id or eos_token_id[0]`: a pad id of 0 gives way to EOS there
    fill = s.pad_token_id or (s.eos_token_ids[0] if s.eos_token_ids else s.pad_token_id)
    running = torch.full((batch, nb, total), fill, dtype=torch.long, device=device)
    running[:, :, :prompt_len] = tokens[:, None]
    scores = torch.zeros((batch, nb), device=device)
    scores[:, 1:] = NEG  # only beam 0 expands at first, so the beams do not start identical
    st = _Beams(
        running=running, running_scores=scores, done=running.clone(),
        done_scores=torch.full((batch, nb), NEG, device=device),
        done_len=torch.zeros((batch, nb), dtype=torch.long, device=device),
        is_done=torch.zeros((batch, nb), dtype=torch.bool, device=device),
        improvable=torch.ones((batch, 1), dtype=torch.bool, device=device),
    )
    cache = KVCache.for_model(model, batch * nb, total) if s.use_cache else None
    row_offset = torch.arange(batch, device=device)[:, None] * nb
    extra: dict[str, int] = {"logits_to_keep": 1} if trim_logits else {}
    lean = lean_step(model) if cache is not None and step is None else None
    for cur in range(prompt_len, total):
        flat = st.running[:, :, :cur].reshape(batch * nb, cur)
        m = None if flat_mask is None else flat_mask[:, :cur]
        if cache is None:
            logits = model(flat, m, **extra)[:, -1]
        elif step is not None and cache.length > 0:
            logits = step(flat[:, cache.length :], m, cache)[:, -1]
        elif lean is not None and cache.length > 0 and lean.usable():
            logits = lean(flat[:, cache.length :], m, cache)[:, -1]
        else:
            logits = model(flat[:, cache.length :], m, kv_cache=cache, **extra)[:, -1]
        log_probs = torch.log_softmax(logits.float(), dim=-1)
        log_probs = process_logits(log_probs, s.processing, flat, m)
        d_vocab = log_probs.shape[-1]
        acc = (log_probs.view(batch, nb, d_vocab) + st.running_scores[:, :, None]).view(batch, nb * d_vocab)
        top_scores, top_index = torch.topk(acc, k)  # [batch, k]
        parent, token = top_index // d_vocab, top_index % d_vocab
        cand = _gather(st.running, parent)  # [batch, k, total]
        cand[:, :, cur] = token
        ends = torch.isin(token, eos) | (cur + 1 >= total)  # [batch, k]
        parents = _advance_running(st, cand, top_scores, ends, parent, nb)
        _update_done(st, cand, top_scores, ends & top_slots, cur + 1 - prompt_len, s)
        if cache is not None:
            cache.reorder((parents + row_offset).flatten())
        _update_improvable(st, cur + 1 - prompt_len, s)
        can_improve = bool(st.improvable.any())
        all_done = bool(st.is_done.all()) and s.early_stopping is True
        if not can_improve or all_done or bool(ends.all()):
            break
    n_return = nb if all_beams else 1
    longest = int(st.done_len[:, :n_return].max())
    return BeamSearchOutput(st.done[:, :n_return, : prompt_len + longest], st.done_scores[:, :n_return])


def _advance_running(
    st: _Beams, cand: torch.Tensor, top_scores: torch.Tensor, ends: torch.Tensor, parent: torch.Tensor,
    nb: int,
) -> torch.Tensor:
    """Keep the best ``nb`` continuations that did not end; returns their parent beams ``[batch, nb]``."""
    live_scores = top_scores + ends.to(torch.float32) * NEG
    keep = torch.topk(live_scores, k=nb).indices
    st.running = _gather(cand, keep)
    st.running_scores = _gather(live_scores, keep)
    return _gather(parent, keep)


def _update_done(
    st: _Beams, cand: torch.Tensor, top_scores: torch.Tensor, just_done: torch.Tensor, gen_len: int,
    s: GenerationSettings,
) -> None:
    """Merge continuations that just ended (among the top ``num_beams``) into the finished set."""
    scored = top_scores / (gen_len**s.length_penalty)
    full = st.is_done.all(dim=-1, keepdim=True) & (s.early_stopping is True)
    scored = scored + full.to(torch.float32) * NEG
    scored = scored + (~st.improvable).to(torch.float32) * NEG
    scored = scored + (~just_done) * NEG
    scores = torch.cat((st.done_scores, scored), dim=1)
    best = torch.topk(scores, k=st.done_scores.shape[1]).indices
    st.done = _gather(torch.cat((st.done, cand), dim=1), best)
    st.done_scores = _gather(scores, best)
    lengths = torch.cat((st.done_len, torch.full_like(top_scores, gen_len, dtype=torch.long)), dim=1)
    st.done_len = _gather(lengths, best)
    st.is_done = _gather(torch.cat((st.is_done, just_done), dim=1), best)


def _update_improvable(st: _Beams, gen_len: int, s: GenerationSettings) -> None:
    """Can the best running beam still beat the worst finished one (HF's early-stop heuristic)?"""
    if s.early_stopping == "never" and s.length_penalty > 0.0:
        best_len = s.max_new_tokens  # the longest a running beam can become
    else:
        best_len = gen_len
    best_running = st.running_scores[:, :1] / (best_len**s.length_penalty)
    worst_done = torch.where(st.is_done, st.done_scores.min(dim=1, keepdim=True).values, NEG)
    st.improvable = st.improvable & (best_running > worst_done).any(dim=-1, keepdim=True)
