"""Activation patching with TransformerLens's names and semantics, batched.

``generic_activation_patch(model, corrupted_tokens, clean_cache, patching_metric, patch_setter,
activation_name, index_axis_names)`` returns, for every index (e.g. every ``(layer, pos)``), the metric of the
corrupted run with that piece of the activation replaced by its clean value, exactly as TransformerLens's
loop of single runs does; here many patched runs share one forward batch (chunked to a memory budget) and,
on native decoders, each patched run joins the batch at the first block it patches. With ``metric_hook=``
the metric reads an intermediate activation and every forward stops there. The ``get_act_patch_*`` helpers are
the same function with a fixed activation, setter and index axes.

Works on any hookscope model that has the hook names: native decoders, ``wrap()``'ed models (canonical
names), and BERT / T5 / ViT / Whisper, where ``activation_name`` may be a template with ``{layer}``
(``"encoder.{layer}.hook_resid_pre"``) and ``corrupted_tokens`` a dict of keyword inputs
(``{"pixel_values": ...}``, ``{"input_ids": ..., "decoder_input_ids": ...}``). The metric receives the
logits of one run (``[batch, ...]``: the corrupted input's own batch).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F

from hookscope.analysis.patch_runner import DEFAULT_MEMORY_BUDGET, PatchRun, PatchRunner, check_names
from hookscope.names import get_act_name

_HEAD_VECTORS = {"q", "k", "v", "z", "result", "rot_q", "rot_k"}
_HEAD_PATTERNS = {"pattern", "attn_scores"}


def act_name(activation_name: str, layer: int) -> str:
    """``get_act_name(activation_name, layer)``, or a ``{layer}`` template filled in."""
    if "{layer}" in activation_name:
        return activation_name.format(layer=layer)
    return get_act_name(activation_name, layer)


def _n_layers(model: Any, activation_name: str) -> int:
    n = 0
    while act_name(activation_name, n) in model.hook_dict:
        n += 1
    if n == 0:
        raise KeyError(
            f"{type(model).__name__} has no hook {act_name(activation_name, 0)!r}: "
            + model.unknown_name_message(act_name(activation_name, 0))
        )
    return n


def _axis_ranges(model: Any, clean_cache: Any, activation_name: str) -> dict[str, int]:
    """Sizes of every index axis, read from the model's hook names and the clean activation's shape."""
    n_layers = _n_layers(model, activation_name)
    act = clean_cache[act_name(activation_name, 0)]
    base = activation_name.split(".")[-1].removeprefix("hook_")
    ranges = {"layer": n_layers, "pos": act.shape[1], "src_pos": act.shape[1], "dest_pos": act.shape[1]}
    if base in _HEAD_PATTERNS:  # [batch, head_index, query_pos, key_pos]
        ranges.update(head=act.shape[1], head_index=act.shape[1], dest_pos=act.shape[2], src_pos=act.shape[3],
                      pos=act.shape[2])
    elif base in _HEAD_VECTORS:  # [batch, pos, head_index, d_head] (k, v: key/value heads)
        ranges.update(head=act.shape[2], head_index=act.shape[2])
    return ranges


def _indices(
    model: Any, clean_cache: Any, activation_name: str, index_axis_names: Sequence[str] | None, index_df: Any
) -> tuple[list[list[int]], tuple[int, ...] | None]:
    """(rows of indices, output shape or None when flattened)."""
    if index_df is None:
        if index_axis_names is None:
            raise ValueError("pass index_axis_names (e.g. ('layer', 'pos')) or index_df")
        ranges = _axis_ranges(model, clean_cache, activation_name)
        unknown = [a for a in index_axis_names if a not in ranges]
        if unknown:
            raise ValueError(f"unknown index axes {unknown}; known: {sorted(ranges)}")
        shape = tuple(ranges[a] for a in index_axis_names)
        return [list(r) for r in itertools.product(*(range(s) for s in shape))], shape
    if index_axis_names is not None:
        raise ValueError("pass index_axis_names or index_df, not both")
    values = index_df.values if hasattr(index_df, "values") else index_df
    listed = values.tolist() if hasattr(values, "tolist") else list(values)
    return [[int(v) for v in (row if isinstance(row, (list, tuple)) else [row])] for row in listed], None


def generic_activation_patch(
    model: Any,
    corrupted_tokens: Any,
    clean_cache: Any,
    patching_metric: Callable[[torch.Tensor], Any],
    patch_setter: Callable[[torch.Tensor, Sequence[int], torch.Tensor], torch.Tensor],
    activation_name: str,
    index_axis_names: Sequence[str] | None = None,
    index_df: Any = None,
    return_index_df: bool = False,
    *,
    batch_size: int | None = None,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    logits_to_keep: int | None = None,
    metric_hook: str | Sequence[str] | None = None,
) -> Any:
    """The metric of the corrupted run with each index's piece of ``activation_name`` set to its clean value.

    Args:
        model: a hookscope model.
        corrupted_tokens: the corrupted input ``[batch, pos]`` (or a dict of keyword inputs).
        clean_cache: the clean run's cache (holding ``activation_name`` for every layer).
        patching_metric: logits of one run ``[batch, ...]`` -> a scalar.
        patch_setter: ``(corrupted_activation, index, clean_activation) -> patched`` on one run's rows (may
            edit in place), as TransformerLens's setters.
        activation_name: a short name (``"resid_pre"``, ``"z"``, ``"pattern"``), or a ``{layer}`` template.
        index_axis_names: axes to sweep (``"layer"`` first), e.g. ``("layer", "pos", "head")``.
        index_df: explicit indices instead (a pandas DataFrame or a ``[n, k]`` array); the result is flat.
        return_index_df: also return the indices as a pandas DataFrame.
        batch_size: patched runs per forward (None: fit ``memory_budget``; 1: TransformerLens's loop).
        memory_budget: bytes of activations one batch may hold.
        logits_to_keep: native decoders: unembed only the last this many positions (for a metric that reads
            only those; it then receives ``[batch, logits_to_keep, d_vocab]``).
        metric_hook: a hook name (or several) whose activation the metric receives instead of the logits
            (a dict name -> activation for several): each patched forward stops once it has fired, and
            patches of later blocks are not run (they give the corrupted run's metric, as a full run would).

    Returns:
        ``[*axis sizes]`` (or ``[n_indices]`` with ``index_df``), float64 for a float64 model else float32.
    """
    rows, shape = _indices(model, clean_cache, activation_name, index_axis_names, index_df)
    names = [act_name(activation_name, row[0]) for row in rows]
    check_names(model, sorted(set(names)))
    missing = [n for n in sorted(set(names)) if n not in clean_cache]
    if missing:
        raise KeyError(f"the clean cache lacks {missing[:3]}: run_with_cache with these names")

    def edit(index: list[int], clean: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        return lambda act: patch_setter(act, index, clean)

    runs = [PatchRun(edits={name: edit(row, clean_cache[name])}) for row, name in zip(rows, names, strict=True)]
    runner = PatchRunner(model, corrupted_tokens, patching_metric, batch_size=batch_size, memory_budget=memory_budget,
                         logits_to_keep=logits_to_keep, metric_hook=metric_hook)
    dtype = torch.float64 if _model_dtype(model) == torch.float64 else torch.float32
    out = torch.tensor(runner.run(runs), dtype=dtype, device=_device(model))
    out = out if shape is None else out.reshape(shape)
    if not return_index_df:
        return out
    return out, _as_dataframe(rows, index_axis_names, index_df)


def _as_dataframe(rows: list[list[int]], axis_names: Sequence[str] | None, index_df: Any) -> Any:
    if index_df is not None:
        return index_df
    try:
        import pandas as pd
    except ImportError as err:
        raise ImportError("return_index_df=True needs pandas (pip install pandas)") from err
    return pd.DataFrame(rows, columns=list(axis_names or ()))


def _model_dtype(model: Any) -> torch.dtype:
    p = next(model.parameters(), None)
    return p.dtype if p is not None else torch.float32


def _device(model: Any) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


# ---------------------------------------------------------------------------------------------- setters
def layer_pos_patch_setter(corrupted_activation: torch.Tensor, index: Sequence[int], clean_activation: torch.Tensor
                           ) -> torch.Tensor:
    """index = [layer, pos] on ``[batch, pos, ...]`` activations."""
    _, pos = index
    corrupted_activation[:, pos, ...] = clean_activation[:, pos, ...]
    return corrupted_activation


def layer_pos_head_vector_patch_setter(
    corrupted_activation: torch.Tensor, index: Sequence[int], clean_activation: torch.Tensor
) -> torch.Tensor:
    """index = [layer, pos, head_index] on ``[batch, pos, head_index, ...]`` (q, k, v, z, result)."""
    _, pos, head = index
    corrupted_activation[:, pos, head] = clean_activation[:, pos, head]
    return corrupted_activation


def layer_head_vector_patch_setter(
    corrupted_activation: torch.Tensor, index: Sequence[int], clean_activation: torch.Tensor
) -> torch.Tensor:
    """index = [layer, head_index], every position, on ``[batch, pos, head_index, ...]``."""
    _, head = index
    corrupted_activation[:, :, head] = clean_activation[:, :, head]
    return corrupted_activation


def layer_head_pattern_patch_setter(
    corrupted_activation: torch.Tensor, index: Sequence[int], clean_activation: torch.Tensor
) -> torch.Tensor:
    """index = [layer, head_index] on ``[batch, head_index, dest_pos, src_pos]`` (patterns, scores)."""
    _, head = index
    corrupted_activation[:, head] = clean_activation[:, head]
    return corrupted_activation


def layer_head_pos_pattern_patch_setter(
    corrupted_activation: torch.Tensor, index: Sequence[int], clean_activation: torch.Tensor
) -> torch.Tensor:
    """index = [layer, head_index, dest_pos] on patterns."""
    _, head, dest = index
    corrupted_activation[:, head, dest, :] = clean_activation[:, head, dest, :]
    return corrupted_activation


def layer_head_dest_src_pos_pattern_patch_setter(
    corrupted_activation: torch.Tensor, index: Sequence[int], clean_activation: torch.Tensor
) -> torch.Tensor:
    """index = [layer, head_index, dest_pos, src_pos] on patterns."""
    _, head, dest, src = index
    corrupted_activation[:, head, dest, src] = clean_activation[:, head, dest, src]
    return corrupted_activation


# ---------------------------------------------------------------------------------------------- TL helpers
def _specialise(setter: Callable, name: str, axes: tuple[str, ...], doc: str) -> Any:
    fn = partial(generic_activation_patch, patch_setter=setter, activation_name=name, index_axis_names=axes)
    fn.__doc__ = f"{doc} Result ``[{', '.join(axes)}]``; see :func:`generic_activation_patch`."
    return fn


_POS = ("layer", "pos")
get_act_patch_resid_pre = _specialise(layer_pos_patch_setter, "resid_pre", _POS, "Residual stream entering each block.")
get_act_patch_resid_mid = _specialise(layer_pos_patch_setter, "resid_mid", _POS, "Residual between attention and MLP.")
get_act_patch_attn_out = _specialise(layer_pos_patch_setter, "attn_out", _POS, "Each attention layer's output.")
get_act_patch_mlp_out = _specialise(layer_pos_patch_setter, "mlp_out", _POS, "Each MLP layer's output.")
_BY_POS, _ALL_POS = ("layer", "pos", "head"), ("layer", "head")
get_act_patch_attn_head_out_by_pos = _specialise(layer_pos_head_vector_patch_setter, "z", _BY_POS, "Head outputs (z).")
get_act_patch_attn_head_q_by_pos = _specialise(layer_pos_head_vector_patch_setter, "q", _BY_POS, "Head queries.")
get_act_patch_attn_head_k_by_pos = _specialise(layer_pos_head_vector_patch_setter, "k", _BY_POS,
                                               "Keys (GQA: per key/value head).")
get_act_patch_attn_head_v_by_pos = _specialise(layer_pos_head_vector_patch_setter, "v", _BY_POS,
                                               "Values (GQA: per key/value head).")
get_act_patch_attn_head_pattern_by_pos = _specialise(
    layer_head_pos_pattern_patch_setter, "pattern", ("layer", "head_index", "dest_pos"), "Pattern rows.")
get_act_patch_attn_head_pattern_dest_src_pos = _specialise(
    layer_head_dest_src_pos_pattern_patch_setter, "pattern", ("layer", "head_index", "dest_pos", "src_pos"),
    "Single pattern entries.")
get_act_patch_attn_head_out_all_pos = _specialise(layer_head_vector_patch_setter, "z", _ALL_POS, "Head outputs.")
get_act_patch_attn_head_q_all_pos = _specialise(layer_head_vector_patch_setter, "q", _ALL_POS, "Head queries.")
get_act_patch_attn_head_k_all_pos = _specialise(layer_head_vector_patch_setter, "k", _ALL_POS, "Keys.")
get_act_patch_attn_head_v_all_pos = _specialise(layer_head_vector_patch_setter, "v", _ALL_POS, "Values.")
get_act_patch_attn_head_pattern_all_pos = _specialise(
    layer_head_pattern_patch_setter, "pattern", ("layer", "head_index"), "Whole patterns.")


def _pad_heads(t: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Key/value results of a GQA model padded with zeros to ``n_heads`` (as TransformerLens stacks them)."""
    return F.pad(t, (0, n_heads - t.shape[-1]))


def get_act_patch_attn_head_all_pos_every(model: Any, corrupted_tokens: Any, clean_cache: Any, metric: Callable,
                                          **kwargs: Any) -> torch.Tensor:
    """``[5, n_layers, n_heads]``: output, query, key, value and pattern patching for every head, all positions."""
    out = get_act_patch_attn_head_out_all_pos(model, corrupted_tokens, clean_cache, metric, **kwargs)
    n = out.shape[-1]
    parts = [out, get_act_patch_attn_head_q_all_pos(model, corrupted_tokens, clean_cache, metric, **kwargs)]
    for fn in (get_act_patch_attn_head_k_all_pos, get_act_patch_attn_head_v_all_pos):
        parts.append(_pad_heads(fn(model, corrupted_tokens, clean_cache, metric, **kwargs), n))
    parts.append(get_act_patch_attn_head_pattern_all_pos(model, corrupted_tokens, clean_cache, metric, **kwargs))
    return torch.stack(parts)


def get_act_patch_attn_head_by_pos_every(model: Any, corrupted_tokens: Any, clean_cache: Any, metric: Callable,
                                         **kwargs: Any) -> torch.Tensor:
    """``[5, n_layers, pos, n_heads]``: as :func:`get_act_patch_attn_head_all_pos_every`, per position."""
    out = get_act_patch_attn_head_out_by_pos(model, corrupted_tokens, clean_cache, metric, **kwargs)
    n = out.shape[-1]
    parts = [out, get_act_patch_attn_head_q_by_pos(model, corrupted_tokens, clean_cache, metric, **kwargs)]
    for fn in (get_act_patch_attn_head_k_by_pos, get_act_patch_attn_head_v_by_pos):
        parts.append(_pad_heads(fn(model, corrupted_tokens, clean_cache, metric, **kwargs), n))
    pattern = get_act_patch_attn_head_pattern_by_pos(model, corrupted_tokens, clean_cache, metric, **kwargs)
    parts.append(pattern.permute(0, 2, 1))  # [layer, dest_pos, head]
    return torch.stack(parts)


def get_act_patch_block_every(model: Any, corrupted_tokens: Any, clean_cache: Any, metric: Callable,
                              **kwargs: Any) -> torch.Tensor:
    """``[3, n_layers, pos]``: residual stream (resid_pre), attention output and MLP output patching."""
    return torch.stack([fn(model, corrupted_tokens, clean_cache, metric, **kwargs) for fn in (
        get_act_patch_resid_pre, get_act_patch_attn_out, get_act_patch_mlp_out)])
