"""Reader for CTranslate2 v6 ``model.bin`` files, and a Whisper source built from one.

The binary layout (little-endian): ``u32 version`` (6), ``str spec_name``, ``u32 revision``, ``u32 n_vars``;
then per variable ``str name``, ``u8 rank``, ``u32 dims[rank]``, ``u8 dtype`` (0 f32, 1 i8, 2 i16, 3 i32,
4 f16, 5 bf16), ``u32 nbytes`` and the data; then ``u32 n_aliases`` and ``(str alias, str target)`` pairs.
A ``str`` is a ``u16`` length that counts a trailing NUL, the bytes, the NUL.

Every read is bounds-checked so a truncated or corrupt file fails with a message that says where, instead
of a numpy or struct error. CTranslate2 itself is not needed.
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hookscope.convert.engine import ConversionError, Rule, RuleSet, convert_tensors
from hookscope.errors import SourceNotFoundError

SUPPORTED_VERSION = 6
_DTYPES: dict[int, tuple[str, np.dtype]] = {
    0: ("float32", np.dtype("<f4")),
    1: ("int8", np.dtype("i1")),
    2: ("int16", np.dtype("<i2")),
    3: ("int32", np.dtype("<i4")),
    4: ("float16", np.dtype("<f2")),
    5: ("bfloat16", np.dtype("<u2")),
}


class CTranslate2Error(ConversionError):
    """The file is not a readable CTranslate2 model (truncated, corrupt, or an unsupported version)."""


@dataclass(frozen=True)
class Variable:
    """Where one tensor lies in the file."""

    dims: tuple[int, ...]
    dtype: int
    offset: int
    nbytes: int


class _Cursor:
    """Bounds-checked little-endian reads over the file's bytes."""

    def __init__(self, data: Any, path: Path) -> None:
        self.data, self.pos, self.path = data, 0, path

    def take(self, n: int, what: str) -> bytes:
        end = self.pos + n
        if end > len(self.data):
            raise CTranslate2Error(
                f"{self.path} is truncated: reading {what} needs bytes {self.pos}..{end} but the file has "
                f"{len(self.data)} bytes. Re-install or re-download the model."
            )
        out = bytes(self.data[self.pos : end])
        self.pos = end
        return out

    def unpack(self, fmt: str, what: str) -> int:
        return struct.unpack("<" + fmt, self.take(struct.calcsize(fmt), what))[0]

    def string(self, what: str) -> str:
        n = self.unpack("H", f"the length of {what}")
        raw = self.take(n, what)
        if n == 0 or raw[-1] != 0:
            raise CTranslate2Error(
                f"{self.path} is corrupt: {what} at byte {self.pos - n} is not NUL-terminated"
            )
        try:
            return raw[:-1].decode("utf-8")
        except UnicodeDecodeError:
            raise CTranslate2Error(
                f"{self.path} is corrupt: {what} at byte {self.pos - n} is not text"
            ) from None


@dataclass
class CTranslate2Model:
    """The parsed index of a ``model.bin``: variables are read from the memory-mapped file on demand."""

    path: Path
    spec_name: str
    revision: int
    variables: dict[str, Variable]
    aliases: dict[str, str]
    _data: Any

    def tensor(self, name: str) -> torch.Tensor:
        """One variable as a torch tensor in its stored dtype (bfloat16 reinterpreted from its bits)."""
        name = self.aliases.get(name, name)
        if name not in self.variables:
            raise CTranslate2Error(f"{self.path} has no variable {name!r}")
        var = self.variables[name]
        kind, np_dtype = _DTYPES[var.dtype]
        arr = np.frombuffer(
            self._data, dtype=np_dtype, count=var.nbytes // np_dtype.itemsize, offset=var.offset
        )
        t = torch.from_numpy(arr.copy()).reshape(var.dims)
        return t.view(torch.bfloat16) if kind == "bfloat16" else t

    def scalar(self, name: str) -> int:
        return int(self.tensor(name).reshape(-1)[0])


