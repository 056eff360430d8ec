"""Input checks every family shares: one clear error before a bad input fails deep inside a model.

Pure functions of the tensors they check (and the weight that says where and in which dtype the model
lives); each family calls them with its own argument names so the messages name what the user passed.
"""

from __future__ import annotations

from typing import Any

import torch


def _is_are(name: str) -> tuple[str, str]:
    """Verb and pronoun for ``name``: "tokens are ... move them", "input is ... move it"."""
    return ("are", "them") if name.endswith("s") else ("is", "it")


def check_integer_ids(
    name: str, ids: Any, kind: str = "integer token ids", hint: str = "; convert with .long()"
) -> None:
    """``ids`` index embedding tables: an integer tensor (a bool or float one would index wrongly or fail deep)."""
    if not isinstance(ids, torch.Tensor):
        raise TypeError(f"{name} must be a tensor of integer ids, got {type(ids).__name__}")
    if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        raise TypeError(f"{name} must be {kind}, got {ids.dtype}{hint}")


def batched_ids(name: str, ids: torch.Tensor) -> torch.Tensor:
    """Ids ``[batch, pos]``; ``[pos]`` gets a batch axis, any other rank is an error."""
    if ids.ndim not in (1, 2):
        raise ValueError(f"{name} must be [batch, pos] or [pos], got shape {tuple(ids.shape)}")
    return ids[None] if ids.ndim == 1 else ids


def check_device(name: str, t: torch.Tensor, weight: torch.Tensor, dispatched: bool = False) -> None:
    """``t`` must be where the model's ``weight`` is, unless accelerate dispatched the model over devices."""
    if t.device != weight.device and not dispatched:
        verb, pronoun = _is_are(name)
        raise ValueError(f"{name} {verb} on {t.device} but the model is on {weight.device}; move {pronoun} with .to()")


def check_same_device(name: str, t: torch.Tensor, other_name: str, other: torch.Tensor) -> None:
    """Two inputs that go together (ids and their mask) must be on one device."""
    if t.device != other.device:
        verb, _ = _is_are(name)
        other_verb, _ = _is_are(other_name)
        raise ValueError(f"{name} {verb} on {t.device} but the {other_name} {other_verb} on {other.device}")


def check_same_shape(name: str, t: torch.Tensor, shape: tuple[int, ...], of: str) -> None:
    """A mask (or token types) must have exactly the shape of the ids it covers (``of`` names them)."""
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name} has shape {tuple(t.shape)} but {of} have shape {tuple(shape)}; they must match")


def check_residual(x: Any, weight: torch.Tensor) -> torch.Tensor:
    """With ``start_at_layer``, the input is a residual stream ``[batch, pos, d_model]`` of the model's dtype
    (``weight``'s last axis is ``d_model``)."""
    d_model = weight.shape[-1]
    if not isinstance(x, torch.Tensor) or x.ndim != 3 or x.shape[-1] != d_model:
        got = f"shape {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"with start_at_layer, input is the residual stream [batch, pos, {d_model}]; got {got}")
    if x.dtype != weight.dtype:
        raise TypeError(f"the residual stream is {x.dtype} but the model is {weight.dtype}")
    return x


def check_encoder_output(name: str, t: torch.Tensor, weight: torch.Tensor, pos_axis: str = "enc_pos") -> None:
    """An encoder output passed back in: ``[batch, pos_axis, d_model]`` (what ``encode()`` returns) in the
    model's dtype."""
    d_model = weight.shape[-1]
    if t.ndim != 3 or t.shape[-1] != d_model:
        raise ValueError(f"{name} must be [batch, {pos_axis}, {d_model}] (what encode() returns), "
                         f"got shape {tuple(t.shape)}")
    if t.dtype != weight.dtype:
        raise TypeError(f"{name} is {t.dtype} but the model is {weight.dtype}")
