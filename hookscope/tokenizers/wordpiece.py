"""BERT's WordPiece, written from the algorithm: normalise (clean, CJK spacing, accents, lower case), split on
whitespace and punctuation, then greedy longest-match-first pieces with ``##`` continuations. Equal to
Hugging Face's BERT tokenizer (the ``tokenizers`` BertNormalizer + BertPreTokenizer + WordPiece) on BERT
vocabularies.
"""

from __future__ import annotations

import unicodedata
from pathlib import Path

from hookscope.tokenizers.base import TokenizerBase

# HF's table (which the BERT vocabularies are used with) starts the Extension E block at 0x2B920, where
# Google's original BERT code says 0x2B820; we follow HF, so the ids stay equal.
_CJK = ((0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F), (0x2B740, 0x2B81F),
        (0x2B920, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F))


def _is_whitespace(c: str) -> bool:
    return c in " \t\n\r" or unicodedata.category(c) == "Zs"


def _is_control(c: str) -> bool:
    """Control, format, private-use and surrogate characters (dropped); unassigned ones (Cn) are kept, as HF."""
    return c not in "\t\n\r" and unicodedata.category(c) in ("Cc", "Cf", "Co", "Cs")


def _is_punctuation(c: str) -> bool:
    o = ord(c)
    return 33 <= o <= 47 or 58 <= o <= 64 or 91 <= o <= 96 or 123 <= o <= 126 or unicodedata.category(c).startswith("P")


def _is_cjk(c: str) -> bool:
    o = ord(c)
    return any(lo <= o <= hi for lo, hi in _CJK)


def normalize(text: str, lowercase: bool, strip_accents: bool, chinese_chars: bool) -> str:
    """BERT's normaliser, in the ``tokenizers`` order: clean, space out CJK, strip accents, lower case."""
    out = []
    for c in text:
        if c in "\x00\ufffd" or _is_control(c):
            continue
        if _is_whitespace(c):
            out.append(" ")
        elif chinese_chars and _is_cjk(c):
            out.append(f" {c} ")
        else:
            out.append(c)
    text = "".join(out)
    if strip_accents:
        text = "".join(c for c in unicodedata.normalize("NFD", text) if unicodedata.category(c) != "Mn")
    # character by character, as HF: no context rules (a word-final capital sigma becomes σ, not ς)
    return "".join(c.lower() for c in text) if lowercase else text


def pre_tokenize(text: str) -> list[str]:
    """Split on whitespace (dropped) and punctuation (each mark its own word)."""
    words: list[str] = []
    current: list[str] = []
    for c in text:
        if c.isspace() or _is_punctuation(c):
            if current:
                words.append("".join(current))
                current = []
            if not c.isspace():
                words.append(c)
        else:
            current.append(c)
    if current:
        words.append("".join(current))
    return words


class WordPiece(TokenizerBase):
    """BERT's tokenizer: ``encode`` wraps the pieces in ``[CLS] ... [SEP]`` (``add_special_tokens=False``
    leaves them out); ``decode`` joins pieces as HF does (``##`` glued to the previous piece)."""

    def __init__(
        self, vocab: dict[str, int], *, lowercase: bool = True, strip_accents: bool | None = None,
        tokenize_chinese_chars: bool = True, max_chars_per_word: int = 100, unk_token: str = "[UNK]",
        cls_token: str = "[CLS]", sep_token: str = "[SEP]", pad_token: str = "[PAD]", mask_token: str = "[MASK]",
    ) -> None:
        super().__init__(vocab, {"unk_token": unk_token, "cls_token": cls_token, "sep_token": sep_token,
                                 "pad_token": pad_token, "mask_token": mask_token})
        self.lowercase = lowercase
        self.strip_accents = lowercase if strip_accents is None else strip_accents
        self.tokenize_chinese_chars = tokenize_chinese_chars
        self.max_chars_per_word = max_chars_per_word
        self._cache: dict[str, list[int]] = {}

    @classmethod
    def from_vocab(cls, vocab_txt: str | Path, **kwargs: object) -> WordPiece:
        """From BERT's ``vocab.txt`` (one token a line, the line number is the id); ``lowercase=False`` for
        cased vocabularies."""
        lines = Path(vocab_txt).read_text(encoding="utf-8").splitlines()
        vocab = {token: i for i, token in enumerate(lines)}  # a repeated line takes its last id, as HF reads it
        return cls(vocab, **kwargs)  # type: ignore[arg-type]

    @property
    def bos_token_id(self) -> int | None:  # BERT starts with [CLS] and ends with [SEP]
        return self._id(self.cls_token)

    @property
    def eos_token_id(self) -> int | None:
        return self._id(self.sep_token)

    def _word_ids(self, word: str) -> list[int]:
        ids = self._cache.get(word)
        if ids is not None:
            return ids
        unk = [self.vocab[self.unk_token]]  # type: ignore[index]
        if len(word) > self.max_chars_per_word:
            return unk
        ids, start = [], 0
        while start < len(word):
            end = len(word)
            while end > start:
                piece = word[start:end] if start == 0 else "##" + word[start:end]
                if piece in self.vocab:
                    ids.append(self.vocab[piece])
                    break
                end -= 1
            if end == start:  # no piece fits: the whole word is unknown
                ids = unk
                break
            start = end
        if len(self._cache) < 200_000:
            self._cache[word] = ids
        return ids

    def _encode_text(self, text: str) -> list[int]:
        normal = normalize(text, self.lowercase, self.strip_accents, self.tokenize_chinese_chars)
        return [i for word in pre_tokenize(normal) for i in self._word_ids(word)]

    has_segments = True

    def _with_special(self, ids: list[int]) -> list[int]:
        return [self.vocab[self.cls_token], *ids, self.vocab[self.sep_token]]  # type: ignore[index]

    def _with_special_types(self, first: list[int], second: list[int] | None) -> tuple[list[int], list[int]]:
        """``[CLS] a [SEP]`` (segment 0), then ``b [SEP]`` (segment 1) for a pair."""
        ids = self._with_special(first)
        n_first = len(ids)
        if second is not None:
            ids = [*ids, *second, self.vocab[self.sep_token]]  # type: ignore[index]
        return ids, [0] * n_first + [1] * (len(ids) - n_first)

    def _decode_tokens(self, tokens: list[str]) -> str:
        """Join as the ``tokenizers`` WordPiece decoder: ``##`` pieces glue on, others get a space, and each
        piece (with its space) goes through the English clean-up (" ," -> ",", ...) on its own."""
        out = []
        for i, token in enumerate(tokens):
            if i:
                token = token[2:] if token.startswith("##") else " " + token
            out.append(_cleanup(token))
        return "".join(out)


_CLEANUP = ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"), (" 'm", "'m"),
            (" do not", " don't"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re"))


def _cleanup(piece: str) -> str:
    for dirty, clean in _CLEANUP:
        piece = piece.replace(dirty, clean)
    return piece
