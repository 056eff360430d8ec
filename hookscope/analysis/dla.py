"""Logit-difference metrics and direct logit attribution (DLA) per head and per neuron.

Built on :mod:`hookscope.analysis.residual` (components through the final norm linearly, with the cached
scale), so the attributions are exact on the model's own unfolded weights: summed over every component
they give the logit difference minus what the biases add. ``answer_tokens`` are ``[batch, 2]`` ids
(correct, incorrect) read at the last position, as in the IOI tutorials.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from hookscope.analysis.residual import (
    _get,
    _has_hook,
    _linear_norm,
    _model,
    _n_layers,
    apply_ln_to_stack,
    stack_head_results,
    tokens_to_residual_directions,
)


def _check_answers(answer_tokens: torch.Tensor) -> torch.Tensor:
    answer_tokens = torch.as_tensor(answer_tokens)
    if answer_tokens.ndim != 2 or answer_tokens.shape[1] != 2:
        raise ValueError(f"answer_tokens must be [batch, 2] (correct, incorrect), got {tuple(answer_tokens.shape)}")
    return answer_tokens


def logit_diff(logits: torch.Tensor, answer_tokens: torch.Tensor, per_prompt: bool = False) -> torch.Tensor:
    """``logit[correct] - logit[incorrect]`` at the last position, averaged over the batch (or ``[batch]``)."""
    answer_tokens = _check_answers(answer_tokens).to(logits.device)
    last = logits[:, -1, :]  # [batch, d_vocab]
    picked = last.gather(-1, answer_tokens)  # [batch, 2]
    diff = picked[:, 0] - picked[:, 1]
    return diff if per_prompt else diff.mean()


def normalized_logit_diff_metric(
    answer_tokens: torch.Tensor, clean_value: float, corrupted_value: float
) -> Callable[[torch.Tensor], torch.Tensor]:
    """A patching metric: 0 at the corrupted logit difference, 1 at the clean one."""
    span = clean_value - corrupted_value
    if span == 0:
        raise ValueError("clean and corrupted logit differences are equal: the normalised metric is undefined")

    def metric(logits: torch.Tensor) -> torch.Tensor:
        return (logit_diff(logits, answer_tokens) - corrupted_value) / span

    return metric


def logit_diff_directions(model: Any, answer_tokens: torch.Tensor) -> torch.Tensor:
    """``W_U[:, correct] - W_U[:, incorrect]``: ``[batch, d_model]``."""
    answer_tokens = _check_answers(answer_tokens)
    directions = tokens_to_residual_directions(model, answer_tokens)  # [batch, 2, d_model]
    return directions[:, 0] - directions[:, 1]


def residual_stack_to_logit_diff(
    residual_stack: torch.Tensor, cache: Any, logit_diff_directions: torch.Tensor, pos_slice: int | None = -1
) -> torch.Tensor:
    """Each component's direct contribution to the mean logit difference: ``[component]``.

    ``residual_stack``: ``[component, batch, pos, d_model]`` (taken at ``pos_slice``) or, with
    ``pos_slice=None``, already at the answer position ``[component, batch, d_model]``.
    """
    if pos_slice is not None:
        stack = apply_ln_to_stack(cache, residual_stack[..., pos_slice, :][..., None, :], None,
                                  pos_slice=[pos_slice])[..., 0, :]
    else:
        stack = residual_stack
    directions = logit_diff_directions.to(stack.dtype)
    if stack.shape[-2:] != directions.shape:
        raise ValueError(f"stack {tuple(stack.shape)} and directions {tuple(directions.shape)} do not line up")
    return (stack * directions).sum(-1).mean(-1)


def head_logit_diff_attribution(cache: Any, answer_tokens: torch.Tensor) -> torch.Tensor:
    """Direct logit-difference attribution of every head at the last position: ``[n_layers, n_heads]``."""
    model = _model(cache)
    stack = stack_head_results(cache, layer=-1, pos_slice=[-1])  # [layer*head, batch, 1, d_model]
    stack = apply_ln_to_stack(cache, stack, None, pos_slice=[-1])[..., 0, :]
    scores = (stack * logit_diff_directions(model, answer_tokens).to(stack.dtype)).sum(-1).mean(-1)
    return scores.reshape(_n_layers(model), -1)


def neuron_logit_diff_attribution(cache: Any, layer: int, answer_tokens: torch.Tensor) -> torch.Tensor:
    """Direct logit-difference attribution of each neuron of block ``layer``'s MLP at the last position:
    ``[d_mlp]`` (``hook_post[n] * W_out[n]``, through a post-norm and the final norm linearly)."""
    model = _model(cache)
    if not 0 <= layer < _n_layers(model):
        raise ValueError(f"layer must be in 0..{_n_layers(model) - 1}, got {layer}")
    post = _get(cache, f"blocks.{layer}.mlp.hook_post", "neuron_logit_diff_attribution")[:, -1]  # [batch, d_mlp]
    w_out = model.get_submodule(f"blocks.{layer}.mlp").W_out  # [d_mlp, d_model]
    writes = post.T[:, :, None] * w_out.to(post.dtype)[:, None, :]  # [d_mlp, batch, d_model]
    writes = writes[:, :, None, :]  # [d_mlp, batch, 1, d_model]
    if _has_hook(model, f"blocks.{layer}.ln2_post.hook_scale"):
        writes = _linear_norm(cache, model, f"blocks.{layer}.ln2_post", writes, [-1])
    writes = apply_ln_to_stack(cache, writes, None, pos_slice=[-1])[..., 0, :]
    return (writes * logit_diff_directions(model, answer_tokens).to(writes.dtype)).sum(-1).mean(-1)
