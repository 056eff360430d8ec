"""The CTranslate2 reader: a Whisper written in CTranslate2's v6 layout gives the same logits as the HF
model built from the same tensors; truncated, corrupt or unsupported files fail with messages that say
what is wrong.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers

from hookscope.convert.ctranslate2 import CTranslate2Error, ctranslate2_source, read_ctranslate2
from hookscope.convert.engine import ConversionError
from tests.equivalence.ct2_writer import whisper_variables, write_ctranslate2
from tests.equivalence.whisper_cases import inputs, random_hf_whisper
from tests.helpers import first_divergence

VOCAB = 50261  # large enough for Whisper's default special ids (start 50257, end 50256)


@pytest.fixture(scope="module")
def hf_model() -> transformers.WhisperForConditionalGeneration:
    return random_hf_whisper(vocab=VOCAB, start=50257, eos=50256)


def _write(tmp: Path, hf: torch.nn.Module, dtype: str = "float32", **changes: np.ndarray) -> Path:
    variables = whisper_variables(hf, np.dtype(dtype))
    variables.update(changes)
    return write_ctranslate2(tmp / "model.bin", variables)


@pytest.mark.parametrize("stored", ["float32", "float16"])
def test_logits_equal_hf_built_from_the_same_tensors(
    tmp_path: Path, hf_model: torch.nn.Module, stored: str
) -> None:
    source = ctranslate2_source(_write(tmp_path, hf_model, stored))
    ours = source.build(dtype=torch.float32, device=torch.device("cpu"), progress=False)
    reference = transformers.WhisperForConditionalGeneration(source.hf_config).eval()
    reference.load_state_dict({k: source.get(k).float() for k in source.keys}, strict=False)
    reference.tie_weights()
    for name in reference.state_dict():  # every HF tensor came from the file
        if name != "proj_out.weight":
            assert name in source.keys, name
    if stored == "float32":  # the file holds exactly the HF tensors
        torch.testing.assert_close(
            source.get("model.encoder.layers.1.self_attn.k_proj.weight"),
            hf_model.model.encoder.layers[1].self_attn.k_proj.weight,
        )
    feats, tokens = inputs(batch=3)
    tokens[:, 0] = 50257
    with torch.no_grad():
        ref = reference(input_features=feats, decoder_input_ids=tokens)
        pairs = [
            ("encoder output", ours.encode(feats), ref.encoder_last_hidden_state),
            ("logits", ours(feats, tokens), ref.logits),
        ]
    problem = first_divergence(pairs, 1e-5, 1e-5)
    assert problem is None, f"CTranslate2 ({stored}) vs HF: first divergence at {problem}"


def test_index_reads_shapes_dtypes_and_aliases(tmp_path: Path, hf_model: torch.nn.Module) -> None:
    model = read_ctranslate2(_write(tmp_path, hf_model, "float16"))
    assert model.spec_name == "WhisperSpec" and model.revision == 3
    var = model.variables["encoder/conv1/weight"]
    assert var.dims == (48, 11, 3) and var.dtype == 4
    assert model.aliases == {"decoder/projection/weight": "decoder/embeddings/weight"}
    assert model.tensor("decoder/projection/weight").dtype == torch.float16
    assert model.scalar("decoder/num_heads") == 6


@pytest.mark.parametrize(
    ("cut", "message"),
    [
        (0, "is empty"),
        (3, "truncated.*format version"),
        (10, "truncated.*spec name"),
        (30, "truncated"),
        (-5, "truncated.*alias"),
    ],
)
def test_truncated_file_is_a_clear_error(
    tmp_path: Path, hf_model: torch.nn.Module, cut: int, message: str
) -> None:
    data = _write(tmp_path, hf_model).read_bytes()
    broken = tmp_path / "broken.bin"
    broken.write_bytes(data[:cut])  # a negative cut drops the tail
    with pytest.raises(CTranslate2Error, match=message):
        read_ctranslate2(broken)


def test_truncated_inside_tensor_data_names_the_tensor(tmp_path: Path, hf_model: torch.nn.Module) -> None:
    data = _write(tmp_path, hf_model).read_bytes()
    broken = tmp_path / "broken.bin"
    broken.write_bytes(data[: len(data) // 2])
    with pytest.raises(CTranslate2Error, match=r"truncated: reading the data of '.*' needs bytes"):
        read_ctranslate2(broken)


def test_corrupt_headers_are_clear_errors(tmp_path: Path, hf_model: torch.nn.Module) -> None:
    good = _write(tmp_path, hf_model).read_bytes()
    bad = tmp_path / "bad.bin"
    bad.write_bytes(struct.pack("<I", 5) + good[4:])
    with pytest.raises(CTranslate2Error, match=r"not a CTranslate2 v6 model.*version 5"):
        read_ctranslate2(bad)
    bad.write_bytes(good + b"\0\0\0")
    with pytest.raises(CTranslate2Error, match="unexpected bytes after the last alias"):
        read_ctranslate2(bad)
    first = good.index(b"decoder/activation\0") + len("decoder/activation\0")  # rank byte, then dtype
    bad.write_bytes(good[: first + 1] + b"\x09" + good[first + 2 :])
    with pytest.raises(CTranslate2Error, match=r"'decoder/activation' has unknown dtype code 9"):
        read_ctranslate2(bad)
    bad.write_bytes(good[: first + 2] + struct.pack("<I", 7) + good[first + 6 :])
    with pytest.raises(CTranslate2Error, match=r"'decoder/activation'.*holds 1 bytes, the file says 7"):
        read_ctranslate2(bad)


def test_unsupported_contents_are_clear_errors(tmp_path: Path, hf_model: torch.nn.Module) -> None:
    key_bias = whisper_variables(hf_model, np.dtype("float32"))[
        "decoder/layer_1/attention/linear_1/bias"
    ].copy()
    key_bias[0] = 0.5
    path = _write(tmp_path, hf_model, **{"decoder/layer_1/attention/linear_1/bias": key_bias})
    with pytest.raises(ConversionError, match="non-zero key bias"):
        ctranslate2_source(path)
    path = _write(tmp_path, hf_model, **{"decoder/activation": np.array(1, dtype=np.int8)})
    with pytest.raises(ConversionError, match="decoder/activation=1 is not supported"):
        ctranslate2_source(path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_ctranslate2(tmp_path / "missing.bin")