def read_ctranslate2(path: str | Path) -> CTranslate2Model:
    """Parse the header and variable index of a CTranslate2 ``model.bin`` (the data stays on disk)."""
    path = Path(path)
    if not path.is_file():
        raise SourceNotFoundError(f"CTranslate2 model file {path} does not exist")
    if path.stat().st_size == 0:
        raise CTranslate2Error(f"{path} is empty (0 bytes); re-install or re-download the model")
    data = np.memmap(path, dtype=np.uint8, mode="r")
    cur = _Cursor(data, path)
    version = cur.unpack("I", "the format version")
    if version != SUPPORTED_VERSION:
        raise CTranslate2Error(
            f"{path} is not a CTranslate2 v{SUPPORTED_VERSION} model: its header says version {version} "
            "(hookscope reads v6, the format of CTranslate2 >= 3; a different or corrupt file?)"
        )
    spec_name = cur.string("the spec name")
    revision = cur.unpack("I", "the spec revision")
    n_vars = cur.unpack("I", "the variable count")
    variables: dict[str, Variable] = {}
    for index in range(n_vars):
        name, var = _read_variable(cur, index, n_vars)
        variables[name] = var
    aliases: dict[str, str] = {}
    for index in range(cur.unpack("I", "the alias count")):
        alias = cur.string(f"alias {index}")
        aliases[alias] = cur.string(f"the target of alias {alias!r}")
        if aliases[alias] not in variables:
            raise CTranslate2Error(f"{path} is corrupt: alias {alias!r} points to unknown {aliases[alias]!r}")
    if cur.pos != len(data):
        raise CTranslate2Error(
            f"{path} is corrupt: {len(data) - cur.pos} unexpected bytes after the last alias (byte {cur.pos})"
        )
    return CTranslate2Model(path, spec_name, revision, variables, aliases, data)


def _read_variable(cur: _Cursor, index: int, total: int) -> tuple[str, Variable]:
    name = cur.string(f"the name of variable {index} of {total}")
    rank = cur.unpack("B", f"the rank of {name!r}")
    if rank > 8:
        raise CTranslate2Error(f"{cur.path} is corrupt: variable {name!r} claims rank {rank}")
    dims = tuple(cur.unpack("I", f"dimension {d} of {name!r}") for d in range(rank))
    dtype = cur.unpack("B", f"the dtype of {name!r}")
    if dtype not in _DTYPES:
        raise CTranslate2Error(f"{cur.path} is corrupt: variable {name!r} has unknown dtype code {dtype}")
    nbytes = cur.unpack("I", f"the byte count of {name!r}")
    expected = int(np.prod(dims, dtype=np.int64)) * _DTYPES[dtype][1].itemsize
    if nbytes != expected:
        raise CTranslate2Error(
            f"{cur.path} is corrupt: variable {name!r} {dims} {_DTYPES[dtype][0]} holds {expected} bytes, "
            f"the file says {nbytes}"
        )
    offset = cur.pos
    cur.take(nbytes, f"the data of {name!r}")
    return name, Variable(dims, dtype, offset, nbytes)


# ---------------------------------------------------------------------- Whisper
# Flags CTranslate2 stores for a Whisper spec and the only values HF's Whisper computes.
_WHISPER_FLAGS = {
    "decoder/activation": 3,
    "decoder/alibi": 0,
    "decoder/pre_norm": 1,
    "decoder/scale_embeddings": 0,
    "decoder/start_from_zero_embedding": 0,
}
_METADATA = (
    r"^decoder/(activation|alibi|alignment_heads|alignment_layer|pre_norm|scale_embeddings|"
    r"start_from_zero_embedding|num_heads)$",
    r"^encoder/num_heads$",
)


def _layers(model: CTranslate2Model, stack: str) -> int:
    found = (re.match(rf"^{stack}/layer_(\d+)/", n) for n in model.variables)
    idx = {int(m.group(1)) for m in found if m}
    if idx != set(range(len(idx))):
        raise CTranslate2Error(f"{model.path}: {stack} layers are not numbered 0..n-1: {sorted(idx)}")
    return len(idx)


