"""``HookedEncoder`` (BERT) and ``HookedEncoderDecoder`` (T5) with TransformerLens's signatures.

Both adopt a native model loaded by ``hookscope.load`` (``hf_model=`` in memory: nothing downloaded) and
translate TL's arguments (``one_zero_attention_mask``, ``return_type="predictions"``, ``decoder_input``).
``HookedEncoder(cfg)`` and ``HookedEncoderDecoder(cfg)`` build a TL-initialised BERT / T5 from a
``HookedTransformerConfig``.
"""

from __future__ import annotations

from typing import Any

import torch

from hookscope.compat.activation_cache import ActivationCache
from hookscope.compat.components import use_tl_signatures
from hookscope.compat.config import HookedTransformerConfig
from hookscope.compat.hook_points import HookedRootModule
from hookscope.compat.t5_components import use_t5_tl_signatures
from hookscope.loading import load
from hookscope.models.bert import Bert
from hookscope.models.bert_config import BertConfig
from hookscope.models.init import init_weights
from hookscope.models.t5 import T5
from hookscope.models.t5_config import T5Config


def _adopt(cls: type, native: Any, expected: type, what: str) -> Any:
    if not isinstance(native, expected):
        raise ValueError(f"{what} runs {expected.__name__} models; this source loads as {type(native).__name__}")
    model = cls.__new__(cls)
    model.__dict__.update(native.__dict__)  # adopt the native modules and parameters (no copy)
    if hasattr(model.embed, "bind"):
        model.embed.bind(model)  # the embedding's weak reference to its owner: the adopting model now
    if isinstance(model, Bert):
        use_tl_signatures(model, causal=False)
    if isinstance(model, T5):
        use_t5_tl_signatures(model)
    return model


def _dtype(dtype: Any) -> Any:
    return getattr(torch, dtype) if isinstance(dtype, str) else dtype


def _check_init(cfg: HookedTransformerConfig, what: str) -> None:
    if cfg.init_mode != "gpt2":
        raise NotImplementedError(f"{what}(cfg) initialises with init_mode='gpt2', got {cfg.init_mode!r}")
    if cfg.n_devices != 1:
        raise NotImplementedError("n_devices > 1: use hookscope.load(..., device_map='auto')")


def _tokenizer_for(cfg: HookedTransformerConfig, tokenizer: Any) -> Any:
    """The tokenizer (given, or ``cfg.tokenizer_name``'s); fills ``cfg.d_vocab`` / ``d_vocab_out`` of -1 from it."""
    if tokenizer is None and cfg.tokenizer_name is not None:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(cfg.tokenizer_name)
    if cfg.d_vocab == -1:
        assert tokenizer is not None, "Must provide a tokenizer if d_vocab is not provided"
        cfg.d_vocab = max(tokenizer.get_vocab().values()) + 1
    if cfg.d_vocab_out == -1:  # as TL: also when d_vocab was set on the config after it was made
        cfg.d_vocab_out = cfg.d_vocab
    return tokenizer


def _bert_config(cfg: HookedTransformerConfig) -> BertConfig:
    """The native BERT config of a TL encoder config (post-LN blocks, learned absolute positions, 2 token types)."""
    if cfg.d_vocab_out != cfg.d_vocab:
        raise NotImplementedError("HookedEncoder with d_vocab_out != d_vocab: the masked-LM head predicts the input "
                                  "vocabulary")
    return BertConfig(d_model=cfg.d_model, n_layers=cfg.n_layers, n_heads=cfg.n_heads, d_head=cfg.d_head,
                      d_mlp=cfg.d_mlp or 4 * cfg.d_model, d_vocab=cfg.d_vocab, n_ctx=cfg.n_ctx,
                      act_fn=cfg.act_fn or "gelu", mlm_act=cfg.act_fn or "gelu", norm_eps=cfg.eps, mlm_head=True,
                      tie_embeddings=False, pooler=True, nsp_head=True, architecture="BertForPreTraining")



