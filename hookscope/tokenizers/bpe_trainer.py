"""Train a byte-level BPE vocabulary on a corpus (GPT-2's scheme: the 256 byte symbols, then merges).

Each step merges the most frequent adjacent pair of symbols over all words of the corpus (ties: the
smallest pair in string order, so training is deterministic). Pair counts are updated incrementally
(only the words holding the merged pair are revisited) with a lazily-invalidated heap.
"""

from __future__ import annotations

import heapq
import itertools
from collections import Counter, defaultdict
from collections.abc import Iterable

import regex

from hookscope.tokenizers.bpe import GPT2_SPLIT, ByteLevelBPE, bytes_to_unicode

Pair = tuple[str, str]


def _merge_word(symbols: tuple[str, ...], pair: Pair) -> tuple[str, ...]:
    out, i = [], 0
    while i < len(symbols):
        if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == pair:
            out.append(symbols[i] + symbols[i + 1])
            i += 2
        else:
            out.append(symbols[i])
            i += 1
    return tuple(out)


def _word_counts(texts: Iterable[str], special_tokens: tuple[str, ...] = ()) -> Counter:
    """Counts of the pre-tokenized words (as byte symbols); special tokens in the text are cut out first, as
    the tokenizer never splits them."""
    table = bytes_to_unicode()
    counts: Counter = Counter()
    specials = regex.compile("|".join(regex.escape(t) for t in special_tokens)) if special_tokens else None
    for text in texts:
        if not isinstance(text, str):
            raise TypeError(f"train_bpe needs texts (strings), got {type(text).__name__}")
        for chunk in specials.split(text) if specials is not None else (text,):
            for word in GPT2_SPLIT.findall(chunk):
                counts["".join(table[b] for b in word.encode("utf-8"))] += 1
    return counts


def learn_merges(word_counts: Counter, n_merges: int, min_frequency: int = 2) -> list[Pair]:
    """The first ``n_merges`` merges (fewer when no pair occurs ``min_frequency`` times)."""
    words = [tuple(w) for w in word_counts]
    freqs = list(word_counts.values())
    pair_counts: Counter = Counter()
    where: dict[Pair, set[int]] = defaultdict(set)
    for i, symbols in enumerate(words):
        for pair in itertools.pairwise(symbols):
            pair_counts[pair] += freqs[i]
            where[pair].add(i)
    heap = [(-c, p) for p, c in pair_counts.items()]
    heapq.heapify(heap)
    merges: list[Pair] = []
    while heap and len(merges) < n_merges:
        neg, pair = heapq.heappop(heap)
        if pair_counts.get(pair, 0) != -neg:
            continue  # stale entry: the count changed since it was pushed
        if -neg < min_frequency:
            break
        merges.append(pair)
        touched: set[Pair] = set()
        for i in sorted(where.pop(pair, ())):
            old = words[i]
            new = _merge_word(old, pair)
            for p in itertools.pairwise(old):
                pair_counts[p] -= freqs[i]
                touched.add(p)
            for p in itertools.pairwise(new):
                pair_counts[p] += freqs[i]
                where[p].add(i)
                touched.add(p)
            words[i] = new
        for p in touched:
            if pair_counts[p] > 0:
                heapq.heappush(heap, (-pair_counts[p], p))
            elif pair_counts[p] <= 0:
                pair_counts.pop(p, None)
    return merges


def train_bpe(
    texts: Iterable[str], vocab_size: int, special_tokens: tuple[str, ...] = ("<|endoftext|>",),
    min_frequency: int = 2,
) -> ByteLevelBPE:
    """A :class:`ByteLevelBPE` with ``vocab_size`` tokens learnt from ``texts``.

    Ids: the 256 byte symbols (in byte order), then one token per merge, then ``special_tokens`` (the first
    is BOS and EOS, as GPT-2's ``<|endoftext|>``). Fewer merges are learnt when the corpus runs out of pairs
    seen ``min_frequency`` times.
    """
    base = 256 + len(special_tokens)
    if vocab_size < base:
        raise ValueError(f"vocab_size must be at least {base} (256 bytes + {len(special_tokens)} special tokens)")
    merges = learn_merges(_word_counts(texts, special_tokens), vocab_size - base, min_frequency)
    tokens = [bytes_to_unicode()[b] for b in range(256)] + [a + b for a, b in merges] + list(special_tokens)
    vocab: dict[str, int] = {}
    for token in tokens:
        vocab.setdefault(token, len(vocab))
    first = special_tokens[0] if special_tokens else None
    return ByteLevelBPE(vocab, merges, special_tokens=special_tokens, bos_token=first, eos_token=first)