def whisper_hf_config(model: CTranslate2Model, tokens: dict[str, Any]) -> Any:
    """The transformers ``WhisperConfig`` a CTranslate2 Whisper spec describes (shapes from tensors)."""
    import transformers

    if model.spec_name != "WhisperSpec":
        raise CTranslate2Error(
            f"{model.path} holds a {model.spec_name!r}; hookscope reads CTranslate2 WhisperSpec"
        )
    for flag, wanted in _WHISPER_FLAGS.items():
        if flag in model.variables and model.scalar(flag) != wanted:
            raise ConversionError(
                f"{model.path}: {flag}={model.scalar(flag)} is not supported (Whisper has {wanted})"
            )
    v = model.variables
    d_model, n_mels, _ = v["encoder/conv1/weight"].dims
    return transformers.WhisperConfig(
        vocab_size=v["decoder/embeddings/weight"].dims[0],
        num_mel_bins=n_mels,
        d_model=d_model,
        encoder_layers=_layers(model, "encoder"),
        decoder_layers=_layers(model, "decoder"),
        encoder_attention_heads=model.scalar("encoder/num_heads"),
        decoder_attention_heads=model.scalar("decoder/num_heads"),
        encoder_ffn_dim=v["encoder/layer_0/ffn/linear_0/weight"].dims[0],
        decoder_ffn_dim=v["decoder/layer_0/ffn/linear_0/weight"].dims[0],
        max_source_positions=v["encoder/position_encodings/encodings"].dims[0],
        max_target_positions=v["decoder/position_encodings/encodings"].dims[0],
        activation_function="gelu",
        **tokens,
    )


