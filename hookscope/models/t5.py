"""T5 (v1.0, v1.1, Flan-T5) encoder-decoder and T5 encoder, with TransformerLens HookedEncoderDecoder names.

Read top to bottom: the T5 norm, the encoder block, the decoder block (self-attention, cross-attention,
MLP), the encoder-only model, then the encoder-decoder that adds the decoder and the LM head.

Hook names: ``encoder.{i}.*`` and ``decoder.{i}.*`` per block (``ln1``/``attn`` self-attention; in the
encoder ``ln2`` is the MLP's norm, in the decoder ``ln2`` is the cross-attention's norm and ``ln3`` the
MLP's, as in TransformerLens), ``decoder.{i}.cross_attn.*``, ``hook_cross_attn_in``/``_out``,
``hook_resid_mid_cross``. The relative position bias is ``encoder_rel_pos.hook_position_bias`` (shared by
every layer of the stack, as HF computes it once) and ``{encoder,decoder}.{i}.attn.hook_position_bias``
(the copy layer ``i`` adds). Model level: ``hook_embed``, ``hook_decoder_embed``, ``encoder_final_ln.*``
(its ``hook_normalized`` is the encoder output), ``decoder_final_ln.*``.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import nn

from hookscope.components.attention import Attention
from hookscope.components.block_hooks import add_block_hooks, attend
from hookscope.components.embed import Embed, Unembed
from hookscope.components.masks import AttentionMask
from hookscope.components.mlp import make_mlp
from hookscope.components.norm import RMSNorm
from hookscope.components.relative_bias import RelativePositionBias
from hookscope.extensions import implementation
from hookscope.hooks import HookedModule, HookPoint
from hookscope.models.delegation import ExportMixin
from hookscope.models.input_checks import (
    batched_ids,
    check_device,
    check_encoder_output,
    check_integer_ids,
    check_same_device,
    check_same_shape,
)
from hookscope.models.t5_config import T5Config
from hookscope.text import LanguageModelMixin

ReturnType = Literal["logits", None]


class T5Norm(RMSNorm):
    """HF ``T5LayerNorm``: variance in float32, the input (in its own dtype) times ``rsqrt``, cast to a
    half-precision weight's dtype, then times the weight. No mean subtraction, no bias."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        variance = x.to(torch.float32).pow(2).mean(-1, keepdim=True)  # [batch, pos, 1]
        inverse = torch.rsqrt(variance + self.eps)
        if self.hook_scale.has_hooks:
            scale = torch.sqrt(variance + self.eps)
            hooked = self.hook_scale(scale)
            if hooked is not scale:  # replaced by a hook; observing keeps HF's exact rsqrt
                inverse = 1.0 / hooked
        normed = x * inverse
        if self.weight.dtype in (torch.float16, torch.bfloat16):
            normed = normed.to(self.weight.dtype)
        return self.hook_normalized(self.weight * normed)


def _attention(cfg: T5Config, position_bias: bool) -> Attention:
    # T5 folds the usual 1/sqrt(d_head) into its initialisation: scores are not scaled; HF T5's eager
    # attention takes the softmax in the scores' dtype.
    return Attention(
        cfg.d_model, cfg.n_heads, cfg.n_heads, cfg.d_head, qkv_bias=False, out_bias=False, scale=1.0,
        softmax_in_float32=False, position_bias=position_bias,
    )


class EncoderBlock(nn.Module):
    """``x + attn(ln1(x))`` (bidirectional, relative position bias) then ``+ mlp(ln2(.))``."""

    def __init__(self, cfg: T5Config) -> None:
        super().__init__()
        self.ln1 = T5Norm(cfg.d_model, cfg.norm_eps)
        self.attn = _attention(cfg, position_bias=True)
        self.ln2 = T5Norm(cfg.d_model, cfg.norm_eps)
        self.mlp = make_mlp(cfg.mlp, cfg.d_model, cfg.d_mlp, cfg.act_fn, bias=False)
        add_block_hooks(self)

    def forward(self, x: torch.Tensor, mask: AttentionMask, position_bias: torch.Tensor) -> torch.Tensor:
        x = self.hook_resid_pre(x)
        x = self.hook_resid_mid(
            x + self.hook_attn_out(attend(self, self.ln1(x), mask, position_bias=position_bias))
        )
        mlp_out = self.mlp(self.ln2(self.hook_mlp_in(x)))
        return self.hook_resid_post(x + self.hook_mlp_out(mlp_out))


