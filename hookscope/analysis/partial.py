"""``partial_forward``: the activations you ask for, and nothing computed after the last of them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from hookscope.hooks import HookedModule, StopForward


def partial_forward(
    model: HookedModule, inputs: Any, output_names: str | Sequence[str], **forward_kwargs: Any
) -> dict[str, torch.Tensor]:
    """Run ``model`` only as far as needed to produce ``output_names``.

    Works for every hooked model, native or wrapped: once the last requested activation has been
    produced the forward is stopped, so later blocks never execute.

    Args:
        model: a native hookscope model or a ``wrap()``-ed module.
        inputs: what the model's forward takes first (tokens, text, pixel values...).
        output_names: hook names (canonical, or module paths for wrapped models).
        forward_kwargs: passed to the model's forward (e.g. ``attention_mask``).

    Returns:
        ``{name: activation}`` in the order asked for (detached).
    """
    names = [output_names] if isinstance(output_names, str) else list(output_names)
    if not names:
        raise ValueError("partial_forward needs at least one output name")
    for name in names:
        if name not in model.hook_dict:
            raise KeyError(model.unknown_name_message(name))
    store: dict[str, torch.Tensor] = {}
    remaining = set(names)

    def capture(tensor: torch.Tensor, hook: Any) -> None:
        store[hook.name] = tensor.detach()
        remaining.discard(hook.name)
        if not remaining:
            raise StopForward

    with model.hooks(fwd_hooks=[(n, capture) for n in names]), torch.no_grad():
        try:
            model(inputs, **forward_kwargs)
        except StopForward:
            pass
    missing = [n for n in names if n not in store]
    if missing:
        raise RuntimeError(f"the forward finished without producing {missing} (is the hook on a skipped path?)")
    return {n: store[n] for n in names}
