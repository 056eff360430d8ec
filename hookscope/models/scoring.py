"""``model.score(contexts, continuations)``: the summed log-probability of each continuation after its
context, for many pairs in one batched forward (MLAB's "was that review good or bad" in one pass)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from hookscope.text import pad_sequences


def _as_list(x: Any, what: str) -> list:
    if isinstance(x, str):
        return [x]
    if isinstance(x, torch.Tensor):
        return [x.tolist()] if x.ndim == 1 else [r.tolist() for r in x]
    if isinstance(x, Sequence) and x and isinstance(x[0], int):
        return [list(x)]
    if isinstance(x, Sequence) and len(x) > 0:
        return list(x)
    raise ValueError(f"{what} must be a string, token ids, or a non-empty list of either")


def _pairs(contexts: list, continuations: list) -> list[tuple[Any, Any]]:
    """Pairwise, or one side broadcast over the other."""
    if len(contexts) == len(continuations):
        return list(zip(contexts, continuations))
    if len(contexts) == 1:
        return [(contexts[0], c) for c in continuations]
    if len(continuations) == 1:
        return [(c, continuations[0]) for c in contexts]
    raise ValueError(f"{len(contexts)} contexts and {len(continuations)} continuations: give as many of each, "
                     "or one of either to pair with all of the other")


class ScoringMixin:
    """Adds :meth:`score` to a causal LM with ``forward(tokens, attention_mask=)`` and the text helpers."""

    def score(
        self, contexts: Any, continuations: Any, *, prepend_bos: bool | None = None, reduce: str = "sum",
    ) -> torch.Tensor:
        """Log-probability of each continuation given its context, batched into one forward.

        Contexts are tokenised as prompts (BOS as the model's tokenizer adds it, or ``prepend_bos``);
        continuations on their own without special tokens (write the leading space: ``" good"``), so the
        split between the two is where you put it. Token ids are taken as they are.

        Args:
            contexts: a string / token ids, or a list of them.
            continuations: the same; pairwise with ``contexts``, or one of either for all of the other.
            reduce: "sum" (log-probability of the whole continuation), "mean" (per token) or "none"
                (a list of per-token log-probabilities, one tensor per pair).

        Returns:
            ``[n_pairs]`` float tensor (a list of tensors for ``reduce="none"``).
        """
        if reduce not in ("sum", "mean", "none"):
            raise ValueError(f"reduce must be 'sum', 'mean' or 'none', got {reduce!r}")
        pairs = _pairs(_as_list(contexts, "contexts"), _as_list(continuations, "continuations"))
        seqs, lengths = [], []
        for ctx, cont in pairs:
            ctx_ids = self._text_to_ids(ctx, prepend_bos) if isinstance(ctx, str) else list(ctx)  # type: ignore[attr-defined]
            cont_ids = self._text_to_ids(cont, False) if isinstance(cont, str) else list(cont)  # type: ignore[attr-defined]
            if not ctx_ids or not cont_ids:
                raise ValueError("each context and continuation needs at least one token")
            seqs.append(ctx_ids + cont_ids)
            lengths.append(len(cont_ids))
        pad = self._pad_id() if getattr(self, "tokenizer", None) is not None else 0  # type: ignore[attr-defined]
        tokens, mask = pad_sequences(seqs, pad, "left")
        device = next(self.parameters()).device  # type: ignore[attr-defined]
        logits = self(tokens.to(device), attention_mask=mask.to(device))  # type: ignore[operator]
        logits = logits[:, :-1] if logits.dtype == torch.float64 else logits[:, :-1].float()
        logprobs = logits.log_softmax(-1).gather(-1, tokens[:, 1:, None].to(device))[..., 0]  # [batch, pos - 1]
        per_pair = [logprobs[i, -n:] for i, n in enumerate(lengths)]  # [n] each: the continuation's tokens
        if reduce == "none":
            return per_pair  # type: ignore[return-value]
        return torch.stack([p.sum() if reduce == "sum" else p.mean() for p in per_pair])