class DecoderBlock(nn.Module):
    """Causal self-attention, then cross-attention over the encoder output, then the MLP."""

    def __init__(self, cfg: T5Config) -> None:
        super().__init__()
        self.ln1 = T5Norm(cfg.d_model, cfg.norm_eps)
        self.attn = _attention(cfg, position_bias=True)
        self.ln2 = T5Norm(cfg.d_model, cfg.norm_eps)
        self.cross_attn = _attention(cfg, position_bias=False)
        self.ln3 = T5Norm(cfg.d_model, cfg.norm_eps)
        self.mlp = make_mlp(cfg.mlp, cfg.d_model, cfg.d_mlp, cfg.act_fn, bias=False)
        add_block_hooks(self, cross_attention=True)

    def forward(
        self,
        x: torch.Tensor,
        mask: AttentionMask,
        position_bias: torch.Tensor,
        encoder_out: torch.Tensor | None,
        cross_mask: AttentionMask,
        layer_cache: Any = None,
    ) -> torch.Tensor:
        """``encoder_out [batch, enc_pos, d_model]``; with ``layer_cache`` (generation) the self-attention
        keys/values accumulate in it and the cross-attention ones are computed once and reused."""
        x = self.hook_resid_pre(x)
        self_kv, cross_kv = layer_cache if layer_cache is not None else (None, None)
        x = self.hook_resid_mid(
            x + self.hook_attn_out(attend(self, self.ln1(x), mask, position_bias=position_bias, kv_cache=self_kv))
        )
        cross_in = self.ln2(self.hook_cross_attn_in(x))
        cross_out = self.cross_attn(cross_in, self._cross_kv(encoder_out, cross_kv), cross_mask)
        x = self.hook_resid_mid_cross(x + self.hook_cross_attn_out(cross_out))
        mlp_out = self.mlp(self.ln3(self.hook_mlp_in(x)))
        return self.hook_resid_post(x + self.hook_mlp_out(mlp_out))

    def _cross_kv(self, encoder_out: torch.Tensor | None, cross_kv: Any) -> Any:
        """Cross-attention keys/values: projected from the encoder output, or from the cache after step 1."""
        if cross_kv is not None and cross_kv.filled:
            return cross_kv.get()
        if encoder_out is None:
            raise ValueError(
                "the decoder needs the encoder output (or a cache that holds its keys and values)"
            )
        kv = self.cross_attn.project_kv(encoder_out)
        return kv if cross_kv is None else cross_kv.update(*kv)


