"""Decoder-only LMs: GPT-2, GPT-Neo, GPT-J, OPT, Pythia, Phi, Llama, Mistral, Qwen2/3, Gemma 1/2, SmolLM2.

Read top to bottom: three block topologies (sequential and parallel attention + MLP, attention only), then
the model. Every difference between these families is a :class:`DecoderConfig` field.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Literal

import torch
from torch import nn

from hookscope.components.attention import Attention
from hookscope.components.block_hooks import add_block_hooks, attend
from hookscope.components.embed import Embed, PosEmbed, Unembed
from hookscope.components.kv_protocol import ModelKVCache
from hookscope.components.masks import AttentionMask, causal_mask_and_positions
from hookscope.components.meta import materialize_parameters, parameters_on_meta
from hookscope.components.mlp import make_mlp
from hookscope.components.norm import make_norm
from hookscope.components.rotary import rotary_cos_sin, rotary_inv_freq
from hookscope.extensions import implementation
from hookscope.hooks import HookedModule, HookPoint, hooks_active
from hookscope.models.decoder_config import DecoderConfig
from hookscope.models.delegation import ExportMixin
from hookscope.models.hf_training import HFTrainingMixin
from hookscope.models.init import init_weights
from hookscope.models.input_checks import batched_ids, check_device, check_integer_ids, check_residual
from hookscope.models.lm_loss import next_token_loss
from hookscope.models.scoring import ScoringMixin
from hookscope.models.weight_views import StackedWeightsMixin
from hookscope.text import LanguageModelMixin

ReturnType = Literal["logits", "loss", "both", None]


class SequentialBlock(nn.Module):
    """``x + attn(ln1(x))`` then ``+ mlp(ln2(.))``; Gemma 2 adds post-norms on each sub-layer's output."""

    def __init__(self, cfg: DecoderConfig, layer: int) -> None:
        super().__init__()
        norm = _attention_sublayer(self, cfg, layer)
        self.ln1_post: nn.Module | None = norm() if cfg.post_norms else None
        self.ln2 = norm()
        self.mlp = make_mlp(cfg.mlp, cfg.d_model, cfg.d_mlp, cfg.act_fn, cfg.mlp_bias, cfg.mlp_norm, cfg.norm_eps)
        self.ln2_post: nn.Module | None = norm() if cfg.post_norms else None
        add_block_hooks(self)

    def forward(self, x: torch.Tensor, mask: AttentionMask, rotary: Any, kv_cache: Any = None,
                qk_offset: torch.Tensor | None = None) -> torch.Tensor:
        x = self.hook_resid_pre(x)
        attn_out = attend(self, self.ln1(x), mask, rotary=rotary, window=self.window, kv_cache=kv_cache,
                          qk_offset=qk_offset)
        if self.ln1_post is not None:
            attn_out = self.ln1_post(attn_out)
        x = self.hook_resid_mid(x + self.hook_attn_out(attn_out))
        mlp_out = self.mlp(self.ln2(self.hook_mlp_in(x)))
        if self.ln2_post is not None:
            mlp_out = self.ln2_post(mlp_out)
        return self.hook_resid_post(x + self.hook_mlp_out(mlp_out))


class ParallelBlock(nn.Module):
    """GPT-NeoX / GPT-J / Phi: ``x + attn(ln1(x)) + mlp(ln2(x))``, attention and MLP read the same residual.

    GPT-J and Phi have one norm for both: conversion gives ``ln1`` and ``ln2`` its weights (as
    TransformerLens does), so both hook points exist and weight processing folds each into its sub-layer.
    """

    def __init__(self, cfg: DecoderConfig, layer: int) -> None:
        super().__init__()
        norm = _attention_sublayer(self, cfg, layer)
        self.ln2 = norm()
        self.mlp = make_mlp(cfg.mlp, cfg.d_model, cfg.d_mlp, cfg.act_fn, cfg.mlp_bias, cfg.mlp_norm, cfg.norm_eps)
        add_block_hooks(self, resid_mid=False)

    def forward(self, x: torch.Tensor, mask: AttentionMask, rotary: Any, kv_cache: Any = None,
                qk_offset: torch.Tensor | None = None) -> torch.Tensor:
        x = self.hook_resid_pre(x)
        attn_out = self.hook_attn_out(attend(self, self.ln1(x), mask, rotary=rotary, window=self.window,
                                             kv_cache=kv_cache, qk_offset=qk_offset))
        mlp_out = self.hook_mlp_out(self.mlp(self.ln2(self.hook_mlp_in(x))))
        # HF GPT-NeoX adds mlp_out + attn_out first, then the residual.
        return self.hook_resid_post(mlp_out + attn_out + x)


