"""``HookedTransformer``: TransformerLens's model class over hookscope's native :class:`Decoder`.

It IS a native decoder (a subclass: same modules, hook points and kernels), with TransformerLens's
signatures and defaults on top: ``forward(input, return_type, loss_per_token, prepend_bos, padding_side,
start_at_layer, tokens, shortformer_pos_embed, attention_mask, stop_at_layer, past_kv_cache)``, BOS
prepended and right padding when tokenizing, ``run_with_cache`` returning TL's ActivationCache, and
``model.cfg`` a :class:`HookedTransformerConfig`.
"""

from __future__ import annotations

import logging
from typing import Any, Literal, NamedTuple

import torch

from hookscope.analysis.neurons import accumulated_bias
from hookscope.analysis.residual import tokens_to_residual_directions
from hookscope.compat.activation_cache import ActivationCache
from hookscope.compat.components import use_tl_signatures
from hookscope.compat.config import HookedTransformerConfig
from hookscope.compat.generation import TLGenerateMixin
from hookscope.compat.hook_points import HookedRootModule
from hookscope.compat.init import tl_init_weights
from hookscope.compat.past_key_value_caching import HookedTransformerKeyValueCache
from hookscope.compat.pretrained import PretrainedMixin, _cached_tokenizer, _process
from hookscope.compat.tokens import TLTokensMixin
from hookscope.compat.utils import get_attention_mask, lm_cross_entropy_loss
from hookscope.components.masks import positions_from_mask
from hookscope.hooks import HookPoint
from hookscope.models.decoder import Decoder

logger = logging.getLogger(__name__)

# opt-in hook points TL caches when the matching cfg switch is on
_SWITCHES = {
    "use_attn_result": ("attn.hook_result",),
    "use_split_qkv_input": ("hook_q_input", "hook_k_input", "hook_v_input"),
    "use_hook_mlp_in": ("hook_mlp_in",),
    "use_attn_in": ("hook_attn_in",),
}


class Output(NamedTuple):
    """``forward(..., return_type="both")``: the logits and the loss, as TL's named tuple."""

    logits: torch.Tensor
    loss: torch.Tensor


def _named_tokenizer(name: str) -> Any:
    """``cfg.tokenizer_name``'s tokenizer, as TL loads it: the local HF cache first, then the hub."""
    tokenizer = _cached_tokenizer(name)
    if tokenizer is not None:
        return tokenizer
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(name, add_bos_token=True)
    except (OSError, ValueError) as err:
        logger.warning("could not load the tokenizer %r (%s); the model has none: call set_tokenizer", name, err)
        return None


def _switch_for(name: str) -> str | None:
    """The cfg switch an opt-in hook name needs, or None."""
    for flag, suffixes in _SWITCHES.items():
        if name.endswith(suffixes):
            return flag
    return None


