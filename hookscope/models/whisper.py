"""Whisper: a convolutional audio encoder and a cross-attending text decoder, every activation hooked.

Hook names follow TransformerLens's ``HookedEncoderDecoder`` (``encoder.{i}.*``, ``decoder.{i}.*``,
``decoder.{i}.cross_attn.*``, ``hook_cross_attn_in/out``, ``hook_resid_mid_cross``, ``encoder_final_ln``,
``decoder_final_ln``) plus the audio stem (``encoder_embed.hook_conv1``, ``.hook_conv2``,
``.hook_pos_embed``). Numerically identical to HF ``WhisperForConditionalGeneration``.
"""

from __future__ import annotations

import warnings
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hookscope.components.embed import Embed, PosEmbed, Unembed
from hookscope.components.masks import AttentionMask
from hookscope.components.norm import LayerNorm
from hookscope.extensions import implementation
from hookscope.hooks import HookedModule, HookPoint
from hookscope.models.delegation import ExportMixin
from hookscope.models.input_checks import batched_ids, check_device, check_encoder_output, check_integer_ids
from hookscope.models.whisper_config import WhisperConfig
from hookscope.models.whisper_layers import AudioEmbed, DecoderBlock, EncoderBlock

ReturnType = Literal["logits", "loss", "both", None]
CrossKV = list[tuple[torch.Tensor, torch.Tensor]]  # per decoder layer: ([batch, key_pos, head, d_head],) * 2


