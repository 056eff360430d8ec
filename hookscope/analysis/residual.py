"""Residual-stream decomposition and direct logit attribution over an :class:`~hookscope.cache.ActivationCache`.

TransformerLens's cache helpers as free functions, with TL's semantics, exact on the model's own UNFOLDED
weights: the norm's weight (``1 + weight`` for Gemma) is applied in :func:`apply_ln_to_stack`. The tests
check in float64 that ``sum_c logit_attrs(c) + b_ln @ W_U + b_U`` is the model's (pre-soft-cap) logits.

Stacks are ``[component, batch, pos, d_model]`` (no batch axis after ``remove_batch_dim``; positions are
the second to last axis). ``pos_slice`` as TL's ``Slice``: an int drops the axis, a slice, ``(start, stop)``
tuple or index list keeps it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Literal

import torch

PosSlice = int | slice | Sequence[int] | torch.Tensor | None
Stack = torch.Tensor | tuple[torch.Tensor, list[str]]
Tokens = int | str | Sequence[int] | torch.Tensor


# ---------------------------------------------------------------------------------------------- helpers
def _model(cache: Any) -> Any:
    model = getattr(cache, "model", None)
    if model is None:
        raise ValueError(
            "this cache does not know its model (cache.model is None): make it with model.run_with_cache(...), "
            "or set cache.model = model"
        )
    return model


def _n_layers(model: Any) -> int:
    """Number of blocks, read from the hook names (``blocks.{i}.hook_resid_pre``) so wrapped models work too."""
    layers = {int(m.group(1)) for n in model.hook_dict if (m := re.match(r"blocks\.(\d+)\.hook_resid_pre$", n))}
    if not layers:
        raise ValueError(f"{type(model).__name__} has no 'blocks.{{i}}.hook_resid_pre' hook points: "
                         "the residual-stream helpers need the decoder hook names")
    return max(layers) + 1


def _has_hook(model: Any, name: str) -> bool:
    return name in model.hook_dict


def _refuse_post_norm(model: Any, purpose: str) -> None:
    """Post-LN models (BERT) normalise the residual between blocks: it is no sum of sub-layer outputs."""
    if _has_hook(model, "blocks.0.hook_normalized_resid_post"):
        raise ValueError(
            f"{purpose}: {type(model).__name__} normalises its residual stream after every block (post-LN, as "
            "BERT), so the stream is not a sum of the sub-layers' outputs and no decomposition of it is exact; "
            "use accumulated_resid, or the cached hook_attn_out / hook_mlp_out of a single block"
        )


def _embedding_parts(model: Any) -> tuple[tuple[str, str], ...]:
    """The embedding hooks that are part of the residual stream (shortformer positions are not)."""
    if getattr(model, "pos_embed_in_residual", True):
        return (("hook_embed", "embed"), ("hook_pos_embed", "pos_embed"))
    return (("hook_embed", "embed"),)


def _get(cache: Any, name: str, purpose: str) -> torch.Tensor:
    """``cache[name]``, or an error that says how to make a cache that has it."""
    if name not in cache:
        raise KeyError(
            f"{purpose} needs {name!r}, which is not in this cache: run_with_cache with names_filter "
            f"including {name!r}, or names_filter=None"
        )
    return cache[name]


def _pos_index(pos_slice: PosSlice) -> Any:
    """An index for one axis, as TransformerLens's ``Slice``: an int, a slice, ``(start, stop[, step])`` as a
    tuple, or a list / array / tensor of indices (a ``Slice`` object is unwrapped)."""
    if hasattr(pos_slice, "mode") and hasattr(pos_slice, "slice"):  # a TransformerLens-style Slice
        pos_slice = pos_slice.slice
    if pos_slice is None or isinstance(pos_slice, (int, slice)):
        return slice(None) if pos_slice is None else pos_slice
    if isinstance(pos_slice, tuple):
        return slice(*pos_slice)
    return torch.as_tensor(list(pos_slice) if not isinstance(pos_slice, torch.Tensor) else pos_slice,
                           dtype=torch.long)


def slice_positions(t: torch.Tensor, pos_slice: PosSlice, dim: int = -2) -> torch.Tensor:
    """``t`` indexed along its position axis ``dim`` (an int drops the axis, as TransformerLens's ``Slice``)."""
    if pos_slice is None:
        return t
    index = _pos_index(pos_slice)
    dim = dim % t.ndim
    if isinstance(index, torch.Tensor):
        return t.index_select(dim, index.to(t.device) % t.shape[dim])
    return t[(slice(None),) * dim + (index,)]


def _layer(model: Any, layer: int | None, name: str) -> int:
    """``layer`` resolved to ``0..n_layers`` (``None`` and ``-1`` mean ``n_layers``: the unembedding's input;
    other negative values count back from it as Python indices do, ``-2`` is the last block's input)."""
    n = _n_layers(model)
    if layer is None or layer == -1:
        return n
    if -n - 1 <= layer < -1:
        return n + 1 + layer
    if not 0 <= layer <= n:
        raise ValueError(f"{name}: layer must be in 0..{n} (or None / -1 for all layers), got {layer}")
    return layer


def _resid_at(cache: Any, model: Any, layer: int, mlp_input: bool, purpose: str) -> tuple[torch.Tensor, str]:
    """The residual stream a norm reads at ``layer`` (resid_pre, resid_mid with ``mlp_input``, final resid_post)."""
    n = _n_layers(model)
    if layer == n:
        return _get(cache, f"blocks.{n - 1}.hook_resid_post", purpose), "final_post"
    if mlp_input and _has_hook(model, f"blocks.{layer}.hook_resid_mid"):
        return _get(cache, f"blocks.{layer}.hook_resid_mid", purpose), f"{layer}_mid"
    return _get(cache, f"blocks.{layer}.hook_resid_pre", purpose), f"{layer}_pre"


def _finish(
    cache: Any, parts: list[torch.Tensor], labels: list[str], layer: int, mlp_input: bool,
    apply_ln: bool, pos_slice: PosSlice, return_labels: bool, recompute_ln: bool = False,
) -> Stack:
    """Slice positions, stack ``[component, batch, pos, d_model]``, optionally apply the reading norm."""
    stack = torch.stack([slice_positions(p, pos_slice) for p in parts])
    if apply_ln:
        stack = apply_ln_to_stack(cache, stack, layer, mlp_input, pos_slice, recompute_ln=recompute_ln)
    return (stack, labels) if return_labels else stack


# ---------------------------------------------------------------------------------------------- stacks
def accumulated_resid(
    cache: Any, layer: int | None = None, incl_mid: bool = False, apply_ln: bool = False,
    pos_slice: PosSlice = None, mlp_input: bool = False, return_labels: bool = False,
) -> Stack:
    """The residual stream as it accumulates: ``[component, batch, pos, d_model]``, labels ``"0_pre"``, ...

    As TransformerLens: ``blocks.{i}.hook_resid_pre`` for ``i <= layer`` (so the last row is the residual
    that ``layer`` reads), with ``incl_mid`` also ``hook_resid_mid`` of each block before ``layer`` where
    the block has one (parallel attention + MLP blocks have none), with ``mlp_input`` also the
    ``hook_resid_mid`` of ``layer`` itself (what its MLP reads). ``layer=None`` (or -1, or ``n_layers``)
    ends with the final ``hook_resid_post`` ("final_post"). ``apply_ln`` normalises the stack for the
    norm that reads ``layer``: for the final norm each row through the WHOLE norm with its own scale
    (as TransformerLens: ``model.unembed(row)`` is then that row's logit lens), for a block's norm
    linearly with the cached scale (:func:`apply_ln_to_stack`).
    """
    model = _model(cache)
    n = _n_layers(model)
    layer = _layer(model, layer, "accumulated_resid")
    parts: list[torch.Tensor] = []
    labels: list[str] = []
    for i in range(layer + 1):
        if i == n:
            parts.append(_get(cache, f"blocks.{n - 1}.hook_resid_post", "accumulated_resid"))
            labels.append("final_post")
            break
        parts.append(_get(cache, f"blocks.{i}.hook_resid_pre", "accumulated_resid"))
        labels.append(f"{i}_pre")
        mid = f"blocks.{i}.hook_resid_mid"
        if ((incl_mid and i < layer) or (mlp_input and i == layer)) and _has_hook(model, mid):
            parts.append(_get(cache, mid, "accumulated_resid(incl_mid=True)"))
            labels.append(f"{i}_mid")
    return _finish(cache, parts, labels, layer, mlp_input, apply_ln, pos_slice, return_labels, layer == n)


def decompose_resid(
    cache: Any, layer: int | None = None, mode: Literal["all", "attn", "mlp"] = "all", incl_embeds: bool = True,
    apply_ln: bool = False, pos_slice: PosSlice = None, mlp_input: bool = False, return_labels: bool = False,
) -> Stack:
    """The residual stream entering ``layer`` split into what wrote it: ``[component, batch, pos, d_model]``.

    Components: ``hook_embed`` ("embed") and, for learned positions, ``hook_pos_embed`` ("pos_embed"),
    then per block before ``layer`` its ``hook_attn_out`` ("{l}_attn_out") and ``hook_mlp_out``
    ("{l}_mlp_out"); ``mode`` keeps only attention or only MLP outputs. With ``mlp_input`` the
    attention output of ``layer`` itself is added (what its MLP reads; not for parallel blocks,
    whose MLP reads ``hook_resid_pre``). With ``mode="all"`` and ``incl_embeds`` the components sum
    to that residual exactly, for sequential and parallel blocks alike, and for Gemma 2 too: its
    post-norms sit before ``hook_attn_out`` / ``hook_mlp_out``, so those are what the residual adds.
    """
    if mode not in ("all", "attn", "mlp"):
        raise ValueError(f"mode must be 'all', 'attn' or 'mlp', got {mode!r}")
    model = _model(cache)
    _refuse_post_norm(model, "decompose_resid")
    n = _n_layers(model)
    layer = _layer(model, layer, "decompose_resid")
    if mlp_input and layer == n:
        raise ValueError("decompose_resid: mlp_input=True needs a block's layer (0..n_layers-1), not the final one")
    parts: list[torch.Tensor] = []
    labels: list[str] = []
    if incl_embeds:
        for name, label in _embedding_parts(model):
            if _has_hook(model, name):
                parts.append(_get(cache, name, "decompose_resid"))
                labels.append(label)
    sublayers = {"all": ("attn", "mlp"), "attn": ("attn",), "mlp": ("mlp",)}[mode]
    for i in range(layer):
        for kind in sublayers:
            if not _has_hook(model, f"blocks.{i}.hook_{kind}_out"):
                continue  # attention-only blocks have no MLP
            parts.append(_get(cache, f"blocks.{i}.hook_{kind}_out", "decompose_resid"))
            labels.append(f"{i}_{kind}_out")
    if mlp_input and mode != "mlp" and _has_hook(model, f"blocks.{layer}.hook_resid_mid"):
        parts.append(_get(cache, f"blocks.{layer}.hook_attn_out", "decompose_resid"))
        labels.append(f"{layer}_attn_out")
    if not parts:
        raise ValueError("decompose_resid: nothing to stack (layer=0 without embeddings?)")
    return _finish(cache, parts, labels, layer, mlp_input, apply_ln, pos_slice, return_labels)


def stack_head_results(
    cache: Any, layer: int | None = -1, return_labels: bool = False, incl_remainder: bool = False,
    pos_slice: PosSlice = None, apply_ln: bool = False,
) -> Stack:
    """Each attention head's write to the residual stream: ``[layer * head_index, batch, pos, d_model]``.

    Head ``h`` of block ``l`` ("L{l}H{h}") writes ``z[h] @ W_O[h]``, computed from the cached
    ``attn.hook_z`` and the model's ``W_O`` (or read from ``attn.hook_result`` when it was cached), for
    every block before ``layer`` (all blocks by default). A block's heads plus its ``b_O`` sum to its
    ``hook_attn_out``. Gemma 2's ``ln1_post`` normalises the summed heads; there each head is passed
    through it linearly (divided by its cached ``hook_scale``, times ``1 + weight``), so that the heads
    still sum to ``hook_attn_out`` (``b_O`` is absent in Gemma 2). ``incl_remainder`` adds
    "remainder": the residual at ``layer`` minus every head, so the stack sums to that residual.
    """
    model = _model(cache)
    layer = _layer(model, layer, "stack_head_results")
    parts: list[torch.Tensor] = []
    labels: list[str] = []
    for i in range(layer):
        heads = _head_results(cache, model, i, pos_slice)  # [batch, pos, head_index, d_model]
        parts.extend(heads.movedim(-2, 0))
        labels.extend(f"L{i}H{h}" for h in range(heads.shape[-2]))
    if incl_remainder:
        resid = slice_positions(_resid_at(cache, model, layer, False, "stack_head_results")[0], pos_slice)
        parts.append(resid - sum(parts) if parts else resid)
        labels.append("remainder")
    if not parts:  # layer 0: no heads before it, an empty stack as TransformerLens
        embed = slice_positions(_resid_at(cache, model, 0, False, "stack_head_results")[0], pos_slice)
        return (embed.new_zeros((0, *embed.shape)), labels) if return_labels else embed.new_zeros((0, *embed.shape))
    stack = torch.stack(parts)
    if apply_ln:
        stack = apply_ln_to_stack(cache, stack, layer, False, pos_slice)
    return (stack, labels) if return_labels else stack


def _head_results(cache: Any, model: Any, layer: int, pos_slice: PosSlice) -> torch.Tensor:
    """Per-head outputs of one block ``[batch, pos, head_index, d_model]``, after its post-norm if any."""
    result_name = f"blocks.{layer}.attn.hook_result"
    if result_name in cache:
        result = slice_positions(cache[result_name], pos_slice, dim=-3)
    else:
        z = slice_positions(_get(cache, f"blocks.{layer}.attn.hook_z", "stack_head_results"), pos_slice, dim=-3)
        w_o = model.get_submodule(f"blocks.{layer}.attn").W_O  # [head_index, d_head, d_model]
        result = torch.einsum("...phe,hem->...phm", z, w_o.to(z.dtype))
    post = f"blocks.{layer}.ln1_post"
    if _has_hook(model, f"{post}.hook_scale"):
        result = _linear_norm(cache, model, post, result.movedim(-2, 0), pos_slice).movedim(0, -2)
    return result


# ---------------------------------------------------------------------------------------------- norms, logits
def apply_ln_to_stack(
    cache: Any, residual_stack: torch.Tensor, layer: int | None = None, mlp_input: bool = False,
    pos_slice: PosSlice = None, batch_slice: PosSlice = None, has_batch_dim: bool = True,
    recompute_ln: bool = False,
) -> torch.Tensor:
    """What the norm reading this residual stream does to each component, linearly: ``[..., batch, pos, d_model]``.

    The norm is ``ln_final`` when ``layer`` is None, -1 or ``n_layers``, else ``blocks.{layer}.ln1``
    (``ln2`` with ``mlp_input``). Each component goes through the norm's ``linear_part`` with the norm's
    CACHED ``hook_scale`` (that of the full residual, so the map is linear and the components still sum):
    centred over ``d_model`` (LayerNorm only), divided by the scale, times the norm's weight (``1 + weight``
    for Gemma). The bias belongs to no component and is not added.

    Difference from TransformerLens: TL folds the norm weight into the next matrix (``W_U``, ``W_Q``...)
    when it loads a model, so its version only centres and divides. hookscope keeps HF's unfolded weights,
    so the weight is applied here (after weight processing the weight is 1 and both agree).

    ``pos_slice``: the positions the stack already holds (applied to the cached scale only).
    ``batch_slice``: applied to the stack's batch axis (axis 1, when ``has_batch_dim``) and to the scale.
    ``recompute_ln`` (final norm only, as TL): each component through the whole final norm with its OWN
    scale, bias included: not linear, the rows no longer sum, but each row of a stack of residual streams
    (:func:`accumulated_resid`) is then what the unembedding reads: the logit lens.
    """
    model = _model(cache)
    n = _n_layers(model)
    layer = _layer(model, layer, "apply_ln_to_stack")
    norm_name = "ln_final" if layer == n else f"blocks.{layer}.{'ln2' if mlp_input else 'ln1'}"
    batch_index = _pos_index(batch_slice)
    if has_batch_dim and batch_slice is not None and cache.has_batch_dim:
        residual_stack = _index(residual_stack, batch_index, 1)
    norm = model.get_submodule(norm_name)
    if recompute_ln and layer == n:
        if not _linear_form(norm, norm_name):
            return residual_stack  # no final norm
        out = norm.linear_part(residual_stack, norm.scale_of(residual_stack))
        return out if norm.offset is None else out + norm.offset.to(out.dtype)
    return _linear_norm(cache, model, norm_name, residual_stack, pos_slice, batch_slice)


def _index(t: torch.Tensor, index: Any, dim: int) -> torch.Tensor:
    dim = dim % t.ndim
    if isinstance(index, torch.Tensor):
        return t.index_select(dim, index.to(t.device) % t.shape[dim])
    return t[(slice(None),) * dim + (index,)]


def _linear_form(norm: Any, norm_name: str) -> bool:
    """True when ``norm`` describes itself as a fixed-scale linear map; False for an identity (no norm)."""
    if hasattr(norm, "linear_part") and hasattr(norm, "scale_of"):
        return True
    if isinstance(norm, torch.nn.Identity):
        return False
    raise TypeError(f"{norm_name} is a {type(norm).__name__}, which does not describe its linear action "
                    "(scale_of / linear_part): the residual helpers need hookscope's own norms")


def _linear_norm(
    cache: Any, model: Any, norm_name: str, stack: torch.Tensor, pos_slice: PosSlice, batch_slice: PosSlice = None,
) -> torch.Tensor:
    """``stack [..., batch, pos, d]`` through the norm ``norm_name`` with its cached scale, bias left out."""
    norm = model.get_submodule(norm_name)
    if not _linear_form(norm, norm_name):
        return stack
    scale = slice_positions(_get(cache, f"{norm_name}.hook_scale", "apply_ln_to_stack"), pos_slice)
    if batch_slice is not None and cache.has_batch_dim:
        scale = _index(scale, _pos_index(batch_slice), 0)
    if scale.ndim > stack.ndim or any(
        a not in (b, 1) for a, b in zip(scale.shape[::-1][1:], stack.shape[::-1][1:], strict=False)
    ):
        raise ValueError(
            f"the stack {tuple(stack.shape)} does not line up with {norm_name}.hook_scale {tuple(scale.shape)}: "
            "pass the pos_slice (and batch_slice) the stack was made with"
        )
    return norm.linear_part(stack, scale.to(stack.dtype))


def tokens_to_residual_directions(model: Any, tokens: Tokens) -> torch.Tensor:
    """The unembedding columns ``W_U[:, tokens]``: ``[d_model]`` for one token, else ``[*tokens.shape, d_model]``.

    ``tokens``: an id, a string that is one token, a list of ids or an integer tensor.
    """
    w_u = getattr(model, "W_U", None)
    if not isinstance(w_u, torch.Tensor):
        raise ValueError(f"{type(model).__name__} has no unembedding W_U: logit attribution needs an LM head")
    if isinstance(tokens, str):
        tokens = model.to_single_token(tokens)
    ids = torch.as_tensor(tokens, dtype=torch.long, device=w_u.device)
    if ids.numel() and not (0 <= int(ids.min()) and int(ids.max()) < w_u.shape[-1]):
        raise IndexError(f"token ids must lie in [0, {w_u.shape[-1]}), got {ids.min()}..{ids.max()}")
    return w_u.T[ids]  # [*tokens, d_model]


def logit_attrs(
    cache: Any, residual_stack: torch.Tensor, tokens: Tokens, incorrect_tokens: Tokens | None = None,
    pos_slice: PosSlice = None, batch_slice: PosSlice = None, has_batch_dim: bool = True,
) -> torch.Tensor:
    """Each component's direct contribution to the logit of ``tokens`` (minus ``incorrect_tokens``).

    As TransformerLens: the final norm is applied INSIDE (:func:`apply_ln_to_stack` with the cached
    ``ln_final.hook_scale``), so pass the raw stack (``decompose_resid()``, ``stack_head_results()``...),
    then ``@ W_U[:, tokens]``. Summed over components, plus the final norm's bias ``@ W_U`` and ``b_U``,
    this is the logits (before Gemma 2's final soft-cap, which is not linear).

    ``pos_slice`` / ``batch_slice``: how the stack was already sliced (``decompose_resid(pos_slice=-1)``):
    they select the matching cached scales; ``batch_slice`` is also applied to the stack, as TL does.
    ``tokens``: one id or string (``[component, batch, pos]``), ``[batch]`` ids, one per sequence
    (``[component, batch]``: on a stack that still has its position axis, scored at the last position),
    or ``[batch, pos]`` ids, one per position.
    """
    model = _model(cache)
    stack = apply_ln_to_stack(cache, residual_stack, None, False, pos_slice, batch_slice, has_batch_dim)
    directions = tokens_to_residual_directions(model, tokens)  # [*tokens, d_model]
    if incorrect_tokens is not None:
        wrong = tokens_to_residual_directions(model, incorrect_tokens)
        if wrong.shape != directions.shape:
            raise ValueError(f"tokens and incorrect_tokens must have the same shape: incorrect_tokens "
                             f"{tuple(wrong.shape[:-1])}, tokens {tuple(directions.shape[:-1])}")
        directions = directions - wrong
    batched = has_batch_dim and cache.has_batch_dim
    has_pos_axis = not isinstance(_pos_index(pos_slice), int)
    if directions.ndim == 2 and batched and has_pos_axis and stack.ndim == 4:
        stack = stack[..., -1, :]  # [component, batch, d_model]: one token per sequence, at the last position
    token_axes, stack_axes = tuple(directions.shape[:-1]), tuple(stack.shape[1:-1])  # [component, *axes, d]
    if token_axes and stack_axes[len(stack_axes) - len(token_axes):] != token_axes:
        raise ValueError(
            f"tokens {tuple(directions.shape[:-1])} do not line up with the residual stack {tuple(stack.shape)}: "
            "give one id, [batch] ids (last position) or [batch, pos] ids"
        )
    try:
        return (stack * directions.to(stack.dtype)).sum(-1)
    except RuntimeError as err:
        raise ValueError(
            f"tokens {tuple(directions.shape[:-1])} do not line up with the residual stack {tuple(stack.shape)}: "
            "give one id, [batch] ids (last position) or [batch, pos] ids"
        ) from err
