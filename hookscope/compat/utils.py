"""``transformer_lens.utils``: the helpers TL code imports, with TL's signatures and return shapes."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from hookscope.analysis.prompt_report import test_prompt
from hookscope.components.activations import gelu_fast, gelu_new
from hookscope.factored_matrix import composition_scores
from hookscope.names import get_act_name
from hookscope.training import data as _data

__all__ = [
    "Slice", "composition_scores", "gelu_fast", "gelu_new", "get_act_name", "get_attention_mask", "get_corner",
    "lm_accuracy", "lm_cross_entropy_loss", "remove_batch_dim", "solu", "test_prompt", "to_numpy",
    "tokenize_and_concatenate",
]


class Slice:
    """TL's ``Slice``: None (everything), an int (drops the axis), ``(start, stop[, step])``, a slice, or
    a list / array / tensor of indices."""

    def __init__(self, input_slice: Any = None) -> None:
        if isinstance(input_slice, tuple):
            self.slice: Any = slice(*input_slice)
            self.mode = "slice"
        elif isinstance(input_slice, (int, np.integer)):
            self.slice, self.mode = int(input_slice), "int"
        elif isinstance(input_slice, slice):
            self.slice, self.mode = input_slice, "slice"
        elif isinstance(input_slice, (list, torch.Tensor, np.ndarray)):
            self.slice, self.mode = to_numpy(input_slice), "array"
        elif input_slice is None:
            self.slice, self.mode = slice(None), "identity"
        else:
            raise ValueError(f"invalid slice input {input_slice!r}")

    def apply(self, tensor: torch.Tensor, dim: int = 0) -> torch.Tensor:
        index: list[Any] = [slice(None)] * tensor.ndim
        index[dim] = torch.as_tensor(self.slice, dtype=torch.long) if self.mode == "array" else self.slice
        return tensor[tuple(index)]

    def indices(self, max_ctx: int | None = None) -> np.ndarray:
        if self.mode == "int":
            return np.array([self.slice], dtype=np.int64)
        if max_ctx is None:
            raise ValueError("max_ctx must be given unless the slice is an int")
        return np.arange(max_ctx, dtype=np.int64)[self.slice]

    @classmethod
    def unwrap(cls, slice_input: Any) -> Slice:
        if isinstance(slice_input, Slice):
            return slice_input
        return cls([slice_input] if isinstance(slice_input, int) else slice_input)

    def __repr__(self) -> str:
        return f"Slice: {self.slice} Mode: {self.mode} "


def to_numpy(tensor: Any) -> np.ndarray:
    """A numpy array of a tensor (detached, on CPU), array, list or number."""
    if isinstance(tensor, np.ndarray):
        return tensor
    if isinstance(tensor, (list, tuple)):
        return np.array(tensor)
    if isinstance(tensor, (torch.Tensor, torch.nn.Parameter)):
        return tensor.detach().cpu().numpy()
    if isinstance(tensor, (int, float, bool, str)):
        return np.array(tensor)
    raise ValueError(f"cannot convert {type(tensor).__name__} to a numpy array")


def remove_batch_dim(tensor: torch.Tensor) -> torch.Tensor:
    """Drop a leading axis of size 1 (other tensors are returned as they are)."""
    return tensor[0] if tensor.shape[0] == 1 else tensor


def lm_cross_entropy_loss(logits: torch.Tensor, tokens: torch.Tensor, attention_mask: torch.Tensor | None = None,
                          per_token: bool = False) -> torch.Tensor:
    """Next-token cross-entropy: mean, or ``[batch, pos - 1]`` with ``per_token``; masked pairs count 0."""
    log_probs = F.log_softmax(logits, dim=-1)
    picked = log_probs[..., :-1, :].gather(-1, tokens[..., 1:, None])[..., 0]  # [batch, pos - 1]
    if attention_mask is not None:
        keep = torch.logical_and(attention_mask[:, :-1], attention_mask[:, 1:])
        picked = picked * keep
        count = keep.sum()
    else:
        count = picked.numel()
    return -picked if per_token else -picked.sum() / count


def lm_accuracy(logits: torch.Tensor, tokens: torch.Tensor, per_token: bool = False) -> torch.Tensor:
    """How often the top prediction at ``t`` is the token at ``t + 1``."""
    hits = logits.argmax(-1)[:, :-1] == tokens[:, 1:]
    return hits if per_token else hits.sum() / hits.numel()


def solu(x: torch.Tensor) -> torch.Tensor:
    """SoLU: ``x * softmax(x)`` over the last axis."""
    return x * F.softmax(x, dim=-1)


def get_corner(tensor: Any, n: int = 3) -> Any:
    """The ``n``-wide corner of every axis (a FactoredMatrix is asked for its own corner)."""
    if hasattr(tensor, "get_corner"):
        return tensor.get_corner(n)
    return tensor[tuple(slice(n) for _ in range(tensor.ndim))]


def get_attention_mask(tokenizer: Any, tokens: torch.Tensor, prepend_bos: bool,
                       padding_side: str | None = None) -> torch.Tensor:
    """1 for real tokens, 0 for padding: trailing pad ids (right padding) or leading ones (left padding);
    with left padding and BOS == PAD, the BOS after the padding counts as real."""
    side = padding_side or getattr(tokenizer, "padding_side", "right")
    mask = torch.ones_like(tokens)
    if tokenizer is None or tokenizer.pad_token_id is None:
        return mask
    real = tokens.ne(tokenizer.pad_token_id).long()
    if side == "right":
        pad = real.flip(-1).cumsum(-1).flip(-1) == 0
        mask[pad] = 0
    else:
        pad = real.cumsum(-1) == 0
        mask[pad] = 0
        if prepend_bos and tokenizer.bos_token_id == tokenizer.pad_token_id:
            # the BOS is the last of the leading pad-id run (it was counted as padding above)
            bos = (pad.sum(-1) - 1).clamp(min=0)
            mask[torch.arange(len(mask)), bos] = 1
    return mask


def tokenize_and_concatenate(dataset: Any, tokenizer: Any, streaming: bool = False, max_length: int = 1024,
                             column_name: str = "text", add_bos_token: bool = True, num_proc: int = 10) -> Any:
    """TL's signature over :func:`hookscope.training.data.tokenize_and_concatenate` (texts joined with EOS,
    packed into ``max_length`` rows; a dataset gets a ``"tokens"`` column). ``streaming`` / ``num_proc`` are
    accepted for TL code and have no effect here (tokenising runs in this process)."""
    return _data.tokenize_and_concatenate(dataset, tokenizer, max_length=max_length, column=column_name,
                                          add_bos_token=add_bos_token)
