"""BERT-style encoders (BERT, RoBERTa, MiniLM): post-LN blocks, masked-LM head, pooler and pooled heads.

Read top to bottom: the embedding (tokens + token types + positions, then LayerNorm), the post-LN block
(``ln1(x + attn(x))`` then ``ln2(. + mlp(.))``), the heads, then the model. Hook names follow
TransformerLens's ``HookedEncoder`` (their table: ``hookscope.names.BERT_BLOCK`` / ``BERT_MODEL``).
"""

from __future__ import annotations

import warnings
import weakref
from typing import Any, Literal

import torch
from torch import nn

from hookscope.components.activations import get_activation
from hookscope.components.attention import Attention
from hookscope.components.block_hooks import add_block_hooks, attend
from hookscope.components.embed import Embed, PosEmbed, Unembed
from hookscope.components.masks import AttentionMask
from hookscope.components.mlp import MLP
from hookscope.components.norm import LayerNorm
from hookscope.hooks import HookedModule, HookPoint
from hookscope.models.bert_config import BertConfig
from hookscope.models.delegation import ExportMixin
from hookscope.models.input_checks import (
    batched_ids,
    check_device,
    check_integer_ids,
    check_same_device,
    check_same_shape,
)
from hookscope.models.weight_views import StackedWeightsMixin

ReturnType = Literal["logits", "hidden", "pooled", "nsp", "classification", None]
RETURN_TYPES = ("logits", "hidden", "pooled", "nsp", "classification", None)


def padding_offset_positions(tokens: torch.Tensor, pad_token_id: int) -> torch.Tensor:
    """RoBERTa's positions ``[batch, pos]``: real tokens count from ``pad_token_id + 1``, padding gets
    ``pad_token_id`` (as HF ``create_position_ids_from_input_ids``, wherever the padding sits)."""
    real = tokens.ne(pad_token_id).long()
    return torch.cumsum(real, dim=1) * real + pad_token_id


class BertEmbed(nn.Module):
    """``ln(word + token_type + position)``, summed in HF's order, each part behind its own hook.

    Called with sentences instead of token ids (``model.embed(["A man is playing a guitar."])``) it
    returns sentence embeddings: the helper users expect under that name (see :meth:`Bert.encode`).
    """

    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        # HF's word embeddings give the padding row no gradient (nn.Embedding padding_idx); RoBERTa's
        # position embeddings too.
        self.embed = Embed(cfg.d_vocab, cfg.d_model, padding_idx=cfg.pad_token_id)
        self.pos_embed = PosEmbed(
            cfg.n_ctx,
            cfg.d_model,
            padding_idx=cfg.pad_token_id if cfg.positions == "padding_offset" else None,
        )
        self.token_type_embed = Embed(cfg.n_token_types, cfg.d_model)
        self.ln = LayerNorm(cfg.d_model, cfg.norm_eps)
        self.hook_embed = HookPoint()  # [batch, pos, d_model]
        self.hook_pos_embed = HookPoint()  # [batch, pos, d_model]
        self.hook_token_type_embed = HookPoint()  # [batch, pos, d_model]

    def bind(self, model: nn.Module) -> None:
        """Remember the owning model (weakly: not a submodule) for sentence-embedding calls."""
        self._owner = weakref.ref(model)

    def forward(
        self, tokens: Any, token_type_ids: torch.Tensor | None = None, positions: torch.Tensor | None = None,
        **sentence_kwargs: Any,
    ) -> torch.Tensor:
        if isinstance(tokens, str) or (isinstance(tokens, (list, tuple)) and tokens and isinstance(tokens[0], str)):
            return self._owner().encode(tokens, **sentence_kwargs)  # [batch, d_model] sentence embeddings
        if token_type_ids is None:  # one segment, as HF and TransformerLens default to
            token_type_ids = torch.zeros_like(tokens)
        if positions is None:  # the model's own positions: 0.. (BERT), or padding-offset (RoBERTa)
            pad = self.pos_embed.padding_idx
            positions = padding_offset_positions(tokens, pad) if pad is not None else \
                torch.arange(tokens.shape[-1], device=tokens.device).expand(tokens.shape)
        x = self.hook_embed(self.embed(tokens)) + self.hook_token_type_embed(
            self.token_type_embed(token_type_ids)
        )
        x = x + self.hook_pos_embed(self.pos_embed(positions))
        return self.ln(x)  # [batch, pos, d_model]