class T5Encoder(LanguageModelMixin, ExportMixin, HookedModule):
    """The T5 encoder alone (HF ``T5EncoderModel``): token ids in, ``[batch, pos, d_model]`` out."""

    def __init__(self, cfg: T5Config) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = Embed(cfg.d_vocab, cfg.d_model)
        self.hook_embed = HookPoint()  # [batch, pos, d_model]
        self.encoder_rel_pos = RelativePositionBias(
            cfg.relative_buckets, cfg.n_heads, cfg.relative_max_distance, bidirectional=True
        )
        self.encoder = nn.ModuleList(EncoderBlock(cfg) for _ in range(cfg.n_encoder_layers))
        self.encoder_final_ln = T5Norm(cfg.d_model, cfg.norm_eps)
        self._build_decoder(cfg)
        self.tokenizer: Any = None
        self.setup_hooks()

    def _build_decoder(self, cfg: T5Config) -> None:
        """The encoder-only model has no decoder."""

    @property
    def W_E(self) -> torch.Tensor:  # [d_vocab, d_model]
        return self.embed.W_E

    def _tokens(
        self, input: torch.Tensor | str | list[str], attention_mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if isinstance(input, (str, list)):
            if attention_mask is not None:
                raise ValueError("pass attention_mask only with token ids; text is padded for you")
            return self.to_tokens(input, padding_side="right", return_mask=True)
        if not isinstance(input, torch.Tensor):
            raise TypeError(
                f"input must be token ids, a string or a list of strings, got {type(input).__name__}"
            )
        check_integer_ids("input", input)
        tokens = batched_ids("input", input)
        if attention_mask is not None:
            attention_mask = attention_mask[None] if attention_mask.ndim == 1 and input.ndim == 1 else attention_mask
            check_same_shape("attention_mask", attention_mask, tokens.shape, "the input ids")
        return tokens, attention_mask

    def encode(
        self, input: torch.Tensor | str | list[str], attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The encoder output ``[batch, pos, d_model]`` (after its final norm): HF ``last_hidden_state``."""
        tokens, attention_mask = self._tokens(input, attention_mask)
        return self._run_encoder(tokens, attention_mask)

    def _run_encoder(self, tokens: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        check_device("input", tokens, self.embed.weight, hasattr(self, "hf_device_map"))
        if attention_mask is not None:
            check_same_device("attention_mask", attention_mask, "input", tokens)
        n_pos = tokens.shape[1]
        if attention_mask is not None and bool(attention_mask.all()):
            attention_mask = None
        mask = AttentionMask(attention_mask, torch.arange(n_pos, device=tokens.device), n_pos, causal=False)
        x = self.hook_embed(self.embed(tokens))  # [batch, pos, d_model]
        position_bias = self.encoder_rel_pos(n_pos, n_pos).to(x.dtype)  # [1, head_index, pos, pos]
        for block in self.encoder:
            x = block(x, mask, position_bias)
        return self.encoder_final_ln(x)

    def forward(
        self, input: torch.Tensor | str | list[str], attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Same as :meth:`encode`."""
        return self.encode(input, attention_mask)


class T5(T5Encoder):
    """T5 encoder-decoder with an LM head (HF ``T5ForConditionalGeneration``), identical to its HF source."""

    def _build_decoder(self, cfg: T5Config) -> None:
        self.hook_decoder_embed = HookPoint()  # [batch, pos, d_model]
        self.decoder_rel_pos = RelativePositionBias(
            cfg.relative_buckets, cfg.n_heads, cfg.relative_max_distance, bidirectional=False
        )
        self.decoder = nn.ModuleList(DecoderBlock(cfg) for _ in range(cfg.n_decoder_layers))
        self.decoder_final_ln = T5Norm(cfg.d_model, cfg.norm_eps)
        self.unembed = Unembed(cfg.d_model, cfg.d_vocab)
        if cfg.tie_embeddings:
            self.unembed.weight = self.embed.weight

    @property
    def W_U(self) -> torch.Tensor:  # [d_model, d_vocab]
        return self.unembed.W_U

    def forward(  # type: ignore[override]
        self,
        input: torch.Tensor | str | list[str] | None,
        decoder_input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        return_type: ReturnType = "logits",
        *,
        encoder_output: torch.Tensor | None = None,
        cache: Any = None,
    ) -> Any:
        """Encoder on ``input``, decoder on ``decoder_input_ids``: logits ``[batch, dec_pos, d_vocab]``.

        Args:
            input: encoder token ids ``[batch, pos]``, a string or a list of strings (right-padded);
                None when ``encoder_output`` is given.
            decoder_input_ids: ``[batch, dec_pos]``; default: one ``decoder_start_token_id`` per row
                (the logits then predict the first output token).
            attention_mask / decoder_attention_mask: ``[batch, pos]``, 0 at padding.
            encoder_output: a precomputed :meth:`encode` result (the encoder is then not run).
            cache: a :class:`hookscope.generation.kv_cache.EncoderDecoderKVCache` for incremental
                decoding: ``decoder_input_ids`` are then only the new tokens, and the cross-attention
                keys/values are computed on the first call only (the encoder may then be skipped).
        """
        if return_type not in ("logits", None):
            raise ValueError(f"return_type must be 'logits' or None, got {return_type!r}")
        cross_cached = cache is not None and cache.cross[0].filled
        if encoder_output is None and input is not None:
            tokens, attention_mask = self._tokens(input, attention_mask)
            encoder_output = self._run_encoder(tokens, attention_mask)
        elif encoder_output is None and not cross_cached:
            raise ValueError("pass the encoder input (token ids or text) or encoder_output=")
        if decoder_input_ids is None:
            if encoder_output is None:
                raise ValueError("with a filled cache and no encoder input, pass decoder_input_ids")
            start = self.cfg.decoder_start_token_id
            decoder_input_ids = torch.full((encoder_output.shape[0], 1), start, device=encoder_output.device)
        else:
            check_integer_ids("decoder_input_ids", decoder_input_ids)
            decoder_input_ids = batched_ids("decoder_input_ids", decoder_input_ids)
            check_device("decoder_input_ids", decoder_input_ids, self.embed.weight, hasattr(self, "hf_device_map"))
        x = self.decode(decoder_input_ids, encoder_output, attention_mask, decoder_attention_mask, cache)
        return None if return_type is None else self.unembed(self._scale_for_head(x))

    def _scale_for_head(self, x: torch.Tensor) -> torch.Tensor:
        # v1.0 (tied embeddings) rescales by d_model ** -0.5 before the LM head; v1.1 does not.
        return x * self.cfg.d_model**-0.5 if self.cfg.scale_decoder_outputs else x

    def decode(
        self,
        decoder_input_ids: torch.Tensor,
        encoder_output: torch.Tensor | None,
        attention_mask: torch.Tensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        cache: Any = None,
    ) -> torch.Tensor:
        """The decoder's final normalised state ``[batch, dec_pos, d_model]`` (before the LM head)."""
        past = cache.length if cache is not None else 0
        batch, n_new = decoder_input_ids.shape
        device = decoder_input_ids.device
        enc_len = encoder_output.shape[1] if encoder_output is not None else cache.cross[0].get()[0].shape[1]
        _check_decode_inputs(self.embed.weight, batch, past + n_new, enc_len, encoder_output, attention_mask,
                             decoder_attention_mask)
        if decoder_attention_mask is not None and bool(decoder_attention_mask.all()):
            decoder_attention_mask = None
        if attention_mask is not None and bool(attention_mask.all()):
            attention_mask = None
        query_index = torch.arange(past, past + n_new, device=device)
        mask = AttentionMask(decoder_attention_mask, query_index, past + n_new, causal=True)
        cross_mask = AttentionMask(attention_mask, torch.arange(n_new, device=device), enc_len, causal=False)
        x = self.hook_decoder_embed(self.embed(decoder_input_ids))  # [batch, dec_pos, d_model]
        position_bias = self.decoder_rel_pos(n_new, past + n_new, offset=past).to(x.dtype)
        for i, block in enumerate(self.decoder):
            x = block(x, mask, position_bias, encoder_output, cross_mask, cache.layer(i) if cache else None)
        if cache is not None:
            cache.advance(n_new)
        return self.decoder_final_ln(x)

    def generate(self, input: Any, max_new_tokens: int = 20, **kwargs: Any) -> torch.Tensor:
        """Greedy or beam-search decoding; see :func:`hookscope.generation.seq2seq.generate_seq2seq`."""
        return implementation("generate_seq2seq")(self, input, max_new_tokens=max_new_tokens, **kwargs)


def _check_decode_inputs(
    weight: torch.Tensor, batch: int, n_keys: int, enc_len: int,
    encoder_output: torch.Tensor | None, attention_mask: torch.Tensor | None,
    decoder_attention_mask: torch.Tensor | None,
) -> None:
    """Shapes the decoder combines: decoder rows, encoder output ``[batch, enc_pos, d_model]`` and masks.

    A single decoder row may go with several encoder rows (it is broadcast, as HF does); any other
    mismatch of batch sizes is an error rather than a broadcasting failure deep in attention.
    """
    enc_batch = batch
    if encoder_output is not None:
        check_encoder_output("encoder_output", encoder_output, weight)
        enc_batch = encoder_output.shape[0]
        if batch not in (1, enc_batch):
            raise ValueError(f"decoder_input_ids have {batch} rows but the encoder input has {enc_batch}; "
                             "give each encoder row its decoder row")
    if attention_mask is not None:
        check_same_shape("attention_mask", attention_mask, (enc_batch, enc_len), "the encoder input ids")
    if decoder_attention_mask is not None and (
        decoder_attention_mask.ndim != 2 or decoder_attention_mask.shape[0] not in (batch, enc_batch)
        or decoder_attention_mask.shape[1] != n_keys
    ):
        raise ValueError(f"decoder_attention_mask has shape {tuple(decoder_attention_mask.shape)} but the "
                         f"decoder ids have shape {(batch, n_keys)} (with a cache: all positions so far)")