class HookedTransformer(TLTokensMixin, TLGenerateMixin, PretrainedMixin, HookedRootModule, Decoder):
    """TransformerLens's ``HookedTransformer``: ``HookedTransformer(cfg)`` builds a TL-initialised model;
    :meth:`from_pretrained` converts a hub model (or ``hf_model=``) through hookscope's loader."""

    # generate() calls forward with the native signature, which runs Decoder.forward unchanged (no
    # hook_tokens, no TL argument handling): the lean decode step computes the same steps
    generates_with_decoder_forward = True

    cfg: HookedTransformerConfig  # type: ignore[assignment]
    _native_signature = False  # True while a native caller (the generator) runs forward with Decoder's signature

    def __init__(
        self, cfg: HookedTransformerConfig | dict, tokenizer: Any = None, move_to_device: bool = True,
        default_padding_side: Literal["left", "right"] | None = None,
    ) -> None:
        cfg = HookedTransformerConfig.unwrap(cfg)
        if tokenizer is None and cfg.tokenizer_name is not None:
            tokenizer = _named_tokenizer(cfg.tokenizer_name)
        if cfg.d_vocab == -1 and tokenizer is not None:  # as TL: the vocabulary size from the tokenizer
            cfg.d_vocab = max(tokenizer.get_vocab().values()) + 1
        if cfg.d_vocab_out == -1:  # as TL: also when d_vocab was set on the config after it was made
            cfg.d_vocab_out = cfg.d_vocab
        native = cfg.to_native()
        Decoder.__init__(self, native)
        use_tl_signatures(self)
        if cfg.use_hook_tokens:  # TL's hook on the token ids entering the embedding
            self.hook_tokens = HookPoint()  # [batch, pos]
            self.setup_hooks()
        cfg.__dict__["_native"] = native
        self.cfg = cfg
        self.default_padding_side = default_padding_side or "right"
        if cfg.init_weights:
            self.init_weights()
        if tokenizer is not None:
            self.set_tokenizer(tokenizer, default_padding_side)
        self.to(cfg.dtype)
        if move_to_device:
            self.to(cfg.device)

    def init_weights(self) -> None:
        """TL's initialisation of ``cfg.init_mode``: "gpt2" (N(0, ``initializer_range``)), "xavier_uniform",
        "xavier_normal", "kaiming_uniform", "kaiming_normal" (gain ``initializer_range``, TL's fans) or "muP";
        biases 0, norm weights 1; reproducible from ``cfg.seed``."""
        seed = self.cfg.seed if self.cfg.seed is not None else int(torch.randint(0, 2**31 - 1, ()).item())
        tl_init_weights(self, self.cfg.init_mode, seed, self.cfg.initializer_range)

    def set_tokenizer(self, tokenizer: Any, default_padding_side: Literal["left", "right"] | None = None) -> None:
        """Attach a HF tokenizer; as TL, missing EOS/PAD/BOS tokens fall back to each other."""
        if default_padding_side not in ("left", "right", None):
            raise ValueError(f"padding_side must be 'left', 'right' or None, got {default_padding_side!r}")
        if tokenizer.pad_token is None and tokenizer.eos_token is not None:
            tokenizer.pad_token = tokenizer.eos_token
        if tokenizer.bos_token is None and tokenizer.eos_token is not None:
            tokenizer.bos_token = tokenizer.eos_token
        self.tokenizer = tokenizer
        if default_padding_side is not None:
            self.default_padding_side = default_padding_side
        tokenizer.padding_side = self.default_padding_side  # as TL: the tokenizer's side is the model's default
        self.cfg.tokenizer_prepends_bos = len(tokenizer.encode("")) > 0

    # ------------------------------------------------------------------ TL switches
    def set_use_attn_result(self, use_attn_result: bool) -> None:
        self.cfg.use_attn_result = use_attn_result

    def set_use_split_qkv_input(self, use_split_qkv_input: bool) -> None:
        self.cfg.use_split_qkv_input = use_split_qkv_input

    def set_use_hook_mlp_in(self, use_hook_mlp_in: bool) -> None:
        self.cfg.use_hook_mlp_in = use_hook_mlp_in

    def set_use_attn_in(self, use_attn_in: bool) -> None:
        self.cfg.use_attn_in = use_attn_in

    def add_hook(self, name: Any, hook: Any, dir: Any = "fwd", is_permanent: bool = False,  # type: ignore[override]
                 level: int | None = None, prepend: bool = False) -> None:
        """As TL: hooking an opt-in point whose switch is off (``hook_result`` without ``use_attn_result``...)
        is refused with an AssertionError naming the switch; a filter skips those points."""
        if isinstance(name, str):
            flag = _switch_for(name)
            assert flag is None or getattr(self.cfg, flag), (
                f"{name} fires only with cfg.{flag} = True: call model.set_{flag}(True) first"
            )
        else:
            filt = name
            name = lambda n: filt(n) and (_switch_for(n) is None or getattr(self.cfg, _switch_for(n)))  # noqa: E731
        super().add_hook(name, hook, dir, is_permanent, level, prepend)

    def cache_names(self, names_filter: Any) -> list[str]:
        """As the native method, plus the opt-in points TL's switches (``set_use_attn_result``...) turn on."""
        names = super().cache_names(names_filter)
        if names_filter is None:
            suffixes = tuple(s for flag, group in _SWITCHES.items() if getattr(self.cfg, flag) for s in group)
            if suffixes:
                chosen = set(names) | {n for n in self.hook_dict if n.endswith(suffixes)}
                names = [n for n in self.hook_dict if n in chosen]
        return names

    # ------------------------------------------------------------------ forward
    def forward(  # type: ignore[override]
        self, input: Any, return_type: str | None = "logits", loss_per_token: bool = False,
        prepend_bos: bool | None = None, padding_side: Literal["left", "right"] | None = None,
        start_at_layer: int | None = None, tokens: torch.Tensor | None = None,
        shortformer_pos_embed: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
        stop_at_layer: int | None = None, past_kv_cache: HookedTransformerKeyValueCache | None = None,
        **native_kwargs: Any,
    ) -> Any:
        """TL's forward: ``return_type`` "logits" | "loss" | "both" | None; ``loss_per_token`` gives the loss
        ``[batch, pos - 1]``; ``start_at_layer`` takes the residual stream (``tokens=`` for a loss);
        ``stop_at_layer`` returns the residual stream entering that block."""
        if self._native_signature or isinstance(return_type, torch.Tensor) or "kv_cache" in native_kwargs:
            # a native caller (generation, analysis) using Decoder's signature: forward(input, attention_mask, ...)
            mask = return_type if isinstance(return_type, torch.Tensor) else attention_mask
            return Decoder.forward(self, input, mask, **native_kwargs)
        if shortformer_pos_embed is not None and self.cfg.positional != "shortformer":
            raise ValueError("shortformer_pos_embed goes with positional_embedding_type='shortformer' models")
        # a shortformer model recomputes its position embeddings from the positions (those input_to_embed gave)
        if return_type not in ("logits", "loss", "both", None):
            raise ValueError(f"return_type must be 'logits', 'loss', 'both' or None, got {return_type!r}")
        if start_at_layer is None and isinstance(input, torch.Tensor) and input.is_floating_point():
            input, start_at_layer = self._embeds_to_residual(input), 0  # token embeddings (TL 3 accepts them)
        if start_at_layer is None:
            tokens, attention_mask = self._tokens_and_mask(input, prepend_bos, padding_side, attention_mask,
                                                           past_kv_cache is not None)
            if self.cfg.use_hook_tokens and hasattr(self, "hook_tokens"):
                tokens = self.hook_tokens(tokens)
            input = tokens
        kv = None
        if past_kv_cache is not None:
            past_kv_cache.check_partial_forward(len(self.blocks), start_at_layer, stop_at_layer)
            attention_mask = past_kv_cache.mask_for_forward(attention_mask, input.shape[0], input.shape[1])
            kv = past_kv_cache.native_for(self, input.shape[0], input.shape[1])
        native_return = "logits" if return_type in ("loss", "both") else return_type
        out = Decoder.forward(
            self, input, attention_mask, native_return, start_at_layer=start_at_layer,
            stop_at_layer=stop_at_layer, tokens=tokens, kv_cache=kv, **native_kwargs,
        )
        if past_kv_cache is not None:
            past_kv_cache.after_forward(kv)
        if stop_at_layer is not None or return_type in ("logits", None):
            return out
        if tokens is None:
            raise ValueError("return_type='loss' / 'both' with start_at_layer needs tokens=")
        loss = self.loss_fn(out, tokens, attention_mask, per_token=loss_per_token)
        return loss if return_type == "loss" else Output(out, loss)

    def _embeds_to_residual(self, embeds: torch.Tensor) -> torch.Tensor:
        """Token embeddings ``[batch, pos, d_model]`` -> the residual entering block 0 (positions added)."""
        if embeds.ndim == 2:
            embeds = embeds[None]
        x = self.hook_embed(embeds)
        if self.pos_embed is not None and self.pos_embed_in_residual:
            positions = torch.arange(embeds.shape[1], device=embeds.device)[None].expand(embeds.shape[0], -1)
            x = x + self.hook_pos_embed(self.pos_embed(positions, validate=True))
        return x

    def process_weights_(self, fold_ln: bool = True, center_writing_weights: bool = True,
                         center_unembed: bool = True, refactor_factored_attn_matrices: bool = False) -> None:
        """TL's in-place weight processing (the native ``process_weights``; value biases folded too)."""
        _process(self, dict(fold_ln=fold_ln, center_writing_weights=center_writing_weights,
                            center_unembed=center_unembed, fold_value_biases=True,
                            refactor_factored_attn_matrices=refactor_factored_attn_matrices))

    def _tokens_and_mask(
        self, input: Any, prepend_bos: bool | None, padding_side: Any, attention_mask: torch.Tensor | None,
        with_cache: bool,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """TL's ``input_to_embed`` up to the embedding: tokenise text; a mask only when TL makes one
        (left padding, an explicit mask, or a KV cache); right-padded text runs unmasked, as in TL."""
        side = padding_side or self._padding_side()
        if isinstance(input, (str, list)):
            tokens, mask = self.to_tokens(input, prepend_bos, side, return_mask=True)
        else:
            tokens, mask = input, None
        if tokens.ndim == 1:
            tokens = tokens[None]
        if attention_mask is not None:
            return tokens, attention_mask[None] if attention_mask.ndim == 1 else attention_mask
        if side == "left" or with_cache:
            if mask is None and self.tokenizer is None:
                mask = torch.ones_like(tokens)  # no tokenizer, no pad id: every token is real
            elif mask is None:
                mask = get_attention_mask(self.tokenizer, tokens, self._bos_default(prepend_bos), side)
            return tokens, mask
        return tokens, None

    def input_to_embed(
        self, input: Any, prepend_bos: bool | None = None, padding_side: Any = None,
        attention_mask: torch.Tensor | None = None, past_kv_cache: HookedTransformerKeyValueCache | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """``(residual entering block 0, tokens, shortformer position embeddings or None, attention_mask)``."""
        tokens, mask = self._tokens_and_mask(input, prepend_bos, padding_side, attention_mask,
                                             past_kv_cache is not None)
        past = 0 if past_kv_cache is None else past_kv_cache.length
        if past_kv_cache is not None:
            mask = torch.cat([past_kv_cache.previous_attention_mask.to(mask), mask], -1) if past else mask
        if mask is not None:
            positions = positions_from_mask(mask)[:, past:]
        else:
            positions = torch.arange(past, past + tokens.shape[1], device=tokens.device)[None].expand(len(tokens), -1)
        shortformer = self.pos_embed(positions, validate=True) if self.cfg.positional == "shortformer" else None
        return self.embed_tokens(tokens, positions), tokens, shortformer, mask

    def loss_fn(self, logits: torch.Tensor, tokens: torch.Tensor, attention_mask: torch.Tensor | None = None,
                per_token: bool = False) -> torch.Tensor:
        return lm_cross_entropy_loss(logits, tokens.to(logits.device), attention_mask, per_token)

    def run_with_cache(self, *model_args: Any, return_cache_object: bool = True, remove_batch_dim: bool = False,
                       **kwargs: Any) -> tuple[Any, Any]:
        out, cache = super().run_with_cache(*model_args, remove_batch_dim=remove_batch_dim, **kwargs)
        if not return_cache_object:
            return out, dict(cache.cache_dict)
        return out, ActivationCache(cache.cache_dict, self, has_batch_dim=not remove_batch_dim)

    # ------------------------------------------------------------------ weights, devices
    def tokens_to_residual_directions(self, tokens: Any) -> torch.Tensor:
        """``W_U[:, tokens]`` moved to ``[..., d_model]``; one token (an id, a string, or a tensor holding one
        element) gives ``[d_model]``, as TL."""
        if isinstance(tokens, torch.Tensor) and tokens.numel() == 1:
            tokens = int(tokens.item())
        return tokens_to_residual_directions(self, tokens)

    @property
    def W_E_pos(self) -> torch.Tensor:
        """``cat(W_E, W_pos)``: ``[d_vocab + n_ctx, d_model]``."""
        return torch.cat([self.W_E, self.W_pos], 0)

    def accumulated_bias(self, layer: int, mlp_input: bool = False, include_mlp_biases: bool = True) -> torch.Tensor:
        """Sum of the attention (and MLP) output biases written before ``layer`` (``mlp_input``: and its b_O)."""
        return accumulated_bias(self, layer, mlp_input, include_mlp_biases)

    def all_head_labels(self) -> list[str]:
        return [f"L{i}H{h}" for i in range(self.cfg.n_layers) for h in range(self.cfg.n_heads)]

    @property
    def n_params_total(self) -> int:
        """Every parameter, embeddings, norms and biases included (``cfg.n_params`` counts TL's subset)."""
        return int(sum(p.numel() for p in self.parameters()))

    def cuda(self, device: Any = None) -> HookedTransformer:  # type: ignore[override]
        if isinstance(device, int):
            device = torch.device("cuda", device)
        return self.to("cuda" if device is None else device)

    def cpu(self) -> HookedTransformer:  # type: ignore[override]
        return self.to("cpu")

    def to(self, *args: Any, **kwargs: Any) -> HookedTransformer:  # type: ignore[override]
        out = super().to(*args, **kwargs)
        p = next(self.parameters(), None)
        if p is not None:
            self.cfg.device = str(p.device) if p.device.type != "cpu" else "cpu"
            self.cfg.dtype = p.dtype
        return out