class EncoderBlock(nn.Module):
    """Post-LN block: ``x = ln1(x + attn(x))``, then ``ln2(x + mlp(x))``.

    As in TransformerLens, ``hook_resid_mid`` and ``hook_resid_post`` are the sums before each norm and
    ``hook_normalized_resid_post`` is the block's output (HF's hidden state for this layer).
    """

    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.attn = Attention(
            cfg.d_model,
            cfg.n_heads,
            cfg.n_heads,
            cfg.d_head,
            qkv_bias=True,
            out_bias=True,
            softmax_in_float32=False,  # HF BERT's eager attention takes the softmax in the input dtype
            rotary=False,
        )
        self.ln1 = LayerNorm(cfg.d_model, cfg.norm_eps)
        self.mlp = MLP(cfg.d_model, cfg.d_mlp, cfg.act_fn, bias=True)
        self.ln2 = LayerNorm(cfg.d_model, cfg.norm_eps)
        add_block_hooks(self)
        self.hook_normalized_resid_post = HookPoint()  # [batch, pos, d_model]

    def forward(self, x: torch.Tensor, mask: AttentionMask) -> torch.Tensor:
        x = self.hook_resid_pre(x)
        x = self.hook_resid_mid(x + self.hook_attn_out(attend(self, x, mask)))
        x = self.ln1(self.hook_mlp_in(x))
        x = self.hook_resid_post(x + self.hook_mlp_out(self.mlp(x)))
        return self.hook_normalized_resid_post(self.ln2(x))


class MLMHead(nn.Module):
    """The masked-LM transform ``ln(act(dense(x)))``; the model's ``unembed`` then gives the logits."""

    def __init__(self, d_model: int, act: str, eps: float) -> None:
        super().__init__()
        self.dense = nn.Linear(d_model, d_model)
        self.act = get_activation(act)
        self.ln = LayerNorm(d_model, eps)
        self.hook_pre = HookPoint()  # [batch, pos, d_model]  dense output, before the activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ln(self.act(self.hook_pre(self.dense(x))))  # [batch, pos, d_model]


class Pooler(nn.Module):
    """``tanh(dense(x[:, 0]))``: the first ([CLS] / <s>) token's vector, as HF's pooler computes it."""

    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.dense = nn.Linear(d_model, d_model)
        self.hook_pooler_out = HookPoint()  # [batch, d_model]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.hook_pooler_out(torch.tanh(self.dense(x[:, 0])))


class LinearHead(nn.Module):
    """A linear read-out of the pooled vector (next-sentence or classification logits)."""

    def __init__(self, d_model: int, n_out: int) -> None:
        super().__init__()
        self.proj = nn.Linear(d_model, n_out)
        self.hook_out = HookPoint()  # [batch, n_out]

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.hook_out(self.proj(pooled))