def _fused_with_zero_k(q_rows: int) -> Any:
    """CTranslate2 fuses [q; k; v] (or [k; v]) biases and stores Whisper's absent K bias as zeros."""

    def fwd(ts: list[torch.Tensor]) -> list[torch.Tensor]:
        parts = list(ts[0].split([q_rows, *([(ts[0].shape[0] - q_rows) // 2] * 2)]))
        if q_rows == 0:
            parts = parts[1:]
        k = parts[-2]
        if bool(k.any()):
            raise ConversionError("a non-zero key bias in a Whisper attention: Whisper's k_proj has no bias")
        return [p.contiguous() for i, p in enumerate(parts) if i != len(parts) - 2]

    return fwd


def whisper_ct2_rules(n_enc: int, n_dec: int, d: int) -> RuleSet:
    """CTranslate2 Whisper names -> HF ``WhisperForConditionalGeneration`` names."""

    def norm(src: str, dst: str) -> list[Rule]:
        return [Rule((f"{src}/gamma",), (f"{dst}.weight",)), Rule((f"{src}/beta",), (f"{dst}.bias",))]

    def linear(src: str, dst: str) -> list[Rule]:
        return [Rule((f"{src}/weight",), (f"{dst}.weight",)), Rule((f"{src}/bias",), (f"{dst}.bias",))]

    def self_attn(src: str, dst: str) -> list[Rule]:
        return [
            Rule(
                (f"{src}/linear_0/weight",),
                tuple(f"{dst}.{p}_proj.weight" for p in "qkv"),
                lambda ts: [p.contiguous() for p in ts[0].split(d)],
            ),
            Rule(
                (f"{src}/linear_0/bias",), (f"{dst}.q_proj.bias", f"{dst}.v_proj.bias"), _fused_with_zero_k(d)
            ),
            *linear(f"{src}/linear_1", f"{dst}.out_proj"),
            *norm(f"{src}/layer_norm", f"{dst}_layer_norm"),
        ]

    enc, dec = "model.encoder", "model.decoder"
    rules = [
        *linear("encoder/conv1", f"{enc}.conv1"),
        *linear("encoder/conv2", f"{enc}.conv2"),
        Rule(("encoder/position_encodings/encodings",), (f"{enc}.embed_positions.weight",)),
        *norm("encoder/layer_norm", f"{enc}.layer_norm"),
        Rule(("decoder/embeddings/weight",), (f"{dec}.embed_tokens.weight",)),
        Rule(("decoder/position_encodings/encodings",), (f"{dec}.embed_positions.weight",)),
        *norm("decoder/layer_norm", f"{dec}.layer_norm"),
    ]
    for stack, hf, n in (("encoder", enc, n_enc), ("decoder", dec, n_dec)):
        for i in range(n):
            s, h = f"{stack}/layer_{i}", f"{hf}.layers.{i}"
            rules += self_attn(f"{s}/self_attention", f"{h}.self_attn")
            rules += [
                *linear(f"{s}/ffn/linear_0", f"{h}.fc1"),
                *linear(f"{s}/ffn/linear_1", f"{h}.fc2"),
                *norm(f"{s}/ffn/layer_norm", f"{h}.final_layer_norm"),
            ]
            if stack == "decoder":
                a, c = f"{s}/attention", f"{h}.encoder_attn"
                rules += [
                    *linear(f"{a}/linear_0", f"{c}.q_proj"),
                    Rule(
                        (f"{a}/linear_1/weight",),
                        (f"{c}.k_proj.weight", f"{c}.v_proj.weight"),
                        lambda ts: [p.contiguous() for p in ts[0].split(d)],
                    ),
                    Rule((f"{a}/linear_1/bias",), (f"{c}.v_proj.bias",), _fused_with_zero_k(0)),
                    *linear(f"{a}/linear_2", f"{c}.out_proj"),
                    *norm(f"{a}/layer_norm", f"{c}_layer_norm"),
                ]
    return RuleSet(tuple(rules), ignore_sources=_METADATA)


def whisper_state_dict(model: CTranslate2Model, hf_config: Any) -> dict[str, torch.Tensor]:
    """Every tensor of a CTranslate2 Whisper under its HF name (strict: nothing left over either way)."""
    c = hf_config
    rules = whisper_ct2_rules(c.encoder_layers, c.decoder_layers, c.d_model)
    expected = [t for r in rules.rules for t in r.targets]
    return dict(convert_tensors(list(model.variables), model.tensor, rules, 0, expected))


def _sidecar(path: Path) -> tuple[Any, dict[str, Any]]:
    """The tokenizer and decoding settings beside ``model.bin`` (``tokenizer.json``, ``config.json``)."""
    tokenizer = None
    tokens: dict[str, Any] = {}
    if (path.parent / "tokenizer.json").is_file():
        from transformers import PreTrainedTokenizerFast

        tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(path.parent / "tokenizer.json"))
        sot, eot = tokenizer.convert_tokens_to_ids(["<|startoftranscript|>", "<|endoftext|>"])
        if sot is not None and eot is not None:
            tokens.update(decoder_start_token_id=sot, eos_token_id=eot, pad_token_id=eot, bos_token_id=eot)
    config_file = path.parent / "config.json"
    if config_file.is_file():
        extra = json.loads(config_file.read_text())
        tokens["suppress_tokens"] = extra.get("suppress_ids") or None
        tokens["begin_suppress_tokens"] = extra.get("suppress_ids_begin") or []
    return tokenizer, tokens


def ctranslate2_source(path: str | Path) -> Any:
    """A :class:`~hookscope.convert.sources.Source` for a CTranslate2 Whisper ``model.bin``."""
    from hookscope.convert.sources import Source

    path = Path(path)
    model = read_ctranslate2(path)
    tokenizer, tokens = _sidecar(path)
    hf_config = whisper_hf_config(model, tokens)
    state = whisper_state_dict(model, hf_config)
    return Source(
        hf_config,
        list(state),
        state.__getitem__,
        f"CTranslate2 Whisper {path}",
        make_tokenizer=lambda: tokenizer,
    )