def _draw_weights(model: Any, cfg: Any, tokenizer: Any, move_to_device: bool) -> None:
    """A model built from a TL config: attach the tokenizer, draw TL's init (seeded by ``cfg.seed`` when set),
    then cast and move as ``cfg`` says."""
    model.tokenizer = tokenizer
    seed = cfg.seed if cfg.seed is not None else int(torch.randint(0, 2**31 - 1, ()).item())
    init_weights(model, seed=seed, init_range=cfg.initializer_range)
    model.to(cfg.dtype)
    if move_to_device:
        model.to(cfg.device)

class _CompatCacheMixin:
    def run_with_cache(self, *model_args: Any, return_cache_object: bool = True, remove_batch_dim: bool = False,
                       **kwargs: Any) -> tuple[Any, Any]:
        out, cache = super().run_with_cache(*model_args, remove_batch_dim=remove_batch_dim, **kwargs)  # type: ignore[misc]
        if not return_cache_object:
            return out, dict(cache.cache_dict)
        return out, ActivationCache(cache.cache_dict, self, has_batch_dim=not remove_batch_dim)


class HookedEncoder(_CompatCacheMixin, HookedRootModule, Bert):
    """TL's ``HookedEncoder`` over the native :class:`~hookscope.models.bert.Bert`."""

    def __init__(self, cfg: Any, tokenizer: Any = None, move_to_device: bool = True, **kwargs: Any) -> None:
        """A BERT built from a ``HookedTransformerConfig`` (or its dict), as TL's: ``d_vocab=-1`` takes the
        tokenizer's vocabulary (``tokenizer=`` or ``cfg.tokenizer_name``); masked-LM, pooler and
        next-sentence heads; TL's "gpt2" initialisation (``cfg.initializer_range``, ``cfg.seed``)."""
        cfg = HookedTransformerConfig.unwrap(cfg)
        _check_init(cfg, "HookedEncoder")
        tokenizer = _tokenizer_for(cfg, tokenizer)
        Bert.__init__(self, _bert_config(cfg))
        use_tl_signatures(self, causal=False)
        _draw_weights(self, cfg, tokenizer, move_to_device)

    @classmethod
    def from_pretrained(cls, model_name: str, checkpoint_index: int | None = None, checkpoint_value: int | None = None,
                        hf_model: Any = None, device: str | None = None, tokenizer: Any = None,
                        move_to_device: bool = True, dtype: Any = torch.float32, **kwargs: Any) -> HookedEncoder:
        if checkpoint_index is not None or checkpoint_value is not None:
            raise NotImplementedError("training checkpoints are not supported")
        native = load(hf_model if hf_model is not None else model_name, dtype=_dtype(dtype), device=device,
                      tokenizer=tokenizer)
        return _adopt(cls, native, Bert, "HookedEncoder")

    def to_tokens(self, input: str | list[str], move_to_device: bool = True,
                  truncate: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(tokens, token_type_ids, attention_mask)``, right-padded, as TL."""
        if self.tokenizer is None:
            raise ValueError("this model has no tokenizer; pass token ids")
        enc = self.tokenizer(input, return_tensors="pt", padding=True, truncation=truncate,
                             max_length=self.cfg.n_ctx if truncate else None)
        device = next(self.parameters()).device if move_to_device else "cpu"
        types = enc.get("token_type_ids", torch.zeros_like(enc["input_ids"]))
        return enc["input_ids"].to(device), types.to(device), enc["attention_mask"].to(device)

    def forward(  # type: ignore[override]
        self, input: Any, return_type: str | None = "logits", token_type_ids: torch.Tensor | None = None,
        one_zero_attention_mask: torch.Tensor | None = None, **native_kwargs: Any,
    ) -> Any:
        """Masked-LM logits ``[batch, pos, d_vocab]``; "predictions", as TL: the top token at each ``[MASK]``
        (batch-major) as text, a string for one mask, else ``["Prediction 0: ...", ...]``."""
        if return_type not in ("logits", "predictions", None):
            raise ValueError(f"return_type must be 'logits', 'predictions' or None, got {return_type!r}")
        if isinstance(input, (str, list)):
            input, token_type_ids, one_zero_attention_mask = self.to_tokens(input)
        logits = Bert.forward(self, input, one_zero_attention_mask, token_type_ids,
                              "logits" if return_type else None, **native_kwargs)
        if return_type != "predictions":
            return logits
        return self._mask_predictions(input, logits)

    def _mask_predictions(self, tokens: torch.Tensor, logits: torch.Tensor) -> str | list[str]:
        mask_id = getattr(self.tokenizer, "mask_token_id", None)
        if mask_id is None:
            raise ValueError("return_type='predictions' needs a tokenizer with a mask token")
        at_masks = tokens.to(logits.device) == mask_id  # [batch, pos]
        if not bool(at_masks.any()):
            raise ValueError("return_type='predictions' predicts the [MASK] tokens, and the input has none")
        words = [self.tokenizer.decode(int(i)) for i in logits[at_masks].argmax(-1)]
        return words[0] if len(words) == 1 else [f"Prediction {i}: {w}" for i, w in enumerate(words)]

    def encoder_output(self, tokens: torch.Tensor, token_type_ids: torch.Tensor | None = None,
                       one_zero_attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The last hidden state ``[batch, pos, d_model]``."""
        return Bert.forward(self, tokens, one_zero_attention_mask, token_type_ids, "embeddings")


class HookedEncoderDecoder(_CompatCacheMixin, HookedRootModule, T5):
    """TL's ``HookedEncoderDecoder`` over the native :class:`~hookscope.models.t5.T5`."""

    def __init__(self, cfg: Any, tokenizer: Any = None, move_to_device: bool = True, **kwargs: Any) -> None:
        """A T5 built from a ``HookedTransformerConfig`` (or its dict), as TL's: ``n_layers`` encoder and
        ``n_layers`` decoder blocks, ``relative_attention_num_buckets`` / ``_max_distance`` required, an untied
        LM head without T5 v1.0's rescale, ``gated_mlp`` for v1.1's MLP; ``d_vocab=-1`` takes the tokenizer's
        size. Weights get TL's "gpt2" initialisation (``cfg.initializer_range``, ``cfg.seed``)."""
        cfg = HookedTransformerConfig.unwrap(cfg)
        _check_init(cfg, "HookedEncoderDecoder")
        if cfg.relative_attention_num_buckets is None or cfg.relative_attention_max_distance is None:
            raise ValueError("HookedEncoderDecoder(cfg) needs relative_attention_num_buckets and "
                             "relative_attention_max_distance in the config")
        tokenizer = _tokenizer_for(cfg, tokenizer)
        if cfg.d_vocab_out != cfg.d_vocab:
            raise NotImplementedError("HookedEncoderDecoder with d_vocab_out != d_vocab: the LM head predicts the "
                                      "input vocabulary")
        pad = getattr(tokenizer, "pad_token_id", None)
        start = cfg.decoder_start_token_id if cfg.decoder_start_token_id is not None else (pad or 0)
        eos = getattr(tokenizer, "eos_token_id", None)
        native = T5Config(d_model=cfg.d_model, n_heads=cfg.n_heads, d_head=cfg.d_head,
                          d_mlp=cfg.d_mlp or 4 * cfg.d_model, d_vocab=cfg.d_vocab,
                          n_encoder_layers=cfg.n_layers, n_decoder_layers=cfg.n_layers,
                          act_fn=cfg.act_fn or "relu", mlp="gated" if cfg.gated_mlp else "plain", norm_eps=cfg.eps,
                          relative_buckets=cfg.relative_attention_num_buckets,
                          relative_max_distance=cfg.relative_attention_max_distance, tie_embeddings=False,
                          scale_decoder_outputs=False, decoder_start_token_id=start,
                          pad_token_id=pad if pad is not None else start,
                          eos_token_ids=(eos,) if eos is not None else (1,))
        T5.__init__(self, native)
        use_t5_tl_signatures(self)
        _draw_weights(self, cfg, tokenizer, move_to_device)

    @classmethod
    def from_pretrained(cls, model_name: str, hf_model: Any = None, device: str | None = None, tokenizer: Any = None,
                        move_to_device: bool = True, dtype: Any = torch.float32, **kwargs: Any) -> HookedEncoderDecoder:
        native = load(hf_model if hf_model is not None else model_name, dtype=_dtype(dtype), device=device,
                      tokenizer=tokenizer)
        return _adopt(cls, native, T5, "HookedEncoderDecoder")

    def forward(  # type: ignore[override]
        self, input: Any, decoder_input: torch.Tensor | None = None, return_type: str | None = "logits",
        one_zero_attention_mask: torch.Tensor | None = None, **native_kwargs: Any,
    ) -> Any:
        """Logits ``[batch, dec_pos, d_vocab]`` of the decoder on ``decoder_input`` (TL's argument names)."""
        return T5.forward(self, input, decoder_input, one_zero_attention_mask, None, return_type, **native_kwargs)

    def to_tokens(  # type: ignore[override]
        self, input: str | list[str], move_to_device: bool = True, truncate: bool = True, **native: Any,
    ) -> Any:
        """TL's ``(tokens, attention_mask)`` ``[batch, pos]``, right-padded, as the tokenizer encodes (T5's adds
        ``</s>``). With hookscope's own keywords (``prepend_bos``, ``padding_side``, ``return_mask``) the native
        result, which the model's own calls use."""
        if native:
            return T5.to_tokens(self, input, **native)
        if self.tokenizer is None:
            raise ValueError("this model has no tokenizer; pass token ids")
        enc = self.tokenizer(input, return_tensors="pt", padding=True, truncation=truncate)
        device = self.embed.weight.device if move_to_device else "cpu"
        return enc["input_ids"].to(device), enc["attention_mask"].to(device)

    def generate(  # type: ignore[override]
        self, input: str | list[str] | torch.Tensor = "", one_zero_attention_mask: torch.Tensor | None = None,
        max_new_tokens: int = 10, stop_at_eos: bool = True, eos_token_id: int | list[int] | None = None,
        do_sample: bool = True, top_k: int | None = None, top_p: float | None = None, temperature: float = 1.0,
        freq_penalty: float = 0.0, return_type: str | None = "input", verbose: bool = True,
    ) -> str | torch.Tensor:
        """TL's ``generate``: decoder tokens ``[batch, 1 + new]`` (from the start token), or for a string input
        (``return_type="input"``, or ``"str"``) the first row decoded without special tokens.

        ``stop_at_eos=False`` generates ``max_new_tokens`` exactly; sampling as TL's defaults (``do_sample=True``).
        ``freq_penalty`` (TL's own sampler) is refused; ``verbose`` has no progress bar to show.
        """
        if freq_penalty:
            raise NotImplementedError("freq_penalty: hookscope's sampler has HF's repetition_penalty instead "
                                      "(use hookscope.generation.seq2seq.generate_seq2seq)")
        if return_type not in ("input", "str", "tensor", "tokens"):
            raise ValueError(f"return_type must be 'input', 'str', 'tensor' or 'tokens', got {return_type!r}")
        eos: int | list[int] | None = [] if not stop_at_eos else eos_token_id
        tokens = T5.generate(self, input, max_new_tokens=max_new_tokens, attention_mask=one_zero_attention_mask,
                             do_sample=do_sample, top_k=top_k, top_p=top_p, temperature=temperature,
                             eos_token_id=eos)
        as_text = return_type == "str" or (return_type == "input" and isinstance(input, str))
        if not as_text:
            return tokens
        if self.tokenizer is None:
            raise ValueError("this model has no tokenizer to decode the generated tokens; use return_type='tensor'")
        return self.tokenizer.decode(tokens[0], skip_special_tokens=True)
