"""Training data: pack texts into fixed-length token rows, order them reproducibly, build batches.

``tokenize_and_concatenate`` keeps TransformerLens's name and semantics, row for row: the texts are taken in
blocks of 1000 (TransformerLens packs each ``datasets.map`` batch on its own); in a block they are joined with
the EOS token and cut into rows of ``max_length - 1`` tokens (the ragged end is dropped, a block shorter than
one row is padded to one row) and every row starts with BOS.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from hookscope.models.lm_loss import IGNORE_INDEX, shifted_labels

TEXTS_PER_BLOCK = 1000  # the default batch of HF datasets' map(), in which TransformerLens packs the texts


class Tokenizer(Protocol):
    """The minimal tokenizer hookscope's training, generation and models need (HF's tokenizers fit it too)."""

    bos_token_id: int | None
    eos_token_id: int | None

    def encode(self, text: str, add_special_tokens: bool = ...) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


def _texts(data: Any, column: str) -> list[str]:
    if isinstance(data, str):
        raise TypeError("pass a list of texts (or a datasets.Dataset), not a single string")
    if not isinstance(data, (list, tuple)):
        try:
            data = data[column]  # a datasets.Dataset or a dict of columns
        except (KeyError, TypeError, IndexError, ValueError) as err:
            raise TypeError(f"expected a list of texts or a dataset with a {column!r} column, "
                            f"got {type(data).__name__}") from err
    texts = list(data)
    if not texts or not all(isinstance(t, str) for t in texts):
        raise TypeError("expected a non-empty list of strings to tokenize")
    return texts


def _pack_block(ids: list[list[int]], eos: int, pad: int, seq_len: int) -> torch.Tensor:
    """One block of texts -> ``[n_rows, seq_len]``: joined with EOS, the ragged end dropped, padded to one row."""
    stream = [t for i, text_ids in enumerate(ids) for t in ([eos] if i else []) + list(text_ids)]
    if len(stream) < seq_len:  # as TransformerLens: a short block still gives one (padded) row
        stream += [pad] * (seq_len - len(stream))
    n_rows = len(stream) // seq_len
    return torch.tensor(stream[: n_rows * seq_len], dtype=torch.long).view(n_rows, seq_len)


def _shards(n_texts: int, num_proc: int | None) -> list[tuple[int, int]]:
    """The contiguous slices HF datasets' ``map(num_proc=...)`` hands its processes (at most one per text)."""
    n = min(num_proc or 1, n_texts)
    div, mod = divmod(n_texts, n)
    starts = [div * i + min(i, mod) for i in range(n)]
    return [(start, start + div + (i < mod)) for i, start in enumerate(starts)]


def tokenize_and_concatenate(
    data: Any, tokenizer: Tokenizer, max_length: int = 1024, column: str = "text", add_bos_token: bool = True,
    num_proc: int | None = None,
) -> Any:
    """Tokenize texts, join them with EOS and pack them into rows ``[n_rows, max_length]``.

    The rows equal TransformerLens's ``tokenize_and_concatenate`` with the same ``num_proc``: each block of
    1000 texts is packed on its own, and a block with fewer tokens than a row becomes one row padded with the
    pad token (EOS when the tokenizer has none), as there. Unlike TransformerLens the tokenizer is left
    unchanged (no pad token is added to it) and everything runs in this process.

    Args:
        data: a list of texts, or a ``datasets.Dataset`` (or dict of columns) with a ``column`` of texts.
        tokenizer: anything with ``encode(text, add_special_tokens=False)``, ``eos_token_id`` and
            ``bos_token_id`` (hookscope's tokenizers or a transformers tokenizer).
        max_length: tokens per row, BOS included.
        column: the text column of a dataset.
        add_bos_token: start every row with BOS (rows then hold ``max_length - 1`` text tokens).
        num_proc: None (the default: one pass over all texts) or TransformerLens's ``num_proc`` (its default
            is 10), whose ``datasets.map`` cuts the texts into that many contiguous shards packed apart; give it
            to get TransformerLens's rows for the same call.

    Returns:
        a ``torch.long`` tensor ``[n_rows, max_length]`` for a list; for a ``datasets.Dataset`` a new
        dataset with one ``"tokens"`` column in torch format (as TransformerLens returns).
    """
    texts = _texts(data, column)
    eos, bos = tokenizer.eos_token_id, tokenizer.bos_token_id
    if eos is None:
        raise ValueError("the tokenizer has no eos_token_id to separate the texts with")
    if add_bos_token and bos is None:
        raise ValueError("add_bos_token=True but the tokenizer has no bos_token_id")
    seq_len = max_length - 1 if add_bos_token else max_length
    if seq_len <= 0:
        raise ValueError(f"max_length={max_length} leaves no room for text tokens")
    pad = getattr(tokenizer, "pad_token_id", None)
    pad = eos if pad is None else pad
    if num_proc is not None and (not isinstance(num_proc, int) or num_proc < 1):
        raise ValueError(f"num_proc must be None or a positive int, got {num_proc!r}")
    blocks = [
        _pack_block([tokenizer.encode(t, add_special_tokens=False) for t in texts[i:min(i + TEXTS_PER_BLOCK, hi)]],
                    eos, pad, seq_len)
        for lo, hi in _shards(len(texts), num_proc) for i in range(lo, hi, TEXTS_PER_BLOCK)
    ]
    rows = torch.cat(blocks)
    if add_bos_token:
        rows = torch.cat([torch.full((len(rows), 1), bos, dtype=torch.long), rows], dim=1)
    if isinstance(data, (list, tuple)) or type(data).__name__ != "Dataset":
        return rows
    dataset = type(data).from_dict({"tokens": rows.tolist()})
    dataset.set_format(type="torch", columns=["tokens"])
    return dataset


