"""tokenize_and_concatenate gives TransformerLens's rows where the simple "join everything and cut" reading
differs from it: a corpus shorter than one row is padded to one row, and texts are packed in blocks of 1000
(TransformerLens packs each ``datasets.map`` batch on its own). The expected rows are written out by hand."""

from __future__ import annotations

import pytest
import torch

from hookscope.training import tokenize_and_concatenate
from hookscope.training.data import TEXTS_PER_BLOCK


class _Chars:
    """One id per character; EOS 0, BOS 1, and an optional pad id."""

    eos_token_id, bos_token_id = 0, 1

    def __init__(self, pad: int | None = None) -> None:
        self.pad_token_id = pad

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return [ord(c) for c in text]

    def decode(self, ids: list[int]) -> str:
        return "".join(chr(i) for i in ids)


def test_a_corpus_shorter_than_one_row_becomes_one_row_padded_with_pad_or_else_eos() -> None:
    rows = tokenize_and_concatenate(["ab", "c"], _Chars(pad=5), max_length=8)
    assert rows.tolist() == [[1, 97, 98, 0, 99, 5, 5, 5]]
    rows = tokenize_and_concatenate(["ab", "c"], _Chars(), max_length=8, add_bos_token=False)
    assert rows.tolist() == [[97, 98, 0, 99, 0, 0, 0, 0]]  # no pad token: EOS pads, as TransformerLens
    assert tokenize_and_concatenate([""], _Chars(pad=5), max_length=3).tolist() == [[1, 5, 5]]


def test_a_corpus_of_exactly_one_row_is_not_padded() -> None:
    assert tokenize_and_concatenate(["ab", "c"], _Chars(pad=5), max_length=5).tolist() == [[1, 97, 98, 0, 99]]


def test_texts_are_packed_in_blocks_of_1000_each_with_its_own_ragged_end() -> None:
    assert TEXTS_PER_BLOCK == 1000
    texts = [chr(65 + i % 26) * (1 + i % 3) for i in range(2300)]  # 1, 2 or 3 characters each
    seq = 6
    want = []
    for lo in range(0, len(texts), 1000):
        block = texts[lo:lo + 1000]
        stream = [ord(c) for c in block[0]]
        for text in block[1:]:
            stream += [0] + [ord(c) for c in text]
        want += [[1, *stream[k:k + seq]] for k in range(0, len(stream) - seq + 1, seq)]
    rows = tokenize_and_concatenate(texts, _Chars(), max_length=seq + 1)
    assert rows.tolist() == want
    # the first row of the second block starts with text 1000 (not with the tail of text 999 and an EOS)
    n_block_1 = (sum(len(t) for t in texts[:1000]) + 999) // seq
    assert rows[n_block_1, 1] == ord(texts[1000][0])


def test_a_short_last_block_is_padded_to_one_row() -> None:
    texts = ["abcdefgh"] * 1000 + ["z"]
    rows = tokenize_and_concatenate(texts, _Chars(pad=5), max_length=10)
    assert rows[-1].tolist() == [1, 122, 5, 5, 5, 5, 5, 5, 5, 5]
    assert len(rows) == (9 * 1000 - 1) // 9 + 1


def test_a_dataset_gives_the_rows_of_the_list() -> None:
    datasets = pytest.importorskip("datasets", reason="the datasets package is not installed (optional)")
    texts = [chr(65 + i % 26) * (1 + i % 5) for i in range(1200)]
    packed = tokenize_and_concatenate(datasets.Dataset.from_dict({"t": texts, "other": list(range(1200))}),
                                      _Chars(pad=3), max_length=7, column="t")
    assert packed.column_names == ["tokens"]
    assert torch.equal(torch.stack(list(packed["tokens"])), tokenize_and_concatenate(texts, _Chars(pad=3), 7))


def test_num_proc_packs_contiguous_shards_apart_as_datasets_map_does() -> None:
    texts = ["abcd", "ef", "g", "hijk", "lm", "nop", "q"]  # 7 texts, 3 processes: shards of 3, 2, 2 texts
    rows = tokenize_and_concatenate(texts, _Chars(), max_length=4, num_proc=3, add_bos_token=False)

    def pack(shard: list[str]) -> list[list[int]]:
        stream = [ord(c) for c in shard[0]]
        for text in shard[1:]:
            stream += [0] + [ord(c) for c in text]
        stream += [0] * max(0, 4 - len(stream))  # a shard shorter than a row is padded (EOS: no pad token)
        return [stream[k:k + 4] for k in range(0, len(stream) - 3, 4)]

    assert rows.tolist() == pack(texts[:3]) + pack(texts[3:5]) + pack(texts[5:])
    one_each = tokenize_and_concatenate(texts, _Chars(), max_length=4, num_proc=10, add_bos_token=False)
    assert one_each.tolist() == [r for t in texts for r in pack([t])]  # at most one process per text
    assert torch.equal(tokenize_and_concatenate(texts, _Chars(), 4, num_proc=1),
                       tokenize_and_concatenate(texts, _Chars(), 4))
    with pytest.raises(ValueError, match="num_proc"):
        tokenize_and_concatenate(texts, _Chars(), 4, num_proc=0)


def test_the_compat_signature_defaults_to_transformer_lens_num_proc_of_10() -> None:
    from hookscope.compat import utils

    texts = [chr(97 + i) * (i + 1) for i in range(14)]
    assert torch.equal(utils.tokenize_and_concatenate(texts, _Chars(), max_length=5),
                       tokenize_and_concatenate(texts, _Chars(), 5, num_proc=10))
    assert torch.equal(utils.tokenize_and_concatenate(texts, _Chars(), streaming=True, max_length=5),
                       tokenize_and_concatenate(texts, _Chars(), 5))
