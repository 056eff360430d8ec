"""TransformerLens-style weight processing for decoders: fold norms, centre, fold value biases, refactor QK/OV.

Every transform keeps the model's log-probabilities (the tests check it on every decoder family) while
moving weights into a form that is easier to read:

- ``fold_ln``: a pre-norm's per-channel weight (and LayerNorm's bias) moves into the linear maps that read
  it (q/k/v projections, the MLP's input projections, the unembedding); the norm keeps only its centring
  and scaling (its weight becomes 1, its bias 0). Gemma's ``1 + weight`` is folded the same way. Gemma 2's
  post-norms act on a sub-layer's output, which no linear map reads, so they stay as they are.
- ``center_writing_weights``: every weight that writes to the residual stream (embeddings, ``W_O``, ``b_O``,
  ``W_out``, ``b_out``) has its mean over ``d_model`` removed. Exact only when every reader of the residual
  is a LayerNorm (which removes the mean anyway): RMSNorm models are skipped.
- ``center_unembed``: ``W_U`` and ``b_U`` lose their mean over the vocabulary (softmax is shift-invariant).
  Not with a final logit soft-cap (the cap is not shift-invariant).
- ``fold_value_biases``: ``b_V`` moves into ``b_O`` (attention rows sum to one, so each head adds
  ``b_V W_O`` exactly once).
- ``refactor_factored_attn_matrices``: ``W_Q``/``W_K`` (with biases, as an extra input row) replaced by an
  even SVD split of ``W_Q W_K^T``, and ``W_V``/``W_O`` by ``U S`` and ``V^T``. Needs positions that do not
  enter ``q . k`` (no rotary), one key head per query head (no GQA) and no q/k norm.

A tied embedding is untied first when either end is changed. Functions here are pure over a
:class:`~hookscope.models.decoder.Decoder`'s parameters: they know no analysis.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from hookscope.components.norm import LayerNorm, OffsetRMSNorm
from hookscope.errors import WeightProcessingError
from hookscope.factored_matrix import FactoredMatrix

logger = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class ProcessedWeights:
    """What :func:`process_weights` did to a model (stored on it as ``model.processed_weights``)."""

    fold_ln: bool
    center_writing_weights: bool
    center_unembed: bool
    fold_value_biases: bool
    refactor_factored_attn_matrices: bool
    skipped: tuple[str, ...] = ()  # options asked for that do not apply, with the reason


def _ensure_bias(linear: nn.Module, attr: str = "bias") -> torch.Tensor:
    """The linear's bias, created as zeros when it has none (folding gives it a non-zero value)."""
    bias = getattr(linear, attr)
    if bias is None:
        bias = nn.Parameter(torch.zeros(linear.weight.shape[0], dtype=linear.weight.dtype,
                                        device=linear.weight.device))
        setattr(linear, attr, bias)
    return bias


def _set(param: torch.Tensor, value: torch.Tensor) -> None:
    param.copy_(value.to(param.dtype))


