"""Steering: add a direction to one activation while the model runs (generation, transcription, classification).

Directions come from contrastive inputs (the difference of mean activations, :func:`mean_difference`) or from
an SAE latent's decoder row (:func:`feature_direction`). :func:`steered` keeps the hook on for a ``with``
block, so any call inside (``model.generate``, ``model.transcribe``, ``model(images)``) is steered.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

from hookscope.hooks import HookedModule
from hookscope.sae.sae import SAE
from hookscope.sae.store import RunFn, SelectFn, activations_at


@torch.no_grad()
def mean_activation(
    model: HookedModule, hook_name: str, inputs: Sequence[Any], run: RunFn | None = None,
    skip_first_positions: int = 0, select: SelectFn | None = None,
) -> torch.Tensor:
    """The mean over inputs of each input's mean activation over positions ``[d]`` (each input run alone).

    ``select(activation, input)`` picks the rows to average (e.g. only the speech frames of a padded clip).
    Accumulated in float64; returned in float64 (cast it to the model's dtype as needed).
    """
    return _mean_activation(model, hook_name, inputs, run, skip_first_positions, select)[0]


def _mean_activation(
    model: HookedModule, hook_name: str, inputs: Sequence[Any], run: RunFn | None, skip_first_positions: int,
    select: SelectFn | None,
) -> tuple[torch.Tensor, torch.dtype]:
    """:func:`mean_activation` in float64, and the dtype of the activations it averaged."""
    if len(inputs) == 0:
        raise ValueError("mean_activation needs at least one input")
    rows = [activations_at(model, hook_name, x, run, select, skip_first_positions=skip_first_positions)
            for x in inputs]
    return torch.stack([r.double().mean(0) for r in rows]).mean(0), rows[0].dtype


def mean_difference(
    model: HookedModule, hook_name: str, positive: Sequence[Any], negative: Sequence[Any],
    run: RunFn | None = None, skip_first_positions: int = 0, select: SelectFn | None = None,
) -> torch.Tensor:
    """A steering vector ``[d]``: mean activation over ``positive`` inputs minus over ``negative`` ones.

    Each input (a prompt, an audio's features, an image...) is run on its own and averaged over its
    positions first, so inputs of different lengths weigh the same. Not normalised: its norm is the
    size of the difference in the model's own units, and in the activation's dtype (float32 for a
    bfloat16 or float16 model, whose rounding would distort a small difference).
    """
    pos, dtype = _mean_activation(model, hook_name, positive, run, skip_first_positions, select)
    neg, _ = _mean_activation(model, hook_name, negative, run, skip_first_positions, select)
    return (pos - neg).to(torch.promote_types(dtype, torch.float32))


def feature_direction(sae: SAE, index: int, unit: bool = True) -> torch.Tensor:
    """SAE latent ``index``'s decoder row ``[d_in]`` (unit norm by default): what the latent writes."""
    if not 0 <= index < sae.cfg.d_sae:
        raise IndexError(f"latent {index} out of range for an SAE with d_sae={sae.cfg.d_sae}")
    row = sae.W_dec[index].detach()
    return row / row.norm().clamp_min(1e-12) if unit else row.clone()


def steering_hook(
    direction: torch.Tensor, strength: float = 1.0, positions: slice | Sequence[int] | None = None,
    past_length: Callable[[], int] | None = None,
) -> Callable[[torch.Tensor, Any], torch.Tensor]:
    """A forward hook adding ``strength * direction`` to the activation (at ``positions`` of axis 1 if given).

    The direction may be flat ``[n_heads * d_head]`` for a ``hook_z``-shaped activation. ``positions`` are
    sequence positions: with a KV cache a forward sees only the new positions, so ``past_length()`` (how
    many the cache already holds; :func:`steered` provides it) places them, and ``positions=[0]`` steers
    the first token only, whether generation runs with a cache or without. Positions the sequence has not
    reached yet are steered once generation reaches them.
    """
    vec = direction.detach()

    def steer(x: torch.Tensor, hook: Any) -> torch.Tensor:
        d = (strength * vec).to(device=x.device, dtype=x.dtype)
        if d.shape[-1] != x.shape[-1]:
            if x.ndim < 2 or d.numel() != x.shape[-2] * x.shape[-1]:
                raise ValueError(
                    f"a steering direction of shape {tuple(vec.shape)} does not fit the activation "
                    f"{tuple(x.shape)} at {getattr(hook, 'name', None)!r} (it needs [{x.shape[-1]}] or the "
                    "flattened last two axes)"
                )
            d = d.reshape(x.shape[-2:])
        if positions is None:
            return x + d
        past = past_length() if past_length is not None else 0
        chosen = _chosen_positions(positions, past + x.shape[1])
        picked = chosen[past:].nonzero().flatten().to(x.device)  # the positions of this forward
        out = x.clone()
        out[:, picked] += d
        return out

    return steer


def _chosen_positions(positions: slice | Sequence[int], length: int) -> torch.Tensor:
    """``[length]`` bool: which of the sequence's positions so far to steer (negative ones count from its end).

    Positions at or past ``length`` are not there yet: generation steers them when it reaches them.
    """
    chosen = torch.zeros(length, dtype=torch.bool)
    if isinstance(positions, slice):
        chosen[positions] = True
        return chosen
    index = torch.as_tensor(positions, dtype=torch.long).reshape(-1)
    if bool((index < -length).any()):
        raise IndexError(f"steering positions {positions!r} count back past the start of a sequence of {length}")
    chosen[index[index < length]] = True
    return chosen


@contextlib.contextmanager
def steered(
    model: HookedModule, hook_name: str, direction: torch.Tensor, strength: float = 1.0,
    positions: slice | Sequence[int] | None = None,
) -> Iterator[HookedModule]:
    """Steer ``model`` at ``hook_name`` for the duration of a ``with`` block (generation included).

    ``positions`` count from the start of the sequence, also in cached generation (each forward's
    ``kv_cache`` length is read to place its new positions).
    """
    if hook_name not in model.hook_dict:
        raise KeyError(model.unknown_name_message(hook_name))
    offset = _PastLength(model) if positions is not None else None
    try:
        with model.hooks(fwd_hooks=[(hook_name, steering_hook(direction, strength, positions, offset))]):
            yield model
    finally:
        if offset is not None:
            offset.remove()


class _PastLength:
    """How many positions precede the running forward's: the cache length its innermost module was given.

    Read from each module's arguments while it runs (a native block's attention mask's ``query_index``,
    hookscope's ``kv_cache=``, Hugging Face's ``cache_position=`` / ``cache=`` / ``past_key_values=``); 0 when
    no running module got one (an uncached forward, an encoder).
    """

    def __init__(self, model: torch.nn.Module) -> None:
        self.stack: list[int | None] = []
        self.handles = []
        for module in model.modules():
            self.handles.append(module.register_forward_pre_hook(self._enter, with_kwargs=True))
            self.handles.append(module.register_forward_hook(self._leave, with_kwargs=True, always_call=True))

    def _enter(self, module: Any, args: Any, kwargs: dict[str, Any]) -> None:
        self.stack.append(_cache_length(args, kwargs))

    def _leave(self, module: Any, args: Any, kwargs: dict[str, Any], output: Any) -> None:
        if self.stack:
            self.stack.pop()

    def __call__(self) -> int:
        return next((n for n in reversed(self.stack) if n is not None), 0)

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def _cache_length(args: tuple[Any, ...], kwargs: dict[str, Any]) -> int | None:
    for arg in args:  # a native block's attention mask: the absolute index of its first query
        index = getattr(arg, "query_index", None)
        if isinstance(index, torch.Tensor) and index.numel():
            return int(index.reshape(-1)[0])
    position = kwargs.get("cache_position")
    if isinstance(position, torch.Tensor) and position.numel():
        return int(position.reshape(-1)[0])
    for key in ("kv_cache", "cache", "past_key_values"):
        cache = kwargs.get(key)
        if isinstance(getattr(cache, "length", None), int):
            return cache.length
        if cache is not None and callable(getattr(cache, "get_seq_length", None)):
            return int(cache.get_seq_length())
    return None
