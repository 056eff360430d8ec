"""Per-neuron residual contributions and TransformerLens's full residual decomposition.

Neuron ``n`` of block ``l`` writes ``mlp.hook_post[..., n] * W_out[n]`` to the residual stream (through
the block's post-MLP norm, linearly with its cached scale, where the model has one: Gemma 2). With the
attention heads (:func:`~hookscope.analysis.residual.stack_head_results`), the embeddings and the output
biases (:func:`accumulated_bias`), the components of :func:`get_full_resid_decomposition` sum to the
residual stream the chosen layer reads: the tests check that identity in float64.
"""

from __future__ import annotations

from typing import Any

import torch

from hookscope.analysis.residual import (
    PosSlice,
    Stack,
    _embedding_parts,
    _get,
    _has_hook,
    _index,
    _layer,
    _linear_norm,
    _model,
    _n_layers,
    _pos_index,
    _refuse_post_norm,
    _resid_at,
    apply_ln_to_stack,
    decompose_resid,
    slice_positions,
    stack_head_results,
)


def get_neuron_results(
    cache: Any, layer: int, neuron_slice: PosSlice = None, pos_slice: PosSlice = None
) -> torch.Tensor:
    """What each neuron of block ``layer`` writes: ``[batch, pos, neuron, d_model]`` (not cached: cheap to redo)."""
    model = _model(cache)
    layer = _layer(model, layer, "get_neuron_results")
    if layer >= _n_layers(model):
        raise ValueError(f"get_neuron_results: layer must be a block (0..{_n_layers(model) - 1}), got {layer}")
    acts = slice_positions(_get(cache, f"blocks.{layer}.mlp.hook_post", "get_neuron_results"), pos_slice)
    w_out = model.get_submodule(f"blocks.{layer}.mlp").W_out  # [d_mlp, d_model]
    if neuron_slice is not None:
        index = _pos_index(neuron_slice)
        acts, w_out = _index(acts, index, -1), _index(w_out, index, 0)
        if isinstance(index, int):
            acts, w_out = acts[..., None], w_out[None]
    result = acts[..., None] * w_out.to(acts.dtype)  # [batch, pos, neuron, d_model]
    post = f"blocks.{layer}.ln2_post"
    if _has_hook(model, f"{post}.hook_scale"):
        result = _linear_norm(cache, model, post, result.movedim(-2, 0), pos_slice).movedim(0, -2)
    return result


def stack_neuron_results(
    cache: Any, layer: int | None, pos_slice: PosSlice = None, neuron_slice: PosSlice = None,
    return_labels: bool = False, incl_remainder: bool = False, apply_ln: bool = False,
) -> Stack:
    """Every neuron's write for blocks before ``layer``: ``[layer * neuron, batch, pos, d_model]``, labels "L0N0"..."""
    model = _model(cache)
    layer = _layer(model, layer, "stack_neuron_results")
    parts: list[torch.Tensor] = []
    labels: list[str] = []
    for i in range(layer):
        res = get_neuron_results(cache, i, neuron_slice, pos_slice).movedim(-2, 0)  # [neuron, batch, pos, d]
        ids = torch.arange(model.get_submodule(f"blocks.{i}.mlp").W_out.shape[0])
        if neuron_slice is not None:
            ids = _index(ids, _pos_index(neuron_slice), 0).reshape(-1)
        parts.append(res)
        labels.extend(f"L{i}N{int(n)}" for n in ids)
    stack = torch.cat(parts) if parts else None
    if incl_remainder:
        resid = slice_positions(_resid_at(cache, model, layer, False, "stack_neuron_results")[0], pos_slice)
        rest = (resid - stack.sum(0) if stack is not None else resid)[None]
        stack = rest if stack is None else torch.cat([stack, rest])
        labels.append("remainder")
    if stack is None:
        embed = slice_positions(_resid_at(cache, model, 0, False, "stack_neuron_results")[0], pos_slice)
        stack = embed.new_zeros((0, *embed.shape))
    if apply_ln:
        stack = apply_ln_to_stack(cache, stack, layer, False, pos_slice)
    return (stack, labels) if return_labels else stack


def accumulated_bias(model: Any, layer: int, mlp_input: bool = False, include_mlp_biases: bool = True) -> torch.Tensor:
    """The attention output biases ``b_O`` (and MLP ``b_out``) the blocks before ``layer`` add: ``[d_model]``.

    ``mlp_input``: also ``b_O`` of ``layer`` itself (what its MLP reads). A model whose output biases pass
    through a post-norm (non-zero biases and ``ln1_post``) has no constant bias term: refused.
    """
    layer = _layer(model, layer, "accumulated_bias")
    w = model.W_E
    total = torch.zeros(w.shape[-1], dtype=w.dtype, device=w.device)
    for i in range(layer + int(mlp_input)):
        block = model.get_submodule(f"blocks.{i}")
        biases = [block.attn.b_O]
        if include_mlp_biases and i < layer and getattr(block, "mlp", None) is not None:
            biases.append(block.mlp.b_out)
        for b in biases:
            if _has_hook(model, f"blocks.{i}.ln1_post.hook_scale") and bool(b.any()):
                raise ValueError("accumulated_bias: this model normalises each sub-layer's output (post-norms), "
                                 "so a non-zero output bias is no constant term of the residual stream")
            total = total + b.to(total.dtype)
    return total


def get_full_resid_decomposition(
    cache: Any, layer: int | None = None, mlp_input: bool = False, expand_neurons: bool = True,
    apply_ln: bool = False, pos_slice: PosSlice = None, return_labels: bool = False,
) -> Stack:
    """Every head, every neuron (or each MLP), the embeddings and the biases: they sum to the residual that
    ``layer`` reads (its MLP with ``mlp_input``). Rows: heads, neurons / MLPs, "embed", "pos_embed", "bias"."""
    model = _model(cache)
    _refuse_post_norm(model, "get_full_resid_decomposition")
    layer = _layer(model, layer, "get_full_resid_decomposition")
    mid = mlp_input and _has_hook(model, f"blocks.{layer}.hook_resid_mid")
    heads, labels = stack_head_results(cache, layer + int(mid), return_labels=True, pos_slice=pos_slice) \
        if layer + int(mid) > 0 else (None, [])
    parts = [heads] if heads is not None else []
    if layer > 0 and _has_hook(model, "blocks.0.mlp.hook_post"):  # attention-only models have no MLP
        if expand_neurons:
            neurons, neuron_labels = stack_neuron_results(cache, layer, pos_slice, return_labels=True)
        else:
            neurons, neuron_labels = decompose_resid(cache, layer, mode="mlp", incl_embeds=False,
                                                     pos_slice=pos_slice, return_labels=True)
        parts.append(neurons)
        labels = [*labels, *neuron_labels]
    for name, label in _embedding_parts(model):
        if _has_hook(model, name):
            parts.append(slice_positions(_get(cache, name, "get_full_resid_decomposition"), pos_slice)[None])
            labels.append(label)
    bias = accumulated_bias(model, layer, mid, include_mlp_biases=expand_neurons)
    parts.append(bias.to(parts[-1].dtype).expand_as(parts[-1]))
    labels.append("bias")
    stack = torch.cat(parts)
    if apply_ln:
        stack = apply_ln_to_stack(cache, stack, layer, mlp_input, pos_slice)
    return (stack, labels) if return_labels else stack
