"""Exact n-gram baselines of a token corpus: what a model that knows only token frequencies (unigram) or
only the previous token (bigram) would score, from counts (ARENA's "interpret the falling loss").

The unigram loss is the entropy of the token distribution; the bigram loss is the conditional entropy
``H(next | current)`` over the same predictions the model is scored on (every position but the last of
each row). Both are the losses of the best such model fit on the very same data (maximum likelihood), so a
trained transformer passes them on its way down.
"""

from __future__ import annotations

from typing import Any

import torch

from hookscope.training.data import token_rows


def _check_rows(rows: Any) -> torch.Tensor:
    """Token rows as :func:`~hookscope.training.data.token_rows` reads them (a tensor, id lists, a dataset)."""
    try:
        rows = token_rows(rows)
    except (TypeError, ValueError) as err:
        raise ValueError(f"ngram losses need integer token rows [n_rows, pos] with pos >= 2: {err}") from err
    if rows.shape[1] < 2:
        raise ValueError("ngram losses need integer token rows [n_rows, pos] with pos >= 2")
    if int(rows.min()) < 0:
        raise ValueError("token ids must be non-negative")
    return rows.long().cpu()


def _entropy_from_counts(counts: torch.Tensor) -> float:
    """``-sum p log p`` in float64 for counts along the last axis, weighted by each row's share."""
    counts = counts.double()
    total = counts.sum()
    p = counts / total
    logp = torch.where(counts > 0, (counts / counts.sum(-1, keepdim=True)).log(), torch.zeros_like(counts))
    return float(-(p * logp).sum())


def unigram_loss(rows: Any) -> float:
    """Cross-entropy of predicting each next token from the corpus token frequencies (of the targets)."""
    targets = _check_rows(rows)[:, 1:].flatten()
    return _entropy_from_counts(torch.bincount(targets))


def bigram_loss(rows: Any) -> float:
    """Cross-entropy of predicting each next token from the current one with bigram frequencies."""
    rows = _check_rows(rows)
    current, nxt = rows[:, :-1].flatten(), rows[:, 1:].flatten()
    vocab = int(rows.max()) + 1
    pair_ids, counts = torch.unique(current * vocab + nxt, return_counts=True)
    # H(next | current) = -sum_{a,b} p(a,b) log p(b|a); p(b|a) = c(a,b) / c(a,.)
    first = pair_ids // vocab
    per_first = torch.bincount(first, weights=counts.double(), minlength=vocab)
    c = counts.double()
    return float(-(c / c.sum() * (c / per_first[first]).log()).sum())


def ngram_losses(rows: Any) -> dict[str, float]:
    """``{"unigram": ..., "bigram": ...}`` of these token rows, to draw on a loss curve."""
    return {"unigram": unigram_loss(rows), "bigram": bigram_loss(rows)}
