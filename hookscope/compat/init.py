"""TransformerLens's weight initialisations (``cfg.init_mode``) on a compat model's native parameters.

TL draws each weight matrix ``W_*`` (embeddings, ``W_Q/W_K/W_V/W_O``, ``W_in/W_gate/W_out``, ``W_U``) from a
distribution whose scale depends on the matrix's fan in / fan out *in TL's layout* (``[n_heads, d_model,
d_head]`` for attention, ``[d_in, d_out]`` otherwise; :func:`hookscope.compat.utils.calc_fan_in_and_fan_out`).
hookscope stores the same matrices in PyTorch's layout; the entries are independent draws, so drawing each
native parameter with the scale its TL shape gives is TL's initialisation. Biases are 0 and norm weights 1
(the native "gpt2" init sets them first), as in TL.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch import nn

from hookscope.compat.utils import calc_fan_in_and_fan_out
from hookscope.components.attention import Attention
from hookscope.components.embed import Embed, PosEmbed, Unembed
from hookscope.components.mlp import MLP, GatedMLP
from hookscope.models.init import init_weights

INIT_MODES = ("gpt2", "xavier_uniform", "xavier_normal", "kaiming_uniform", "kaiming_normal", "muP")


def _tl_matrices(model: nn.Module) -> Iterator[tuple[str, nn.Parameter, tuple[int, ...]]]:
    """``(TL parameter name, native parameter, TL shape)`` of every weight matrix TL initialises."""
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        if isinstance(module, (Embed, PosEmbed)):
            tl_name = "W_pos" if isinstance(module, PosEmbed) else "W_E"
            yield prefix + tl_name, module.weight, tuple(module.weight.shape)
        elif isinstance(module, Unembed):
            yield prefix + "W_U", module.weight, tuple(module.weight.shape[::-1])
        elif isinstance(module, Attention):
            heads, kv_heads, d_head = module.n_heads, module.n_kv_heads, module.d_head
            d_model = module.q_proj.in_features
            yield prefix + "W_Q", module.q_proj.weight, (heads, d_model, d_head)
            yield prefix + "W_K", module.k_proj.weight, (kv_heads, d_model, d_head)
            yield prefix + "W_V", module.v_proj.weight, (kv_heads, d_model, d_head)
            yield prefix + "W_O", module.o_proj.weight, (heads, d_head, d_model)
        elif isinstance(module, (MLP, GatedMLP)):
            for tl_name, linear in (("W_in", module.up_proj), ("W_gate", getattr(module, "gate_proj", None)),
                                    ("W_out", module.down_proj)):
                if linear is not None:
                    yield prefix + tl_name, linear.weight, tuple(linear.weight.shape[::-1])


def _draw(mode: str, name: str, tl_shape: tuple[int, ...], gain: float) -> tuple[str, float]:
    """``("uniform", bound)`` or ``("normal", std)`` of TL's init ``mode`` for a matrix of TL shape ``tl_shape``."""
    fan_in, fan_out = calc_fan_in_and_fan_out(torch.empty(tl_shape, device="meta"))
    if mode.startswith("xavier"):
        scale = gain * math.sqrt(2.0 / (fan_in + fan_out))
    elif mode.startswith("kaiming"):  # TL: nonlinearity="relu" (gain sqrt 2), mode="fan_in"
        scale = gain * math.sqrt(2.0) / math.sqrt(fan_in)
    else:  # muP (normal): TL tests "embed" in the name before "unembed", so W_U gets scale 1 like W_E and W_pos
        scale = 1.0 if "embed" in name else 1.0 / math.sqrt(fan_in)
    if mode.endswith("uniform"):
        return "uniform", math.sqrt(3.0) * scale
    return "normal", scale


def tl_init_weights(model: nn.Module, mode: str, seed: int, initializer_range: float) -> None:
    """Initialise ``model`` in place as TL's ``init_weights`` with ``cfg.init_mode = mode``, reproducibly from
    ``seed``. ``initializer_range`` is the std ("gpt2") or the gain (xavier, kaiming; unused by muP)."""
    if mode not in INIT_MODES:
        raise ValueError(f"init_mode must be one of {INIT_MODES}, got {mode!r}")
    init_weights(model, seed=seed, init_range=initializer_range if mode == "gpt2" else 1.0)  # biases 0, norms 1
    if mode == "gpt2":
        return
    gen = torch.Generator(device="cpu").manual_seed(seed)
    matrices = list(_tl_matrices(model))
    covered = {id(param) for _, param, _ in matrices}
    uncovered = [n for n, p in model.named_parameters() if p.ndim >= 2 and id(p) not in covered]
    if uncovered:
        raise NotImplementedError(f"init_mode={mode!r}: TL's rule for these weights is unknown here: {uncovered}")
    with torch.no_grad():
        for name, param, tl_shape in matrices:
            kind, scale = _draw(mode, name, tl_shape, initializer_range)
            drawn = torch.empty(param.shape, dtype=torch.float32)
            if kind == "uniform":
                drawn.uniform_(-scale, scale, generator=gen)
            else:
                drawn.normal_(0.0, scale, generator=gen)
            param.copy_(drawn.to(param.dtype))