def token_rows(data: Any) -> torch.Tensor:
    """Training data as a ``[n_rows, pos]`` long tensor: a tensor, a list of equal-length id lists, or a
    dataset with a ``"tokens"`` column (what :func:`tokenize_and_concatenate` returns)."""
    if not isinstance(data, torch.Tensor):
        if not isinstance(data, (list, tuple)):
            try:
                data = data["tokens"]
            except (KeyError, TypeError, IndexError, ValueError) as err:
                raise TypeError(f"training data must be token rows (a tensor [rows, pos], a list of id lists or "
                                f"a dataset with a 'tokens' column), got {type(data).__name__}") from err
        try:
            data = torch.as_tensor(data) if isinstance(data, torch.Tensor) else torch.tensor(_as_lists(data))
        except (ValueError, TypeError) as err:
            raise TypeError(f"token rows must all have the same length: {err}") from err
    if data.ndim != 2 or data.is_floating_point() or data.numel() == 0:
        raise ValueError(f"token rows must be a non-empty integer tensor [rows, pos], got {data.dtype} "
                         f"{tuple(data.shape)}")
    return data.long()


def _as_lists(rows: Iterable[Any]) -> list:
    return [r.tolist() if isinstance(r, torch.Tensor) else list(r) for r in rows]


def batch_indices(n_rows: int, step: int, batch_size: int, seed: int) -> torch.Tensor:
    """The rows of optimizer step ``step`` (0-based): epochs of seeded permutations, read in order.

    A pure function of its arguments, so a resumed run (or any process of a DDP run) finds the same batch
    without saving a data-loader state.
    """
    start = step * batch_size
    picked = []
    for k in range(start // n_rows, (start + batch_size - 1) // n_rows + 1):  # the epochs this batch spans
        perm = torch.randperm(n_rows, generator=torch.Generator().manual_seed(seed * 1_000_003 + k))
        lo, hi = max(start - k * n_rows, 0), min(start + batch_size - k * n_rows, n_rows)
        picked.append(perm[lo:hi])
    return torch.cat(picked)


@dataclass(frozen=True, kw_only=True)
class CausalLMCollator:
    """Next-token prediction on packed rows: targets are the rows shifted left (the last position ignored)."""

    def __call__(self, rows: torch.Tensor, generator: torch.Generator) -> dict[str, torch.Tensor]:
        if rows.shape[1] < 2:
            raise ValueError(f"next-token training needs rows of at least 2 tokens, got {rows.shape[1]}")
        return {"input_ids": rows, "targets": shifted_labels(rows)}


@dataclass(frozen=True, kw_only=True)
class MaskedLMCollator:
    """BERT's masked-LM corruption (as HF's ``DataCollatorForLanguageModeling``).

    ``mask_prob`` of the non-special tokens are chosen; of those 80 % become ``mask_token_id``, 10 % a
    random token and 10 % stay. Targets are the original ids at chosen positions, -100 elsewhere.
    """

    mask_token_id: int
    vocab_size: int
    special_token_ids: tuple[int, ...] = ()
    mask_prob: float = 0.15

    def __post_init__(self) -> None:
        if not 0 < self.mask_prob < 1:
            raise ValueError(f"mask_prob must lie in (0, 1), got {self.mask_prob}")
        if not 0 <= self.mask_token_id < self.vocab_size:
            raise ValueError(f"mask_token_id {self.mask_token_id} is outside the vocabulary of {self.vocab_size}")

    @classmethod
    def from_tokenizer(cls, tokenizer: Any, mask_prob: float = 0.15) -> MaskedLMCollator:
        """The mask token, vocabulary size and special tokens (never masked: ``[CLS]``, ``[SEP]``, ``[PAD]``,
        ...) of a tokenizer: hookscope's :class:`~hookscope.tokenizers.WordPiece` or a transformers one."""
        mask = getattr(tokenizer, "mask_token_id", None)
        if mask is None:
            raise ValueError("the tokenizer has no mask token: masked-LM training needs one")
        special = getattr(tokenizer, "all_special_ids", None) or ()
        return cls(mask_token_id=int(mask), vocab_size=len(tokenizer), mask_prob=mask_prob,
                   special_token_ids=tuple(sorted({int(i) for i in special})))

    def __call__(self, rows: torch.Tensor, generator: torch.Generator) -> dict[str, torch.Tensor]:
        special = torch.isin(rows, torch.tensor(self.special_token_ids, dtype=rows.dtype))
        chosen = (torch.rand(rows.shape, generator=generator) < self.mask_prob) & ~special
        draw = torch.rand(rows.shape, generator=generator)
        random_ids = torch.randint(0, self.vocab_size, rows.shape, generator=generator)
        corrupted = torch.where(chosen & (draw < 0.8), self.mask_token_id, rows)
        corrupted = torch.where(chosen & (draw >= 0.8) & (draw < 0.9), random_ids, corrupted)
        return {"input_ids": corrupted, "targets": rows.masked_fill(~chosen, IGNORE_INDEX)}