class AttnOnlyBlock(nn.Module):
    """``x + attn(ln1(x))``: no MLP (TransformerLens ``attn_only``; the toy models of induction-head work)."""

    def __init__(self, cfg: DecoderConfig, layer: int) -> None:
        super().__init__()
        norm = _attention_sublayer(self, cfg, layer)
        self.ln1_post: nn.Module | None = norm() if cfg.post_norms else None
        add_block_hooks(self, resid_mid=False, mlp=False)

    def forward(self, x: torch.Tensor, mask: AttentionMask, rotary: Any, kv_cache: Any = None,
                qk_offset: torch.Tensor | None = None) -> torch.Tensor:
        x = self.hook_resid_pre(x)
        attn_out = attend(self, self.ln1(x), mask, rotary=rotary, window=self.window, kv_cache=kv_cache,
                          qk_offset=qk_offset)
        if self.ln1_post is not None:
            attn_out = self.ln1_post(attn_out)
        return self.hook_resid_post(x + self.hook_attn_out(attn_out))


def _block_class(cfg: DecoderConfig) -> type[nn.Module]:
    if cfg.attn_only:
        return AttnOnlyBlock
    return ParallelBlock if cfg.parallel_attn_mlp else SequentialBlock


def _attention_sublayer(block: nn.Module, cfg: DecoderConfig, layer: int) -> partial[nn.Module]:
    """Give ``block`` what every decoder block has, ``ln1``, ``attn`` and its sliding ``window``; returns the
    config's norm constructor for the block's other norms."""
    norm = partial(make_norm, cfg.norm, cfg.d_model, cfg.norm_eps)
    block.window = cfg.sliding_windows[layer]
    block.ln1 = norm()
    block.attn = _make_attention(cfg)
    return norm


def _make_attention(cfg: DecoderConfig) -> Attention:
    qk_norm = partial(make_norm, cfg.qk_norm_type, eps=cfg.norm_eps) if cfg.qk_norm else None
    return Attention(
        cfg.d_model, cfg.n_heads, cfg.n_kv_heads or cfg.n_heads, cfg.d_head,
        qkv_bias=cfg.qkv_bias, out_bias=cfg.attn_out_bias, scale=cfg.attn_scale, prescale_query=cfg.prescale_query,
        softcap=cfg.attn_softcap, qk_norm=qk_norm, softmax_in_float32=cfg.softmax_in_float32,
        qk_in_float32=cfg.qk_in_float32, rotary=cfg.positional == "rotary",
    )


