"""The small tokenizer surface hookscope's models, generation and training use, shared by its tokenizers.

It is a subset of Hugging Face's tokenizer API (``__call__`` returning ``{"input_ids": ...}``, ``encode``,
``decode``, ``batch_decode`` and the special-token ids), so a hookscope tokenizer plugs in wherever a
transformers tokenizer does: ``load(..., tokenizer=...)``, ``model.tokenizer = ...``, generation, training.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

import regex
import torch


class TokenizerBase(ABC):
    """Vocabulary bookkeeping and the HF-compatible calls; subclasses implement ``_encode_text`` and
    ``_decode_tokens`` (and may wrap the ids in special tokens in ``_with_special``).

    Special tokens written in the text (``"[MASK]"``, ``"<|endoftext|>"``) are never split: as Hugging Face's
    added tokens, they are matched verbatim before normalisation and become their own id.
    """

    def __init__(self, vocab: dict[str, int], special_tokens: dict[str, str | None]) -> None:
        self.vocab = vocab
        self.id_to_token = {i: t for t, i in vocab.items()}
        for role, token in special_tokens.items():  # bos_token, eos_token, unk_token, pad_token, ...
            if token is not None and token not in vocab:
                raise ValueError(f"{role} {token!r} is not in the vocabulary")
            setattr(self, role, token)
        self.special_ids = {vocab[t] for t in special_tokens.values() if t is not None}
        self.set_added_tokens(tuple(t for t in special_tokens.values() if t is not None))

    def set_added_tokens(self, tokens: tuple[str, ...]) -> None:
        """Tokens matched verbatim in the text (longest first) and never split; all must be in the vocabulary."""
        missing = [t for t in tokens if t not in self.vocab]
        if missing:
            raise ValueError(f"special tokens {missing} are not in the vocabulary")
        self.added_tokens = tuple(dict.fromkeys(tokens))
        self.special_ids |= {self.vocab[t] for t in self.added_tokens}
        pattern = "|".join(regex.escape(t) for t in sorted(self.added_tokens, key=len, reverse=True))
        self._added_split = regex.compile(f"({pattern})") if self.added_tokens else None

    bos_token: str | None = None
    eos_token: str | None = None
    unk_token: str | None = None
    pad_token: str | None = None
    cls_token: str | None = None
    sep_token: str | None = None
    mask_token: str | None = None

    def _id(self, token: str | None) -> int | None:
        return None if token is None else self.vocab[token]

    @property
    def bos_token_id(self) -> int | None:
        return self._id(self.bos_token)

    @property
    def eos_token_id(self) -> int | None:
        return self._id(self.eos_token)

    @property
    def unk_token_id(self) -> int | None:
        return self._id(self.unk_token)

    @property
    def pad_token_id(self) -> int | None:
        return self._id(self.pad_token)

    @property
    def mask_token_id(self) -> int | None:
        return self._id(self.mask_token)

    @property
    def all_special_ids(self) -> list[int]:
        """Ids of every special token (HF's name): never split in the text, dropped by ``skip_special_tokens``."""
        return sorted(self.special_ids)

    @property
    def all_special_tokens(self) -> list[str]:
        return [self.id_to_token[i] for i in self.all_special_ids]

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def __len__(self) -> int:
        return len(self.vocab)

    # ------------------------------------------------------------------ subclass hooks
    @abstractmethod
    def _encode_text(self, text: str) -> list[int]:
        """Ids of ``text`` without special tokens."""

    @abstractmethod
    def _decode_tokens(self, tokens: list[str]) -> str:
        """The text of a sequence of token strings."""

    def _with_special(self, ids: list[int]) -> list[int]:
        return ids

    # ------------------------------------------------------------------ public API
    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of ``text`` (with the tokenizer's special tokens around them unless told not to)."""
        if not isinstance(text, str):
            raise TypeError(f"encode takes a string, got {type(text).__name__}")
        if self._added_split is None:
            ids = self._encode_text(text)
        else:  # odd chunks of the split are the special tokens themselves
            chunks = self._added_split.split(text)
            ids = [i for k, chunk in enumerate(chunks)
                   for i in ([self.vocab[chunk]] if k % 2 else self._encode_text(chunk) if chunk else [])]
        return self._with_special(ids) if add_special_tokens else ids

    def __call__(
        self, text: str | Sequence[str], text_pair: str | Sequence[str] | None = None, *,
        add_special_tokens: bool = True, padding: bool | str = False, return_tensors: str | None = None,
        return_attention_mask: bool | None = None, return_token_type_ids: bool | None = None,
    ) -> dict:
        """HF-style encoding of a text (or pair) or a batch of them: ``input_ids`` (lists, or ``"pt"`` tensors),
        ``attention_mask`` and, for tokenizers with segments (BERT) or when asked, ``token_type_ids``.

        ``padding=True`` (or ``"longest"``) pads a batch on ``self.padding_side`` with the pad token.
        """
        if padding not in (False, True, "longest", "do_not_pad"):
            raise ValueError(f"padding must be True/'longest' or False, got {padding!r} (no max_length padding)")
        if return_tensors not in (None, "pt"):
            raise ValueError(f"return_tensors must be None or 'pt', got {return_tensors!r}")
        single = isinstance(text, str)
        texts = [text] if single else list(text)
        pairs = None if text_pair is None else [text_pair] if isinstance(text_pair, str) else list(text_pair)
        if pairs is not None and len(pairs) != len(texts):
            raise ValueError(f"{len(texts)} texts but {len(pairs)} text pairs")
        rows = [self._encode_with_types(t, None if pairs is None else pairs[i], add_special_tokens)
                for i, t in enumerate(texts)]
        out: dict[str, Any] = {"input_ids": [ids for ids, _ in rows]}
        if return_token_type_ids or (return_token_type_ids is None and self.has_segments):
            out["token_type_ids"] = [types for _, types in rows]
        if return_attention_mask is not False:
            out["attention_mask"] = [[1] * len(ids) for ids, _ in rows]
        if padding in (True, "longest"):
            out = self._pad(out)
        if return_tensors == "pt":
            if len({len(ids) for ids in out["input_ids"]}) > 1:
                raise ValueError("the sequences have different lengths: pass padding=True for tensors")
            out = {k: torch.tensor(v, dtype=torch.long) for k, v in out.items()}
        elif single:
            out = {k: v[0] for k, v in out.items()}
        return out

    has_segments = False  # BERT-style token_type_ids by default
    padding_side = "right"

    def _encode_with_types(self, text: str, pair: str | None, add_special_tokens: bool) -> tuple[list, list]:
        first = self.encode(text, add_special_tokens=False)
        second = None if pair is None else self.encode(pair, add_special_tokens=False)
        if add_special_tokens:
            return self._with_special_types(first, second)
        return first + (second or []), [0] * len(first) + [1] * len(second or [])

    def _with_special_types(self, first: list[int], second: list[int] | None) -> tuple[list[int], list[int]]:
        """Ids with special tokens and their segment ids (a pair's second text is segment 1)."""
        ids = self._with_special(first) + ([] if second is None else self._with_special(second))
        n_first = len(self._with_special(first))
        return ids, [0] * n_first + [1] * (len(ids) - n_first)

    def _pad(self, out: dict[str, list]) -> dict[str, list]:
        width = max(len(ids) for ids in out["input_ids"])
        if self.pad_token_id is None and any(len(ids) < width for ids in out["input_ids"]):
            raise ValueError("padding needs a pad token: set tokenizer.pad_token (e.g. to the EOS token)")
        fill = {"input_ids": self.pad_token_id, "attention_mask": 0, "token_type_ids": 0}
        left = self.padding_side == "left"
        return {k: [([fill[k]] * (width - len(r)) + r) if left else (r + [fill[k]] * (width - len(r))) for r in rows]
                for k, rows in out.items()}

    def decode(self, ids: Sequence[int] | Any, skip_special_tokens: bool = False) -> str:
        """The text of ``ids`` (a list or a 1-D tensor)."""
        ids = ids.tolist() if hasattr(ids, "tolist") else list(ids)
        unknown = [i for i in ids if i not in self.id_to_token]
        if unknown:
            raise ValueError(f"ids {unknown[:5]} are outside the vocabulary of {len(self.vocab)}")
        if skip_special_tokens:
            ids = [i for i in ids if i not in self.special_ids]
        return self._decode_tokens([self.id_to_token[i] for i in ids])

    def batch_decode(self, rows: Any, skip_special_tokens: bool = False) -> list[str]:
        return [self.decode(r, skip_special_tokens) for r in rows]

    def convert_ids_to_tokens(self, ids: Sequence[int]) -> list[str]:
        return [self.id_to_token[int(i)] for i in ids]

    def convert_tokens_to_ids(self, tokens: Sequence[str]) -> list[int | None]:
        return [self.vocab.get(t, self.unk_token_id) for t in tokens]
