"""Generation for native models: static KV cache, logits processors as pure functions, greedy, sampling
and beam search, with hooks active at every step and per-step activation caches.

``model.generate(...)`` / ``model.generate_stream(...)`` call :func:`generate` / :func:`generate_stream`.
Encoder-decoder models reuse :class:`KVCache` (self-attention) and :class:`CrossKV` (cross-attention).
"""

from hookscope.generation.kv_cache import CrossKV, EncoderDecoderKVCache, KVCache, LayerKVCache

__all__ = [
    "BeamSearchOutput", "CrossKV", "EncoderDecoderKVCache", "KVCache", "LayerKVCache", "generate",
    "generate_stream",
]


def __getattr__(name: str):  # the loops import the model helpers; load them only when used
    if name in ("generate", "generate_stream"):
        from hookscope.generation import api

        return getattr(api, name)
    if name == "BeamSearchOutput":
        from hookscope.generation.beam import BeamSearchOutput

        return BeamSearchOutput
    raise AttributeError(f"module 'hookscope.generation' has no attribute {name!r}")