class Bert(StackedWeightsMixin, ExportMixin, HookedModule):
    """A hooked BERT / RoBERTa / MiniLM encoder, numerically identical to its Hugging Face source.

    Which heads exist is declared by the config (``mlm_head``, ``pooler``, ``nsp_head``, ``n_labels``);
    absent heads are ``None``.
    """

    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = BertEmbed(cfg)
        self.embed.bind(self)
        self.hook_full_embed = HookPoint()  # [batch, pos, d_model]  the residual entering block 0
        self.blocks = nn.ModuleList(EncoderBlock(cfg) for _ in range(cfg.n_layers))
        self.mlm_head: MLMHead | None = (
            MLMHead(cfg.d_model, cfg.mlm_act, cfg.norm_eps) if cfg.mlm_head else None
        )
        self.unembed: Unembed | None = Unembed(cfg.d_model, cfg.d_vocab, bias=True) if cfg.mlm_head else None
        if self.unembed is not None and cfg.tie_embeddings:
            self.unembed.weight = self.embed.embed.weight
        self.pooler: Pooler | None = Pooler(cfg.d_model) if cfg.pooler else None
        self.nsp_head: LinearHead | None = LinearHead(cfg.d_model, 2) if cfg.nsp_head else None
        self.classifier: LinearHead | None = (
            LinearHead(cfg.d_model, cfg.n_labels) if cfg.n_labels is not None else None
        )
        self.tokenizer: Any = None
        self.setup_hooks()

    # ------------------------------------------------------------------ TransformerLens weight views
    @property
    def W_E(self) -> torch.Tensor:  # [d_vocab, d_model]
        return self.embed.embed.W_E

    @property
    def W_pos(self) -> torch.Tensor:  # [n_ctx, d_model]
        return self.embed.pos_embed.W_pos

    @property
    def W_token_type(self) -> torch.Tensor:  # [n_token_types, d_model]
        return self.embed.token_type_embed.weight

    @property
    def W_U(self) -> torch.Tensor:  # [d_model, d_vocab]
        return self._require("unembed", "the masked-LM head").W_U

    @property
    def b_U(self) -> torch.Tensor:  # [d_vocab]
        return self._require("unembed", "the masked-LM head").b_U

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        input: torch.Tensor | str | list[str] | tuple[str, str] | list[tuple[str, str]],
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        return_type: ReturnType = "logits",
        *,
        position_ids: torch.Tensor | None = None,
        stop_at_layer: int | None = None,
    ) -> Any:
        """Run the encoder.

        Args:
            input: token ids ``[batch, pos]`` (or ``[pos]``); a string, a ``(text_a, text_b)`` pair, or a
                list of either (tokenised with right padding, token types and mask from the tokenizer).
            attention_mask: ``[batch, pos]``, 0 at padding (default: every token attends, as in HF).
            token_type_ids: ``[batch, pos]`` segment ids (default: all 0).
            return_type: "logits" (masked-LM ``[batch, pos, d_vocab]``), "hidden" (last hidden state
                ``[batch, pos, d_model]``, as ViT's; "embeddings" is a deprecated alias), "pooled"
                ``[batch, d_model]``, "nsp" ``[batch, 2]``,
                "classification" ``[batch, n_labels]``, or None.
            position_ids: explicit positions ``[batch, pos]`` (default: 0.. for BERT, RoBERTa's
                padding-offset positions computed from the token ids).
            stop_at_layer: return the residual stream entering this block instead.
        """
        if return_type == "embeddings":
            warnings.warn('return_type="embeddings" is now "hidden"', DeprecationWarning, stacklevel=2)
            return_type = "hidden"
        if return_type not in RETURN_TYPES:
            raise ValueError(f"return_type must be one of {RETURN_TYPES}, got {return_type!r}")
        if not isinstance(input, torch.Tensor):
            from hookscope.models.bert_text import tokenize

            if attention_mask is not None or token_type_ids is not None:
                raise ValueError(
                    "pass attention_mask and token_type_ids only with token ids; text is tokenised for you"
                )
            input, attention_mask, token_type_ids = tokenize(self, input)
        tokens, attention_mask, token_type_ids = self._check_inputs(input, attention_mask, token_type_ids)
        n_pos = tokens.shape[1]
        if position_ids is None:
            position_ids = self.positions(tokens)
        else:
            _check_position_ids(position_ids, tokens)
        key_valid = None if attention_mask is None or bool(attention_mask.all()) else attention_mask.bool()
        mask = AttentionMask(key_valid, torch.arange(n_pos, device=tokens.device), n_pos, causal=False)
        x = self.hook_full_embed(self.embed(tokens, token_type_ids, position_ids))
        for block in self.blocks[:stop_at_layer]:
            x = block(x, mask)
        if stop_at_layer is not None and stop_at_layer < len(self.blocks):
            return x
        return self.head(x, return_type)

    def positions(self, tokens: torch.Tensor) -> torch.Tensor:
        """Default position ids ``[batch, pos]`` for these tokens."""
        if self.cfg.positions == "padding_offset":
            return padding_offset_positions(tokens, self.cfg.pad_token_id)
        return torch.arange(tokens.shape[1], device=tokens.device)[None].expand(tokens.shape[0], -1)

    def head(self, x: torch.Tensor, return_type: ReturnType) -> Any:
        """Apply the head ``return_type`` names to the final residual stream ``[batch, pos, d_model]``."""
        if return_type is None:
            return None
        if return_type == "hidden":
            return x
        if return_type == "logits":
            mlm_head = self._require("mlm_head", "a masked-LM head", "logits")
            return self.unembed(mlm_head(x))  # type: ignore[misc]  # [batch, pos, d_vocab]
        pooled = self._require("pooler", "a pooler", return_type)(x)  # [batch, d_model]
        if return_type == "pooled":
            return pooled
        if return_type == "nsp":
            return self._require("nsp_head", "a next-sentence head", "nsp")(pooled)
        return self._require("classifier", "a classification head", "classification")(pooled)

    def _require(self, attr: str, what: str, return_type: str | None = None) -> Any:
        module = getattr(self, attr)
        if module is None:
            have = [
                rt
                for rt, a in (
                    ("logits", "mlm_head"),
                    ("pooled", "pooler"),
                    ("nsp", "nsp_head"),
                    ("classification", "classifier"),
                )
                if getattr(self, a) is not None
            ]
            asked = f"return_type={return_type!r} needs" if return_type else "this needs"
            raise ValueError(
                f"{asked} {what}, which this model ({self.cfg.architecture}) does not have; "
                f"available return types: {', '.join(repr(r) for r in ['embeddings', *have])}"
            )
        return module

    def _check_inputs(
        self, tokens: torch.Tensor, attention_mask: torch.Tensor | None, token_type_ids: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """Tokens ``[batch, pos]`` plus mask and token types of that shape; a clear error otherwise."""
        check_integer_ids("tokens", tokens, "integer ids")
        check_device("tokens", tokens, self.embed.embed.weight, hasattr(self, "hf_device_map"))
        if tokens.ndim == 1:
            tokens = tokens[None]
            attention_mask = (
                attention_mask[None]
                if attention_mask is not None and attention_mask.ndim == 1
                else attention_mask
            )
            if token_type_ids is not None and token_type_ids.ndim == 1:
                token_type_ids = token_type_ids[None]
        tokens = batched_ids("tokens", tokens)
        if tokens.shape[1] > self.cfg.max_tokens:
            raise ValueError(
                f"the sequence has {tokens.shape[1]} tokens but this model's position table allows at most "
                f"{self.cfg.max_tokens}; truncate the input (e.g. tokenizer(..., truncation=True))"
            )
        for name, t in (("attention_mask", attention_mask), ("token_type_ids", token_type_ids)):
            if t is not None:
                check_same_shape(name, t, tokens.shape, "the tokens")
                check_same_device(name, t, "tokens", tokens)
        if token_type_ids is not None:
            check_integer_ids("token_type_ids", token_type_ids, "integer ids")
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(tokens)
        elif token_type_ids.numel() and (
            int(token_type_ids.min()) < 0 or int(token_type_ids.max()) >= self.cfg.n_token_types
        ):
            raise ValueError(
                f"token_type_ids must lie in [0, {self.cfg.n_token_types}) for this model; "
                f"got values from {int(token_type_ids.min())} to {int(token_type_ids.max())}"
            )
        return tokens, attention_mask, token_type_ids

    # ------------------------------------------------------------------ text helpers (see bert_text)
    def predict_masked(self, text: str, top_k: int = 5) -> Any:
        """Top-k fillers of each mask in ``text``; see :func:`hookscope.models.bert_text.predict_masked`."""
        from hookscope.models.bert_text import predict_masked

        return predict_masked(self, text, top_k=top_k)

    def encode(
        self, sentences: str | list[str], pooling: str = "mean", normalize: bool = True
    ) -> torch.Tensor:
        """Sentence embeddings (also ``model.embed(sentences, ...)``, sentence-transformers' ``encode``);
        see :func:`hookscope.models.bert_text.embed`."""
        from hookscope.models.bert_text import embed

        return embed(self, sentences, pooling=pooling, normalize=normalize)


def _check_position_ids(position_ids: torch.Tensor, tokens: torch.Tensor) -> None:
    """Explicit positions: integer ids ``[batch, pos]`` (or ``[pos]`` / ``[1, pos]``, shared by every row)."""
    check_integer_ids("position_ids", position_ids, "integer ids")
    batch, n_pos = tokens.shape
    shape = tuple(position_ids.shape)
    if not (shape == (n_pos,) or (len(shape) == 2 and shape[1] == n_pos and shape[0] in (1, batch))):
        raise ValueError(
            f"position_ids has shape {shape} but the tokens have shape {(batch, n_pos)}; "
            f"pass [batch, pos] or [pos]"
        )
    check_same_device("position_ids", position_ids, "tokens", tokens)
