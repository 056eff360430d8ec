"""A test-side writer of CTranslate2 v6 Whisper files, written from the format description (not the reader).

It lays an HF Whisper's tensors out the way CTranslate2's converter does: fused self-attention QKV with a
zero K bias, cross-attention Q and fused KV, ``gamma``/``beta`` norms, scalar flags, and the output
projection as an alias of the embedding.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import torch

_CODES = {
    np.dtype("float32"): 0,
    np.dtype("int8"): 1,
    np.dtype("int16"): 2,
    np.dtype("int32"): 3,
    np.dtype("float16"): 4,
}


def _string(s: str) -> bytes:
    raw = s.encode() + b"\0"
    return struct.pack("<H", len(raw)) + raw


def _variable(name: str, arr: np.ndarray) -> bytes:
    arr = np.array(arr, order="C")  # (ascontiguousarray would turn a scalar into shape (1,))
    head = _string(name) + struct.pack("<B", arr.ndim) + b"".join(struct.pack("<I", d) for d in arr.shape)
    return head + struct.pack("<BI", _CODES[arr.dtype], arr.nbytes) + arr.tobytes()


def whisper_variables(hf: torch.nn.Module, dtype: np.dtype) -> dict[str, np.ndarray]:
    """CTranslate2 names -> arrays for an HF ``WhisperForConditionalGeneration``."""
    sd = {k: v.detach().double().numpy() for k, v in hf.state_dict().items()}
    cfg = hf.config
    out: dict[str, np.ndarray] = {}

    def lin(dst: str, src: str) -> None:
        out[f"{dst}/weight"], out[f"{dst}/bias"] = sd[f"{src}.weight"], sd[f"{src}.bias"]

    def ln(dst: str, src: str) -> None:
        out[f"{dst}/gamma"], out[f"{dst}/beta"] = sd[f"{src}.weight"], sd[f"{src}.bias"]

    def self_attn(dst: str, src: str) -> None:
        out[f"{dst}/linear_0/weight"] = np.concatenate([sd[f"{src}.{p}_proj.weight"] for p in "qkv"])
        zero = np.zeros_like(sd[f"{src}.q_proj.bias"])
        out[f"{dst}/linear_0/bias"] = np.concatenate(
            [sd[f"{src}.q_proj.bias"], zero, sd[f"{src}.v_proj.bias"]]
        )
        lin(f"{dst}/linear_1", f"{src}.out_proj")

    lin("encoder/conv1", "model.encoder.conv1")
    lin("encoder/conv2", "model.encoder.conv2")
    out["encoder/position_encodings/encodings"] = sd["model.encoder.embed_positions.weight"]
    ln("encoder/layer_norm", "model.encoder.layer_norm")
    out["decoder/embeddings/weight"] = sd["model.decoder.embed_tokens.weight"]
    out["decoder/position_encodings/encodings"] = sd["model.decoder.embed_positions.weight"]
    ln("decoder/layer_norm", "model.decoder.layer_norm")
    for stack, n in (("encoder", cfg.encoder_layers), ("decoder", cfg.decoder_layers)):
        for i in range(n):
            d, s = f"{stack}/layer_{i}", f"model.{stack}.layers.{i}"
            self_attn(f"{d}/self_attention", f"{s}.self_attn")
            ln(f"{d}/self_attention/layer_norm", f"{s}.self_attn_layer_norm")
            lin(f"{d}/ffn/linear_0", f"{s}.fc1")
            lin(f"{d}/ffn/linear_1", f"{s}.fc2")
            ln(f"{d}/ffn/layer_norm", f"{s}.final_layer_norm")
            if stack == "decoder":
                c = f"{s}.encoder_attn"
                lin(f"{d}/attention/linear_0", f"{c}.q_proj")
                out[f"{d}/attention/linear_1/weight"] = np.concatenate(
                    [sd[f"{c}.k_proj.weight"], sd[f"{c}.v_proj.weight"]]
                )
                zero = np.zeros_like(sd[f"{c}.v_proj.bias"])
                out[f"{d}/attention/linear_1/bias"] = np.concatenate([zero, sd[f"{c}.v_proj.bias"]])
                lin(f"{d}/attention/linear_2", f"{c}.out_proj")
                ln(f"{d}/attention/layer_norm", f"{s}.encoder_attn_layer_norm")
    out = {k: v.astype(dtype) for k, v in out.items()}
    out["encoder/num_heads"] = np.array(cfg.encoder_attention_heads, dtype=np.int16)
    out["decoder/num_heads"] = np.array(cfg.decoder_attention_heads, dtype=np.int16)
    for flag, value in (("activation", 3), ("alibi", 0), ("pre_norm", 1), ("scale_embeddings", 0)):
        out[f"decoder/{flag}"] = np.array(value, dtype=np.int8)
    return out


def write_ctranslate2(path: Path, variables: dict[str, np.ndarray], version: int = 6) -> Path:
    """Write a CTranslate2 ``model.bin`` holding ``variables`` (sorted, as the converter does)."""
    parts = [struct.pack("<I", version), _string("WhisperSpec"), struct.pack("<II", 3, len(variables))]
    parts += [_variable(name, variables[name]) for name in sorted(variables)]
    parts += [
        struct.pack("<I", 1),
        _string("decoder/projection/weight"),
        _string("decoder/embeddings/weight"),
    ]
    path.write_bytes(b"".join(parts))
    return path
