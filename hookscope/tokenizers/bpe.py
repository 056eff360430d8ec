"""GPT-2's byte-level BPE, written from the algorithm: bytes -> printable characters, a regex split into
words, then each word's merges applied in rank order. Equal to Hugging Face's GPT-2 tokenizer on GPT-2's
own ``encoder.json`` + ``vocab.bpe``.
"""

from __future__ import annotations

import itertools
import json
from functools import lru_cache
from pathlib import Path

import regex

from hookscope.tokenizers.base import TokenizerBase

# GPT-2's pre-tokenizer: contractions, letters, numbers, other symbols (each optionally after one space),
# then runs of whitespace (a run before a word leaves its last space to the word).
GPT2_SPLIT = regex.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> character table: printable bytes map to themselves, the rest to chars from U+0100 on,
    so every byte sequence becomes a string of visible characters (and back, losslessly)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def apply_merges(word: str, ranks: dict[tuple[str, str], int]) -> list[str]:
    """Merge the lowest-ranked adjacent pair, all its occurrences left to right, until no pair is ranked."""
    parts = list(word)
    while len(parts) > 1:
        best = min(itertools.pairwise(parts), key=lambda pair: ranks.get(pair, len(ranks)))
        if best not in ranks:
            break
        merged, i = [], 0
        while i < len(parts):
            if i + 1 < len(parts) and (parts[i], parts[i + 1]) == best:
                merged.append(parts[i] + parts[i + 1])
                i += 2
            else:
                merged.append(parts[i])
                i += 1
        parts = merged
    return parts


class ByteLevelBPE(TokenizerBase):
    """Byte-level BPE (GPT-2, GPT-Neo, RoBERTa-style vocabularies).

    Args:
        vocab: token string -> id (``encoder.json``).
        merges: the merge list in priority order (``vocab.bpe`` without its version line).
        special_tokens: tokens matched verbatim in the text before the regex split (``<|endoftext|>``).
        bos_token, eos_token, unk_token, pad_token: special-token roles (GPT-2: all ``<|endoftext|>`` but pad).
    """

    def __init__(
        self, vocab: dict[str, int], merges: list[tuple[str, str]], *, special_tokens: tuple[str, ...] = (),
        bos_token: str | None = None, eos_token: str | None = None, unk_token: str | None = None,
        pad_token: str | None = None,
    ) -> None:
        super().__init__(vocab, {"bos_token": bos_token, "eos_token": eos_token, "unk_token": unk_token,
                                 "pad_token": pad_token})
        self.merges = list(merges)
        self.ranks: dict[tuple[str, str], int] = {}
        for i, pair in enumerate(self.merges):
            self.ranks.setdefault(tuple(pair), i)  # type: ignore[arg-type]
        self.byte_encoder = bytes_to_unicode()
        self.byte_decoder = {c: b for b, c in self.byte_encoder.items()}
        self.set_added_tokens((*self.added_tokens, *special_tokens))
        self._cache: dict[str, list[int]] = {}

    @classmethod
    def from_files(cls, encoder_json: str | Path, vocab_bpe: str | Path) -> ByteLevelBPE:
        """GPT-2's tokenizer from OpenAI's ``encoder.json`` and ``vocab.bpe``; ``<|endoftext|>`` is BOS/EOS."""
        vocab = json.loads(Path(encoder_json).read_text(encoding="utf-8"))
        lines = Path(vocab_bpe).read_text(encoding="utf-8").splitlines()
        if lines and lines[0].startswith("#version"):
            lines = lines[1:]
        merges = [tuple(line.split(" ")) for line in lines if line]
        bad = [m for m in merges if len(m) != 2]
        if bad:
            raise ValueError(f"{vocab_bpe}: a merge line must hold two tokens, got {' '.join(bad[0])!r}")
        eot = "<|endoftext|>" if "<|endoftext|>" in vocab else None
        return cls(vocab, merges, special_tokens=(eot,) if eot else (), bos_token=eot, eos_token=eot,
                   unk_token=eot)

    def _encode_word(self, word: str) -> list[int]:
        ids = self._cache.get(word)
        if ids is None:
            mapped = "".join(self.byte_encoder[b] for b in word.encode("utf-8"))
            pieces = apply_merges(mapped, self.ranks)
            unknown = [p for p in pieces if p not in self.vocab]
            if unknown:
                raise ValueError(f"BPE pieces {unknown[:3]} are not in the vocabulary (merges and vocab disagree)")
            ids = [self.vocab[p] for p in pieces]
            if len(self._cache) < 200_000:
                self._cache[word] = ids
        return ids

    def _encode_text(self, text: str) -> list[int]:
        return [i for word in GPT2_SPLIT.findall(text) for i in self._encode_word(word)]

    def _decode_tokens(self, tokens: list[str]) -> str:
        out, pending = [], bytearray()
        for token in tokens:
            if token in self.added_tokens:
                out.append(pending.decode("utf-8", errors="replace"))
                pending = bytearray()
                out.append(token)
            else:
                pending.extend(self.byte_decoder[c] for c in token)
        out.append(pending.decode("utf-8", errors="replace"))
        return "".join(out)