class Decoder(LanguageModelMixin, ScoringMixin, HFTrainingMixin, StackedWeightsMixin, ExportMixin, HookedModule):
    """A hooked decoder-only LM, numerically identical to its Hugging Face source."""

    def __init__(self, cfg: DecoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = Embed(cfg.d_vocab, cfg.d_model, scale=cfg.embed_scale, padding_idx=cfg.padding_idx)
        self.hook_embed = HookPoint()  # [batch, pos, d_model]
        self.pos_embed: PosEmbed | None = (
            PosEmbed(cfg.n_ctx, cfg.d_model, offset=cfg.pos_offset) if cfg.positional in ("learned", "shortformer")
            else None
        )
        if self.pos_embed is not None:  # rotary models have no position embedding to hook
            self.hook_pos_embed = HookPoint()  # [batch, pos, d_model]
        block_cls = _block_class(cfg)
        self.blocks = nn.ModuleList(block_cls(cfg, i) for i in range(cfg.n_layers))
        self.ln_final = make_norm(cfg.final_norm or cfg.norm, cfg.d_model, cfg.norm_eps)
        d_vocab_out = cfg.d_vocab_out or cfg.d_vocab
        self.unembed = Unembed(cfg.d_model, d_vocab_out, bias=cfg.unembed_bias, softcap=cfg.final_softcap)
        if cfg.tie_embeddings:
            self.unembed.weight = self.embed.weight
        if cfg.positional == "rotary":
            inv_freq = rotary_inv_freq(cfg.rotary_dim or cfg.d_head, cfg.rotary_base, cfg.rope_scaling)
            self.register_buffer("inv_freq", inv_freq, persistent=False)
        else:
            self.inv_freq: torch.Tensor | None = None
        self.tokenizer: Any = None
        self.processed_weights: list[Any] = []  # what process_weights did; empty: the source's own weights
        self.decode_layout: str | None = None  # "eager" / "compiled" once stream_layout re-lays the weights
        self.setup_hooks()

    @classmethod
    def from_config(cls, cfg: DecoderConfig, seed: int = 0, init_range: float = 0.02) -> Decoder:
        """A freshly initialised model to train from scratch: see :func:`hookscope.models.init.init_weights`."""
        if not isinstance(cfg, DecoderConfig):
            raise TypeError(f"from_config needs a DecoderConfig, got {type(cfg).__name__}")
        with parameters_on_meta():  # the constructors' own initialisation would be thrown away: skip it
            model = cls(cfg)
        return init_weights(materialize_parameters(model), seed=seed, init_range=init_range)  # type: ignore[return-value]

    # ------------------------------------------------------------------ TransformerLens weight views
    @property
    def W_E(self) -> torch.Tensor:
        return self.embed.W_E

    @property
    def W_pos(self) -> torch.Tensor:
        if self.pos_embed is None:
            raise AttributeError("this model has rotary positions, not a learned W_pos")
        return self.pos_embed.W_pos

    @property
    def W_U(self) -> torch.Tensor:
        return self.unembed.W_U

    @property
    def b_U(self) -> torch.Tensor:
        return self.unembed.b_U

    # ------------------------------------------------------------------ generation (hookscope.generation)
    def generate(self, inputs: Any, max_new_tokens: int, **kwargs: Any) -> Any:
        """Greedy, sampled or beam-search continuations under the active hooks: see
        :func:`hookscope.generation.generate` for every argument."""
        return implementation("generate")(self, inputs, max_new_tokens, **kwargs)

    def generate_stream(self, inputs: Any, max_new_tokens: int, **kwargs: Any) -> Any:
        """Yield each step's new tokens: see :func:`hookscope.generation.generate_stream`."""
        return implementation("generate_stream")(self, inputs, max_new_tokens, **kwargs)

    def process_weights(
        self, fold_ln: bool = True, center_writing_weights: bool = True, center_unembed: bool = True, *,
        fold_value_biases: bool = True, refactor_factored_attn_matrices: bool = False, strict: bool = False,
    ) -> Decoder:
        """Fold norms, centre and refactor the weights in place, keeping the log-probabilities (TransformerLens).

        See :mod:`hookscope.models.weight_processing` for each option and when it applies. Afterwards the
        norms' ``hook_normalized`` is the vector before any weight/bias (TransformerLens's ``LNPre``), the
        residual-stream hooks hold centred vectors, ``hook_v``/``hook_z`` lack the value bias, logits are
        shifted per position (log-probs are unchanged), and ``to_hf()`` refuses. Returns the model.
        Options after ``center_unembed`` are keyword-only (TransformerLens's 4th positional argument is
        ``refactor_factored_attn_matrices``, newer versions put ``fold_value_biases`` there).
        """
        from hookscope.models.weight_processing import process_weights

        done = process_weights(
            self, fold_ln=fold_ln, center_writing_weights=center_writing_weights, center_unembed=center_unembed,
            fold_value_biases=fold_value_biases, refactor_factored_attn_matrices=refactor_factored_attn_matrices,
            strict=strict,
        )
        self.processed_weights = [*self.processed_weights, done]
        return self

    # ------------------------------------------------------------------ forward
    def embed_tokens(self, tokens: torch.Tensor, positions: torch.Tensor, validate: bool = True) -> torch.Tensor:
        """The residual stream before block 0: token (+ learned position) embeddings.

        ``validate`` checks ids and positions against the tables (it waits on the device): decoding
        steps skip it, their ids come from the model and their positions were checked up front.
        """
        x = self.hook_embed(self.embed(tokens, validate))
        if self.pos_embed is not None and self.cfg.positional == "learned":
            x = x + self.hook_pos_embed(self.pos_embed(positions, validate=validate))
        return x

    @property
    def pos_embed_in_residual(self) -> bool:
        """Whether ``hook_pos_embed`` is part of the residual stream (not for shortformer positions)."""
        return self.cfg.positional == "learned"

    def rotary_tables(self, positions: torch.Tensor, dtype: torch.dtype) -> Any:
        if self.inv_freq is None:
            return None
        cos, sin = rotary_cos_sin(self.inv_freq, positions, dtype, self.cfg.rotary_interleaved)
        # [batch, pos, 1, rotary_dim]: one table for every head, and the pairing apply_rotary must use
        return cos[:, :, None], sin[:, :, None], self.cfg.rotary_interleaved

    def forward(
        self,
        input: torch.Tensor | str | list[str] | None = None,
        attention_mask: torch.Tensor | None = None,
        return_type: ReturnType = "logits",
        *,
        start_at_layer: int | None = None,
        stop_at_layer: int | None = None,
        position_ids: torch.Tensor | None = None,
        tokens: torch.Tensor | None = None,
        prepend_bos: bool | None = None,
        kv_cache: ModelKVCache | None = None,
        logits_to_keep: int | None = None,
        loss_per_token: bool = False,
        input_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        return_dict: bool = False,
        num_items_in_batch: int | torch.Tensor | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool = False,
    ) -> Any:
        """Run the model.

        Args:
            input: token ids ``[batch, pos]`` (or ``[pos]``), a string or a list of strings (tokenised
                with left padding); with ``start_at_layer``, the residual stream ``[batch, pos, d_model]``.
            attention_mask: ``[batch, pos]``, 0 at padding. Positions skip left padding.
            return_type: "logits", "loss" (mean next-token loss), "both", or None.
            start_at_layer / stop_at_layer: run blocks ``[start, stop)`` only; with ``stop_at_layer`` the
                residual stream entering that block is returned.
            position_ids: explicit positions ``[batch, pos]`` (default: from the attention mask).
            tokens: the token ids, needed for the loss when ``input`` is a residual stream.
            kv_cache: a :class:`~hookscope.generation.kv_cache.KVCache` holding earlier positions
                (generation): ``input`` is then only the new tokens, ``attention_mask`` covers past + new.
                The cache grows only by forwards through every block; with ``start_at_layer`` /
                ``stop_at_layer`` the blocks that run attend over the cached positions and the cache is
                left as it was.
            logits_to_keep: unembed only the last this many positions (generation's prefill needs one;
                ``ln_final`` hooks still see every position).
            loss_per_token: the loss of every prediction ``[batch, pos - 1]`` (0 at padding) instead of
                the mean (TransformerLens's flag; with "loss"/"both" or ``labels``).
            input_ids: the token ids under Hugging Face's name (instead of ``input``).
            labels: ``[batch, pos]`` ids to score (``-100`` ignored), shifted inside as HF does: returns an
                :class:`~hookscope.models.lm_loss.LMOutput` with ``.loss`` and ``.logits``, so HF's
                ``Trainer`` and HF-style training loops drive this model unchanged.
            return_dict: return an ``LMOutput`` (``.logits``; ``.loss`` None without labels).
            num_items_in_batch: with ``labels``, divide the summed token loss by this count (HF's Trainer passes
                the scored tokens of all the micro-batches of an accumulated step); ignored without, as HF.
            use_cache: accepted for HF training loops (``use_cache=False``); only ``kv_cache`` caches here.
            output_hidden_states: with ``return_dict`` / ``labels``, also return ``.hidden_states`` as HF does:
                ``n_layers + 1`` tensors ``[batch, pos, d_model]``, each block's input, then the final norm's
                output (they keep their autograd graph, e.g. for distillation losses).
        """
        input = _resolve_input(input, input_ids)
        if labels is not None or return_dict or output_hidden_states:
            if any(v is not None for v in (start_at_layer, stop_at_layer, kv_cache, logits_to_keep, tokens)):
                raise ValueError("labels= / return_dict= / output_hidden_states= go with a full forward on token ids: "
                                 "drop start_at_layer, stop_at_layer, kv_cache, logits_to_keep and tokens")
            return self._forward_output(input, attention_mask, labels, loss_per_token, position_ids, num_items_in_batch,
                                        output_hidden_states)
        if isinstance(input, (str, list)):
            input, attention_mask = self.tokenize_for_forward(input, attention_mask, prepend_bos)
        _check_input(input, start_at_layer, return_type, self.embed.weight, dispatched=hasattr(self, "hf_device_map"))
        if start_at_layer is None:
            tokens = input
            if tokens.ndim == 1:
                tokens = tokens[None]
            batch, n_pos = tokens.shape
        else:
            batch, n_pos = input.shape[:2]
        past = 0 if kv_cache is None else kv_cache.length
        mask, position_ids, attention_mask = causal_mask_and_positions(
            attention_mask, position_ids, batch, n_pos, past, input.device
        )
        x = self.embed_tokens(tokens, position_ids, validate=past == 0) if start_at_layer is None else input
        rotary = self.rotary_tables(position_ids, x.dtype)
        shortformer = self.hook_pos_embed(self.pos_embed(position_ids, validate=past == 0)).to(x.dtype) \
            if self.cfg.positional == "shortformer" else None  # added to each attention's query/key inputs
        run = range(len(self.blocks))[start_at_layer:stop_at_layer]
        for i in run:
            x = self.run_block(i, self.blocks[i], x, mask, rotary, None if kv_cache is None else kv_cache.layer(i),
                               qk_offset=shortformer)
        if kv_cache is not None and len(run) == len(self.blocks):  # a partial forward only reads the cache
            kv_cache.advance(n_pos)
        if stop_at_layer is not None:  # TransformerLens semantics: the residual stream, no head
            return x
        return self._head(x, tokens, attention_mask, return_type, logits_to_keep, loss_per_token)

    def _head(
        self, x: torch.Tensor, tokens: torch.Tensor | None, mask: torch.Tensor | None, return_type: ReturnType,
        logits_to_keep: int | None = None, per_token: bool = False,
    ) -> Any:
        if return_type is None:
            # as TransformerLens: the final norm still runs (its hooks fire and are cached), only the
            # unembedding is skipped; without hooks on it there is nothing to observe, so skip it too
            if hooks_active((self.ln_final.hook_scale, self.ln_final.hook_normalized)):
                self.ln_final(x)
            return None
        normalized = self.ln_final(x)
        if logits_to_keep is not None:
            if return_type != "logits":
                raise ValueError("logits_to_keep goes with return_type='logits' (the loss needs every position)")
            normalized = normalized[:, -logits_to_keep:]
        logits = self.unembed(normalized)  # [batch, pos, d_vocab]
        if return_type == "logits":
            return logits
        if tokens is None:
            raise ValueError("return_type='loss' needs the token ids: pass tokens=...")
        loss = next_token_loss(logits, tokens, mask, per_token)
        return loss if return_type == "loss" else (logits, loss)


def _resolve_input(input: Any, input_ids: torch.Tensor | None) -> Any:
    if input_ids is not None:
        if input is not None:
            raise TypeError("pass the tokens once: either input or input_ids, not both")
        return input_ids
    if input is None:
        raise TypeError("forward needs its input: token ids, a string or a list of strings (or input_ids=)")
    return input


def _check_input(
    input: Any, start_at_layer: int | None, return_type: Any, embed: torch.Tensor, dispatched: bool
) -> None:
    """Clear errors for inputs that would otherwise fail deep inside (wrong kind, rank, dtype or device)."""
    if return_type not in ("logits", "loss", "both", None):
        raise ValueError(f"return_type must be 'logits', 'loss', 'both' or None, got {return_type!r}")
    if not isinstance(input, torch.Tensor):
        raise TypeError(
            f"input must be token ids (a tensor), a string or a list of strings, got {type(input).__name__}"
        )
    if start_at_layer is None:
        check_integer_ids("token ids", input, "an integer tensor", " (a residual stream goes with start_at_layer=)")
        batched_ids("token ids", input)
    else:
        check_residual(input, embed)
    check_device("input", input, embed, dispatched)