class Whisper(ExportMixin, HookedModule):
    """A hooked Whisper model: ``model(features, decoder_input_ids)`` returns logits like HF's."""

    def __init__(self, cfg: WhisperConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d, act, eps = cfg.d_model, cfg.act_fn, cfg.norm_eps
        # the conv stem is exact GELU whatever activation_function says (HF and OpenAI alike)
        self.encoder_embed = AudioEmbed(cfg.n_mels, d, cfg.n_audio_ctx, "gelu")
        self.encoder = nn.ModuleList(
            EncoderBlock(d, cfg.n_encoder_heads, cfg.d_encoder_mlp, act, eps)
            for _ in range(cfg.n_encoder_layers)
        )
        self.encoder_final_ln = LayerNorm(d, eps)
        self.embed = Embed(cfg.d_vocab, d)  # holds W_E; the lookup is _embed_tokens
        self.hook_embed = HookPoint()  # [batch, pos, d_model]
        self.pos_embed = PosEmbed(cfg.n_text_ctx, d)
        self.hook_pos_embed = HookPoint()  # [batch, pos, d_model]
        self.decoder = nn.ModuleList(
            DecoderBlock(d, cfg.n_decoder_heads, cfg.d_decoder_mlp, act, eps)
            for _ in range(cfg.n_decoder_layers)
        )
        self.decoder_final_ln = LayerNorm(d, eps)
        self.unembed = Unembed(d, cfg.d_vocab)
        self.unembed.weight = self.embed.weight  # Whisper always ties its output projection
        self.tokenizer: Any = None
        self.setup_hooks()

    # ------------------------------------------------------------------ TransformerLens weight views
    @property
    def W_E(self) -> torch.Tensor:  # [d_vocab, d_model]
        return self.embed.W_E

    @property
    def W_pos(self) -> torch.Tensor:  # [n_text_ctx, d_model]  decoder positions
        return self.pos_embed.W_pos

    @property
    def W_U(self) -> torch.Tensor:  # [d_model, d_vocab]
        return self.unembed.W_U

    # ------------------------------------------------------------------ forward
    def encode(self, features: torch.Tensor) -> torch.Tensor:
        """Log-mel ``[batch, n_mels, frames]`` -> encoder output ``[batch, n_audio_ctx, d_model]``."""
        if features.ndim == 2:
            features = features[None]
        _check_features(features, self.embed.weight)
        x = self.encoder_embed(features.to(self.embed.weight.dtype))
        n = x.shape[1]
        mask = AttentionMask(None, torch.arange(n, device=x.device), n, causal=False)
        for block in self.encoder:
            x = block(x, mask)
        return self.encoder_final_ln(x)

    def cross_kv(self, encoder_out: torch.Tensor) -> CrossKV:
        """Each decoder layer's cross-attention K/V of the audio: computed once per clip while decoding."""
        return [block.cross_attn.project_kv(encoder_out) for block in self.decoder]

    def _embed_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Token embeddings ``[batch, pos, d_model]``.

        HF's embedding has ``padding_idx=pad_token_id``: that row gets no gradient from the lookup (it still
        does through the tied output projection), so the lookup goes through ``F.embedding`` with it.
        """
        n_vocab = self.cfg.d_vocab
        if tokens.numel() and (int(tokens.max()) >= n_vocab or int(tokens.min()) < 0):
            raise IndexError(
                f"token ids must lie in [0, {n_vocab}); got {int(tokens.min())}..{int(tokens.max())}"
            )
        pad = self.cfg.pad_token_id
        return F.embedding(tokens, self.embed.weight, padding_idx=pad if 0 <= pad < n_vocab else None)

    def decode(
        self,
        tokens: torch.Tensor,
        cross_kv: CrossKV,
        *,
        kv_caches: list[Any] | None = None,
        offset: int = 0,
    ) -> torch.Tensor:
        """Decoder logits ``[batch, pos, d_vocab]`` for ``tokens [batch, pos]`` at positions ``offset...``.

        ``kv_caches`` (one per decoder layer, each with ``update(k, v)``) holds earlier tokens' self-attention
        K/V; ``offset`` is how many tokens they cover.
        """
        n_pos = tokens.shape[1]
        positions = torch.arange(offset, offset + n_pos, device=tokens.device)
        x = self.hook_embed(self._embed_tokens(tokens))
        x = x + self.hook_pos_embed(self.pos_embed(positions)[None].expand(x.shape[0], -1, -1))
        self_mask = AttentionMask(None, positions, offset + n_pos, causal=True)
        n_keys = cross_kv[0][0].shape[1]
        cross_mask = AttentionMask(None, positions, n_keys, causal=False)
        for i, block in enumerate(self.decoder):
            x = block(x, self_mask, cross_kv[i], cross_mask, None if kv_caches is None else kv_caches[i])
        return self.unembed(self.decoder_final_ln(x))

    def forward(
        self,
        input_features: torch.Tensor,
        decoder_input_ids: torch.Tensor,
        return_type: ReturnType = "logits",
        *,
        encoder_output: torch.Tensor | None = None,
        encoder_out: torch.Tensor | None = None,
    ) -> Any:
        """Run encoder and decoder (teacher forcing).

        Args:
            input_features: log-mel ``[batch, n_mels, 2 * n_audio_ctx]`` (unused with ``encoder_output``).
            decoder_input_ids: ``[batch, pos]`` (or ``[pos]``), starting with the decoder start token.
            return_type: "logits", "loss" (mean next-token loss over the decoder tokens), "both", or None.
            encoder_output: a precomputed :meth:`encode` output to reuse (as T5's ``encoder_output=``;
                ``encoder_out=`` is a deprecated alias).
        """
        if encoder_out is not None:
            warnings.warn("encoder_out= is now encoder_output=", DeprecationWarning, stacklevel=2)
            encoder_output = encoder_out if encoder_output is None else encoder_output
        if return_type not in ("logits", "loss", "both", None):
            raise ValueError(f"return_type must be 'logits', 'loss', 'both' or None, got {return_type!r}")
        tokens = _check_tokens(decoder_input_ids, self.embed.weight)
        if tokens.shape[1] > self.cfg.n_text_ctx:
            raise ValueError(
                f"{tokens.shape[1]} decoder tokens exceed the model's {self.cfg.n_text_ctx} positions"
            )
        if encoder_output is None:
            encoder_output = self.encode(input_features)
        _check_encoder_output(encoder_output, tokens.shape[0], self.embed.weight)
        logits = self.decode(tokens, self.cross_kv(encoder_output))
        if return_type is None or return_type == "logits":
            return None if return_type is None else logits
        log_probs = F.log_softmax(logits[:, :-1].float(), dim=-1)
        loss = -log_probs.gather(-1, tokens[:, 1:, None]).mean()
        return loss if return_type == "loss" else (logits, loss)

    # ------------------------------------------------------------------ generation
    def generate(
        self,
        input_features: torch.Tensor,
        max_new_tokens: int = 20,
        *,
        prompt: list[int] | None = None,
        num_beams: int = 1,
        length_penalty: float = 1.0,
        early_stopping: bool | Literal["never"] = False,
        use_cache: bool = True,
        eos_token_id: int | list[int] | None = None,
        return_cache: Any = False,
    ) -> Any:
        """Decoder tokens ``[batch, prompt + new]`` for log-mel ``input_features [batch, n_mels, frames]``.

        Greedy or beam search through the shared generation loops, with the checkpoint's
        ``suppress_tokens``/``begin_suppress_tokens``; ``prompt`` defaults to the decoder start token, as
        in HF ``generate``; ``eos_token_id`` (one id or several) replaces the checkpoint's EOS;
        ``return_cache`` (True or a names filter) also returns the activations of every step, equal to a
        teacher-forced ``run_with_cache`` over the result. See :func:`hookscope.generation.whisper_decode.generate`.
        """
        return implementation("whisper_generate")(
            self,
            input_features,
            [self.cfg.decoder_start_token_id] if prompt is None else prompt,
            max_new_tokens,
            num_beams=num_beams,
            length_penalty=length_penalty,
            early_stopping=early_stopping,
            use_cache=use_cache,
            eos_token_id=eos_token_id,
            return_cache=return_cache,
        )

    # ------------------------------------------------------------------ speech to text
    def transcribe(
        self,
        audio: str | Any | np.ndarray | torch.Tensor,
        *,
        sample_rate: int | None = None,
        num_beams: int = 1,
        max_new_tokens: int | None = None,
        prompt: list[int] | None = None,
        return_cache: Any = False,
    ) -> Any:
        """Text of a speech recording (a file path, or a waveform array with its ``sample_rate``).

        Audio longer than 30 s is cut into consecutive 30-s windows, each decoded on its own (no
        timestamp-guided seeking), all windows decoded as one batch. Decoding is greedy (``num_beams=1``)
        or beam search, through the shared generation loops (see :meth:`generate`). ``return_cache`` (True
        or a names filter, greedy only) returns ``(text, cache)`` with every step's activations, one row
        per 30-s window.
        """
        return implementation("whisper_transcribe")(
            self,
            audio,
            sample_rate=sample_rate,
            num_beams=num_beams,
            max_new_tokens=max_new_tokens,
            prompt=prompt,
            return_cache=return_cache,
        )


def _check_features(features: torch.Tensor, embed: torch.Tensor) -> None:
    """Log-mel features are real numbers on the model's device (a float dtype is cast, as HF's does)."""
    if not features.is_floating_point():
        raise TypeError(f"log-mel features must be a float tensor, got {features.dtype}; "
                        "use hookscope.audio.log_mel() to make them from a waveform")
    check_device("features", features, embed)


def _check_tokens(tokens: torch.Tensor, embed: torch.Tensor) -> torch.Tensor:
    """Decoder ids ``[batch, pos]`` (``[pos]`` gets a batch axis): integers on the model's device."""
    check_integer_ids("decoder_input_ids", tokens)
    tokens = batched_ids("decoder_input_ids", tokens)
    check_device("decoder_input_ids", tokens, embed)
    return tokens


def _check_encoder_output(encoder_output: torch.Tensor, batch: int, embed: torch.Tensor) -> None:
    """The encoder output ``[clips, n_audio_ctx, d_model]``; one decoder row per clip (or one for all)."""
    check_encoder_output("encoder_output", encoder_output, embed, pos_axis="n_audio_ctx")
    if batch not in (1, encoder_output.shape[0]):
        raise ValueError(f"decoder_input_ids have {batch} rows but there are {encoder_output.shape[0]} audio clips; "
                         "give each clip its decoder row")
