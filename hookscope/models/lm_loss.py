"""Language-model losses and the HF-style output object the decoder returns when given ``labels=``.

The loss is computed as Hugging Face's causal-LM loss is (float32 logits, labels shifted left with an
ignored last position, ``-100`` ignored), so a native model trained by an HF ``Trainer`` or a user's HF loop
sees the same loss and gradients as the HF model it mirrors.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


class LMOutput(dict):
    """``loss`` and ``logits`` readable as attributes and as keys (like ``transformers.ModelOutput``).

    HF's ``Trainer`` reads ``outputs["loss"]``; users read ``outputs.loss``. ``loss`` is None without labels.
    """

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"LMOutput has no field {name!r}; it has {sorted(self)}") from None

    def to_tuple(self) -> tuple:
        return tuple(v for v in self.values() if v is not None)


def shifted_labels(labels: torch.Tensor) -> torch.Tensor:
    """``[batch, pos]`` labels -> the label each position predicts (the next one; the last is ignored)."""
    return F.pad(labels, (0, 1), value=IGNORE_INDEX)[:, 1:]


def causal_lm_loss(
    logits: torch.Tensor, labels: torch.Tensor, per_token: bool = False, num_items: Any = None,
) -> torch.Tensor:
    """Next-token cross-entropy of ``logits [batch, pos, d_vocab]`` against ``labels [batch, pos]``.

    Args:
        logits: the model's logits at every position.
        labels: the input ids (or a copy with ``-100`` where no loss is wanted); position ``t`` is scored
            on ``labels[t + 1]``, as HF's ``ForCausalLMLoss``.
        per_token: return the loss of every prediction ``[batch, pos - 1]`` (0 where ignored) instead of
            the mean over the predictions that count.
        num_items: divide the summed loss by this count instead of this batch's (HF's ``num_items_in_batch``:
            the scored tokens of every micro-batch of an accumulated step, so each token weighs the same).
    """
    if labels.shape != logits.shape[:2]:
        raise ValueError(f"labels have shape {tuple(labels.shape)}; the logits need {tuple(logits.shape[:2])}")
    target = shifted_labels(labels)  # [batch, pos]
    if per_token:
        losses = F.cross_entropy(
            logits.float().transpose(1, 2), target, ignore_index=IGNORE_INDEX, reduction="none"
        )  # [batch, pos]
        return losses[:, :-1]
    if num_items is None:
        return F.cross_entropy(logits.float().flatten(0, 1), target.flatten(), ignore_index=IGNORE_INDEX)
    total = F.cross_entropy(logits.float().flatten(0, 1), target.flatten(), ignore_index=IGNORE_INDEX, reduction="sum")
    return total / (num_items.to(total.device) if isinstance(num_items, torch.Tensor) else num_items)


def next_token_loss(
    logits: torch.Tensor, tokens: torch.Tensor, attention_mask: torch.Tensor | None = None,
    per_token: bool = False,
) -> torch.Tensor:
    """Mean (or ``per_token``) cross-entropy of predicting token ``t+1`` from position ``t``, padding excluded.

    As TransformerLens's ``lm_cross_entropy_loss``: a prediction counts only when both its position and its
    target are real tokens, so the last left-padding position (which sees no token) predicts nothing, and a
    left-padded batch scores exactly its rows alone.
    """
    if attention_mask is None:
        return causal_lm_loss(logits, tokens, per_token)
    real = attention_mask.bool()
    scored = real & F.pad(real[:, :-1], (1, 0), value=False)  # label t is predicted from t - 1: both real
    return causal_lm_loss(logits, tokens.masked_fill(~scored, IGNORE_INDEX), per_token)