def _norm_affine(norm: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(effective per-channel scale, bias or None) of a norm, in float64."""
    weight = norm.weight.double()
    scale = 1.0 + weight if isinstance(norm, OffsetRMSNorm) else weight
    bias = norm.bias.double() if isinstance(norm, LayerNorm) and norm.bias is not None else None
    return scale, bias


def _reset_norm(norm: nn.Module) -> None:
    """Make the norm's affine part the identity (scale 1, bias 0)."""
    norm.weight.fill_(0.0 if isinstance(norm, OffsetRMSNorm) else 1.0)
    if isinstance(norm, LayerNorm) and norm.bias is not None:
        norm.bias.zero_()


def fold_norm_into(norm: nn.Module, readers: list[nn.Module]) -> None:
    """``reader(scale * x + bias) == reader'(x)``: move the norm's affine part into each reading linear map.

    Weightless norms (``layernorm_pre``, ``rmsnorm_pre``, ``none``) have nothing to fold.
    """
    if not isinstance(getattr(norm, "weight", None), torch.Tensor):
        return
    scale, bias = _norm_affine(norm)
    for linear in readers:
        w = linear.weight.double()  # [d_out, d_model]
        if bias is not None:
            b = _ensure_bias(linear)
            _set(b, b.double() + w @ bias)
        _set(linear.weight, w * scale[None, :])
    _reset_norm(norm)


def _untie(model: Any) -> None:
    if model.unembed.weight is model.embed.weight:
        model.unembed.weight = nn.Parameter(model.embed.weight.detach().clone())


def fold_layer_norms(model: Any) -> None:
    for block in model.blocks:
        attn = block.attn
        fold_norm_into(block.ln1, [attn.q_proj, attn.k_proj, attn.v_proj])
        mlp = getattr(block, "mlp", None)  # attention-only blocks have none
        if mlp is not None:
            fold_norm_into(block.ln2, [m for m in (getattr(mlp, "gate_proj", None), mlp.up_proj) if m is not None])
            if getattr(mlp, "ln", None) is not None:  # SoLU's norm on the activations: into W_out
                fold_norm_into(mlp.ln, [mlp.down_proj])
    _untie(model)
    fold_norm_into(model.ln_final, [model.unembed])


def center_residual_writers(model: Any) -> None:
    """Remove the mean over ``d_model`` from every weight and bias that writes to the residual stream."""
    _untie(model)
    writers = [model.embed.weight] + ([model.pos_embed.weight] if model.pos_embed is not None else [])
    for w in writers:  # [rows, d_model]
        _set(w, w.double() - w.double().mean(-1, keepdim=True))
    for block in model.blocks:
        mlp = getattr(block, "mlp", None)
        for linear in (block.attn.o_proj, *(() if mlp is None else (mlp.down_proj,))):  # weight [d_model, d_in]
            w = linear.weight.double()
            _set(linear.weight, w - w.mean(0, keepdim=True))
            if linear.bias is not None:
                _set(linear.bias, linear.bias.double() - linear.bias.double().mean())


def center_unembedding(model: Any) -> None:
    """Remove the mean over the vocabulary from ``W_U`` (stored ``[d_vocab, d_model]``) and ``b_U``."""
    _untie(model)
    w = model.unembed.weight.double()
    _set(model.unembed.weight, w - w.mean(0, keepdim=True))
    if model.unembed.bias is not None:
        _set(model.unembed.bias, model.unembed.bias.double() - model.unembed.bias.double().mean())


def fold_attn_value_biases(model: Any) -> None:
    """``b_O += sum_h b_V[h] W_O[h]`` and ``b_V = 0`` (GQA: each query head adds its key/value head's bias)."""
    for block in model.blocks:
        attn = block.attn
        if attn.v_proj.bias is None:
            continue
        b_v = attn.b_V.double()  # [head_index, d_head], per query head
        w_o = attn.W_O.double()  # [head_index, d_head, d_model]
        b_o = _ensure_bias(attn.o_proj)
        _set(b_o, b_o.double() + torch.einsum("he,hem->m", b_v, w_o))
        attn.v_proj.bias.zero_()


def refactor_attn_matrices(model: Any) -> None:
    """Even SVD split of ``[W_Q; b_Q] [W_K; b_K]^T`` per head; ``W_V W_O`` as ``(U S) V^T`` (after folding b_V)."""
    fold_attn_value_biases(model)
    for block in model.blocks:
        attn = block.attn
        n, d = attn.n_heads, attn.d_head
        w_q = torch.cat([attn.W_Q.double(), attn.b_Q.double()[:, None, :]], dim=1)  # [head, d_model + 1, d_head]
        w_k = torch.cat([attn.W_K.double(), attn.b_K.double()[:, None, :]], dim=1)
        even_q, even_kt = FactoredMatrix(w_q, w_k.transpose(-2, -1)).make_even().pair
        even_k = even_kt.transpose(-2, -1)
        for proj, new in ((attn.q_proj, even_q), (attn.k_proj, even_k)):
            _set(proj.weight, new[:, :-1].permute(0, 2, 1).reshape(n * d, -1))  # [head * d_head, d_model]
            _set(_ensure_bias(proj), new[:, -1].reshape(n * d))
        u, s, vh = FactoredMatrix(attn.W_V.double(), attn.W_O.double()).svd()
        _set(attn.v_proj.weight, (u * s[:, None, :]).permute(0, 2, 1).reshape(n * d, -1))
        _set(attn.o_proj.weight, vh.permute(1, 0, 2).reshape(-1, n * d))  # [d_model, head * d_head]


def _refactor_obstacle(model: Any) -> str | None:
    cfg = model.cfg
    if cfg.positional == "rotary":
        return "rotary positions rotate q and k by position, so W_Q W_K^T is not the attention's bilinear form"
    if cfg.n_kv_heads != cfg.n_heads:
        return f"grouped-query attention ({cfg.n_kv_heads} key/value heads shared by {cfg.n_heads} query heads)"
    if cfg.qk_norm:
        return "a norm on q and k sits between the projections and the dot product"
    return None


def _skip_or_raise(option: str, reason: str, strict: bool, skipped: list[str]) -> bool:
    """TransformerLens skips an inapplicable option with a warning; ``strict`` makes it an error."""
    message = f"{option} does not apply to this model: {reason}"
    if strict:
        raise WeightProcessingError(message)
    logger.warning("%s; skipping it", message)
    skipped.append(message)
    return False


@torch.no_grad()
def process_weights(
    model: Any,
    *,
    fold_ln: bool = True,
    center_writing_weights: bool = True,
    center_unembed: bool = True,
    fold_value_biases: bool = True,
    refactor_factored_attn_matrices: bool = False,
    strict: bool = False,
) -> ProcessedWeights:
    """Apply the chosen transforms in place (TransformerLens's order) and return what was done.

    Options that cannot be exact for this model are skipped with a logged warning, as TransformerLens does
    (``strict=True`` raises :class:`WeightProcessingError` instead); ``refactor_factored_attn_matrices`` on a
    model it cannot apply to always raises, as TransformerLens's assertion does.
    """
    skipped: list[str] = []
    cfg = model.cfg
    if refactor_factored_attn_matrices and (reason := _refactor_obstacle(model)):
        raise WeightProcessingError(f"refactor_factored_attn_matrices does not apply to this model: {reason}")
    centring = ("layernorm", "layernorm_pre")
    if center_writing_weights and not (cfg.norm in centring and (cfg.final_norm or cfg.norm) in centring):
        center_writing_weights = _skip_or_raise(
            "center_writing_weights", f"its norms are {cfg.norm}/{cfg.final_norm} (they do not remove the mean, so "
            "centring the residual stream would change the output)", strict, skipped)
    if center_writing_weights and cfg.post_norms:
        center_writing_weights = _skip_or_raise(
            "center_writing_weights", "post-norms write the sub-layer outputs", strict, skipped)
    if center_unembed and cfg.final_softcap is not None:
        center_unembed = _skip_or_raise(
            "center_unembed", "the final logit soft-cap is not invariant to a shift of the logits", strict, skipped)
    if fold_ln:
        fold_layer_norms(model)
    if center_writing_weights:
        center_residual_writers(model)
    if center_unembed:
        center_unembedding(model)
    if fold_value_biases:
        fold_attn_value_biases(model)
    if refactor_factored_attn_matrices:
        refactor_attn_matrices(model)
    return ProcessedWeights(
        fold_ln=fold_ln, center_writing_weights=center_writing_weights, center_unembed=center_unembed,
        fold_value_biases=fold_value_biases, refactor_factored_attn_matrices=refactor_factored_attn_matrices,
        skipped=tuple(skipped),
    )
