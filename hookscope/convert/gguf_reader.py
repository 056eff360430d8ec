"""GGUF (llama.cpp) files as a weight source: metadata -> an HF config, tensors dequantised one at a time.

GGUF stores ``attn_q`` / ``attn_k`` rows permuted for llama.cpp's interleaved rotary convention; they are
un-permuted here so the result is the HF layout. The packaged SmolLM2 is converted once to a cached
safetensors folder so later loads are memory-mapped and fast.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import torch

from hookscope.convert.engine import ConversionError

logger = logging.getLogger(__name__)

_LLAMA_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_BLOCK_NAMES = {
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
}


def hf_name(gguf_name: str) -> str:
    if gguf_name in _LLAMA_NAMES:
        return _LLAMA_NAMES[gguf_name]
    parts = gguf_name.split(".")
    if parts[0] == "blk" and len(parts) == 4 and parts[2] in _BLOCK_NAMES:
        return f"model.layers.{parts[1]}.{_BLOCK_NAMES[parts[2]]}.{parts[3]}"
    raise ConversionError(f"GGUF tensor {gguf_name!r} has no known Llama equivalent")


def unpermute_rotary_rows(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Undo llama.cpp's per-head row interleaving of q/k projections.

    Rows are stored as ``[head, d_head/2, 2]``; HF's rotate-half layout is ``[head, 2, d_head/2]``.
    """
    rows = w.shape[0]
    return w.reshape(n_heads, rows // n_heads // 2, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def _field(reader: Any, key: str, default: Any = None) -> Any:
    f = reader.get_field(key)
    return default if f is None else f.contents()


def llama_config_from_gguf(reader: Any) -> Any:
    from transformers import LlamaConfig

    arch = _field(reader, "general.architecture")
    if arch != "llama":
        raise ConversionError(f"GGUF architecture {arch!r} is not supported (supported: llama)")
    n_heads = int(_field(reader, "llama.attention.head_count"))
    d_model = int(_field(reader, "llama.embedding_length"))
    tensor_names = {t.name for t in reader.tensors}
    vocab = _field(reader, "llama.vocab_size") or len(_field(reader, "tokenizer.ggml.tokens", []))
    head_dim = _field(reader, "llama.rope.dimension_count") or d_model // n_heads
    return LlamaConfig(
        vocab_size=int(vocab), hidden_size=d_model, intermediate_size=int(_field(reader, "llama.feed_forward_length")),
        num_hidden_layers=int(_field(reader, "llama.block_count")), num_attention_heads=n_heads,
        num_key_value_heads=int(_field(reader, "llama.attention.head_count_kv", n_heads)),
        head_dim=int(head_dim), max_position_embeddings=int(_field(reader, "llama.context_length", 2048)),
        rms_norm_eps=float(_field(reader, "llama.attention.layer_norm_rms_epsilon", 1e-5)),
        rope_parameters={"rope_type": "default", "rope_theta": float(_field(reader, "llama.rope.freq_base", 1e4))},
        tie_word_embeddings="output.weight" not in tensor_names,
        bos_token_id=_field(reader, "tokenizer.ggml.bos_token_id"),
        eos_token_id=_field(reader, "tokenizer.ggml.eos_token_id"),
    )


def _open_reader(path: Path) -> Any:
    import gguf

    try:
        return gguf.GGUFReader(str(path))
    except Exception as err:
        raise ConversionError(f"{path} is not a readable GGUF file (corrupt or truncated?): {err}") from None


def gguf_source(path: Path) -> Any:
    """A :class:`Source` over a GGUF file (tensors dequantised on demand)."""
    from gguf.quants import dequantize

    from hookscope.convert.sources import Source

    reader = _open_reader(path)
    config = llama_config_from_gguf(reader)
    tensors = {hf_name(t.name): t for t in reader.tensors}

    def get(key: str) -> torch.Tensor:
        t = tensors[key]
        array = dequantize(t.data, t.tensor_type)
        w = torch.from_numpy(array.copy()).float()
        if key.endswith("q_proj.weight"):
            w = unpermute_rotary_rows(w, config.num_attention_heads)
        elif key.endswith("k_proj.weight"):
            w = unpermute_rotary_rows(w, config.num_key_value_heads)
        return w

    def tokenizer() -> Any:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)

    return Source(config, list(tensors), get, str(path), make_tokenizer=tokenizer)


def cache_dir() -> Path:
    root = os.environ.get("HOOKSCOPE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "hookscope"
    )
    return Path(root)


def cached_gguf_source(path: Path, name: str) -> Any:
    """Convert a GGUF file to a safetensors folder once (keyed by the file's size and mtime), then read that."""
    from hookscope.convert.sources import folder_source

    stat = path.stat()
    key = hashlib.sha256(f"{path}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    folder = cache_dir() / f"{name}-{key}"
    if not (folder / "model.safetensors").is_file():
        _write_converted(path, folder)
    return folder_source(folder)


def _write_converted(path: Path, folder: Path) -> None:
    from safetensors.torch import save_file
    from tqdm.auto import tqdm

    logger.info("converting %s once into %s", path, folder)
    source = gguf_source(path)
    tmp = folder.with_name(folder.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    state = {k: source.get(k).contiguous() for k in tqdm(source.keys, desc="dequantising GGUF", leave=False)}
    save_file(state, str(tmp / "model.safetensors"))
    source.hf_config.save_pretrained(str(tmp))
    tok = source.tokenizer()
    if tok is not None:
        tok.save_pretrained(str(tmp))
    (tmp / "hookscope_source.json").write_text(json.dumps({"gguf": str(path)}))
    if folder.exists():
        import shutil

        shutil.rmtree(folder)
    tmp.rename(folder)
