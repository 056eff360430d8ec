"""The lean decode step: a native decoder's cached step as straight torch calls, used while no hook is attached.

A decode step of a small model is partly overhead around its matrix-vector products: a module call per
sub-layer, a hook-point call per activation, hook checks, argument checks. When nothing can observe the step
(no hook on any hook point, no PyTorch module hook), :class:`LeanStep` runs the same function as the model's
forward without that: one loop over the layers calling the same torch ops on the same weights, so the
numbers are those of the hooked forward bit for bit (tested on every decoder family in float32, float64 and
bfloat16).

What it keeps as the forward does: separate q/k/v (and gate/up) products. One product over concatenated
weights saves two calls per layer but rounds differently for some shapes on the CPU (odd output widths,
float64 batches), and measured no faster on the 16M Llama of the generation benchmark.

Anything the lean step does not cover (a module swapped for another class, shortformer positions, a model
dispatched over devices) makes :func:`lean_step` return None: the model's own forward then runs every step.

``generate(compile=True)`` compiles this step (:mod:`hookscope.generation.compiled`); on a CUDA device it
compiles :meth:`LeanStep.fixed_shape`, the same step with shapes that stay fixed from step to step.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from operator import attrgetter
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from hookscope.components.attention import Attention, fused_attention
from hookscope.components.embed import Embed, PosEmbed, Unembed
from hookscope.components.layout import streaming_linear
from hookscope.components.masks import AttentionMask, causal_mask_and_positions
from hookscope.components.mlp import MLP, GatedMLP
from hookscope.components.norm import LayerNorm, LayerNormPre, NoNorm, OffsetRMSNorm, RMSNorm, RMSNormPre
from hookscope.components.rotary import apply_rotary
from hookscope.models.decoder import AttnOnlyBlock, Decoder, ParallelBlock, SequentialBlock

_FWD_HOOKS, _BWD_HOOKS = attrgetter("fwd_hooks"), attrgetter("bwd_hooks")  # a HookPoint's hook lists
_KNOWN_NORMS = (LayerNorm, RMSNorm, OffsetRMSNorm, LayerNormPre, RMSNormPre, NoNorm)
Norm = Callable[[torch.Tensor], torch.Tensor]


def _norm_fn(module: nn.Module) -> Norm:
    """The un-hooked computation of a norm module (what its forward returns when ``hook_scale`` is idle)."""
    kind = type(module)
    if kind is LayerNorm:
        assert isinstance(module, LayerNorm)
        return lambda x: F.layer_norm(x, (x.shape[-1],), module.weight, module.bias, module.eps)
    if kind in (RMSNorm, OffsetRMSNorm):
        assert isinstance(module, RMSNorm)
        offset = kind is OffsetRMSNorm

        def rms_norm(x: torch.Tensor) -> torch.Tensor:
            normed = F.rms_norm(_cast(x, torch.float32), x.shape[-1:], eps=module.eps)
            if offset:  # Gemma: (1 + weight) in float32, then the cast back
                return _cast(normed * (1.0 + _cast(module.weight, torch.float32)), x.dtype)
            return module.weight * _cast(normed, x.dtype)

        return rms_norm
    return module.forward  # the weightless norms: a few ops whose hook points cost little


def _cast(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``x.to(dtype)`` without the call when it would return ``x`` itself (~5 us a call after a weight stream;
    26 a step on the 16M Llama: -1.8% step time, measured)."""
    return x if x.dtype == dtype else x.to(dtype)


def _optional_norm(module: nn.Module | None) -> Norm | None:
    return None if module is None else _norm_fn(module)


@dataclass
class _Layer:
    """One block as the lean step reads it: its norms, attention and MLP modules (weights read live)."""

    ln1: Norm
    attn: Attention
    window: int | None
    ln1_post: Norm | None
    ln2: Norm | None
    mlp: nn.Module | None
    ln2_post: Norm | None
    parallel: bool
    q_norm: Norm | None
    k_norm: Norm | None
    mlp_norm: Norm | None


def _native_kind(module: nn.Module | None) -> type:
    """The class whose forward ``module`` runs in the model's own calls: its own, or the one its class names
    in its own ``computes_as`` (compat's TL-signature components, whose native call is their parent's)."""
    kind = type(module)
    return kind.__dict__.get("computes_as", kind)


def _block_layer(block: nn.Module) -> _Layer | None:
    """How the lean step runs ``block``, or None when a module in it is not one it knows."""
    kind = _native_kind(block)
    if kind not in (SequentialBlock, ParallelBlock, AttnOnlyBlock) or _native_kind(block.attn) is not Attention:
        return None
    mlp = getattr(block, "mlp", None)
    if mlp is not None and type(mlp) not in (MLP, GatedMLP):
        return None
    norms = [getattr(block, name, None) for name in ("ln1", "ln1_post", "ln2", "ln2_post")]
    attn = block.attn
    norms += [attn.q_norm, attn.k_norm, getattr(mlp, "ln", None)]
    if any(n is not None and type(n) not in _KNOWN_NORMS for n in norms):
        return None
    return _Layer(
        ln1=_norm_fn(block.ln1), attn=attn, window=block.window, ln1_post=_optional_norm(norms[1]),
        ln2=_optional_norm(norms[2]), mlp=mlp, ln2_post=_optional_norm(norms[3]), parallel=kind is ParallelBlock,
        q_norm=_optional_norm(attn.q_norm), k_norm=_optional_norm(attn.k_norm), mlp_norm=_optional_norm(norms[6]),
    )


class LeanStep:
    """``step(tokens [batch, new_pos], attention_mask, kv_cache) -> logits [batch, 1, d_vocab_out]`` of a
    :class:`~hookscope.models.decoder.Decoder`, bit for bit its ``forward(tokens, attention_mask,
    kv_cache=kv_cache, logits_to_keep=1)`` while no hook is attached (:meth:`usable` says so; check it
    before every step: a hook attached mid-generation must run from the next step on).

    ``streaming``: for a step compiled on the CPU, one-row products as
    :func:`~hookscope.components.layout.streaming_linear`, which Inductor turns into fused streaming loops
    (the same function up to rounding); otherwise the forward's own products, bit for bit. (Attention
    written as sums the same way measured no faster than the fused kernel's call: kept as that call.)
    """

    def __init__(self, model: Decoder, layers: list[_Layer], streaming: bool = False) -> None:
        self.model, self.layers = model, layers
        self.linear: Callable[..., torch.Tensor] = streaming_linear if streaming else F.linear
        self.points = model.hook_points()
        self.modules = list(model.modules())
        # PyTorch keeps each module's hook dicts for the module's life (handles delete from them in place)
        self._module_hooks = [d for m in self.modules for d in (m._forward_hooks, m._forward_pre_hooks)]
        self.final_norm = _norm_fn(model.ln_final)

    def usable(self) -> bool:
        """No hook point has a hook and no module has a PyTorch forward hook (either would be skipped).

        Checked before every step, so the loops run in C (``any`` over ``map`` and over the hook dicts).
        """
        points = self.points
        hooked = any(map(_FWD_HOOKS, points)) or any(map(_BWD_HOOKS, points)) or any(self._module_hooks)
        return not hooked and not _global_hooks()

    def __call__(self, tokens: torch.Tensor, attention_mask: torch.Tensor | None, kv_cache: Any) -> torch.Tensor:
        batch, n_pos = tokens.shape
        past = kv_cache.length
        mask, positions, _ = causal_mask_and_positions(attention_mask, None, batch, n_pos, past, tokens.device)
        logits = self._run(tokens, positions, mask, [kv_cache.layer(i) for i in range(len(self.layers))])
        kv_cache.advance(n_pos)
        return logits

    def fixed_shape(
        self, tokens: torch.Tensor, positions: torch.Tensor, index: torch.Tensor, key_valid: torch.Tensor | None,
        kv_cache: Any,
    ) -> torch.Tensor:
        """One new token per row whose shapes do not change from step to step (what a CUDA graph replays):
        it attends over the whole cache buffer, the unwritten positions masked, and writes at ``index``.

        Args:
            tokens: ``[batch, 1]``. positions: their positions ``[batch, 1]`` (left padding skipped).
            index: ``[1]`` where the step's keys go in the cache (``kv_cache.length``, as a tensor).
            key_valid: ``[batch, max_len]``, 0 at prompt padding (or None).

        The caller advances the cache. Same function as :meth:`__call__` up to rounding (the masked keys
        join the softmax with weight 0).
        """
        mask = AttentionMask(key_valid, index, kv_cache.max_len, causal=True)  # hides the positions after index
        layers = [_FixedShapeLayer(kv_cache.layer(i), index) for i in range(len(self.layers))]
        return self._run(tokens, positions, mask, layers)

    def _run(self, tokens: torch.Tensor, positions: torch.Tensor, mask: Any, caches: list[Any]) -> torch.Tensor:
        model = self.model
        x = model.embed.forward(tokens, False)  # [batch, pos, d_model]
        if model.pos_embed is not None:
            x = x + model.pos_embed.forward(positions, False)
        rotary = model.rotary_tables(positions, x.dtype)
        for layer, cache in zip(self.layers, caches, strict=True):
            x = self._block(layer, x, mask, rotary, cache)
        return model.unembed.forward(self.final_norm(x)[:, -1:])

    def _block(self, layer: _Layer, x: torch.Tensor, mask: Any, rotary: Any, cache: Any) -> torch.Tensor:
        attn_out = self._attention(layer, layer.ln1(x), mask, rotary, cache)
        if layer.parallel:  # HF GPT-NeoX adds mlp_out + attn_out first, then the residual
            return self._mlp(layer, layer.ln2(x)) + attn_out + x  # type: ignore[misc]
        if layer.ln1_post is not None:
            attn_out = layer.ln1_post(attn_out)
        x = x + attn_out
        if layer.mlp is None:
            return x
        mlp_out = self._mlp(layer, layer.ln2(x))  # type: ignore[misc]
        if layer.ln2_post is not None:
            mlp_out = layer.ln2_post(mlp_out)
        return x + mlp_out

    def _attention(self, layer: _Layer, x: torch.Tensor, mask: Any, rotary: Any, cache: Any) -> torch.Tensor:
        """The attention's forward without hook points: separate q/k/v products, as there (one product over
        the concatenated weights rounds differently for some shapes on the CPU)."""
        a, linear = layer.attn, self.linear
        batch, n_pos = x.shape[:2]
        q, k, v = (linear(x, lin.weight, lin.bias) for lin in (a.q_proj, a.k_proj, a.v_proj))
        q = q.view(batch, n_pos, a.n_heads, a.d_head)  # [batch, pos, head_index, d_head]
        k = k.view(batch, n_pos, a.n_kv_heads, a.d_head)  # [batch, pos, kv_head_index, d_head]
        v = v.view(batch, n_pos, a.n_kv_heads, a.d_head)
        if layer.q_norm is not None and layer.k_norm is not None:
            q, k = layer.q_norm(q), layer.k_norm(k)
        if rotary is not None:
            q, k = apply_rotary(q, *rotary), apply_rotary(k, *rotary)
        k, v = cache.update(k, v)  # every position so far
        if a.prescale_query:
            q = q * a.scale
        if a.needs_explicit(q.dtype):
            z = a._explicit(q, k, v, mask, layer.window, None)  # the forward's explicit path, as it runs there
        else:
            z = fused_attention(q, k, v, mask, scale=1.0 if a.prescale_query else a.scale, window=layer.window)
        return linear(z.reshape(batch, n_pos, a.n_heads * a.d_head), a.o_proj.weight, a.o_proj.bias)

    def _mlp(self, layer: _Layer, x: torch.Tensor) -> torch.Tensor:
        m, linear = layer.mlp, self.linear
        if isinstance(m, GatedMLP):
            gate = linear(x, m.gate_proj.weight, m.gate_proj.bias)
            up = linear(x, m.up_proj.weight, m.up_proj.bias)
            return linear(m.act(gate) * up, m.down_proj.weight, m.down_proj.bias)
        assert isinstance(m, MLP)
        post = m.act(linear(x, m.up_proj.weight, m.up_proj.bias))
        if layer.mlp_norm is not None:  # SoLU's norm over the neurons
            post = layer.mlp_norm(post)
        return linear(post, m.down_proj.weight, m.down_proj.bias)


class _FixedShapeLayer:
    """A layer's cache written at a tensor index, handing back the whole buffer (fixed shapes)."""

    def __init__(self, layer: Any, index: torch.Tensor) -> None:
        self.k, self.v, self.index = layer.k, layer.v, index  # [batch, kv_head, max_len, d_head]

    def update(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.k.index_copy_(2, self.index, k.transpose(1, 2))
        self.v.index_copy_(2, self.index, v.transpose(1, 2))
        return self.k.transpose(1, 2), self.v.transpose(1, 2)  # [batch, max_len, kv_head, d_head]


def _global_hooks() -> bool:
    """PyTorch's global module hooks (``register_module_forward_hook``) would see every module call."""
    from torch.nn.modules import module as torch_module

    return bool(torch_module._global_forward_hooks or torch_module._global_forward_pre_hooks)


def lean_step(model: Any, streaming: bool = False) -> LeanStep | None:
    """The lean step of ``model``, or None when it has none (not a native decoder (nor a subclass that sets
    ``generates_with_decoder_forward`` on its class, as compat's HookedTransformer does), a
    module the lean step does not know, a ``forward`` replaced on a module, shortformer positions, or a model
    dispatched over devices). Built for each ``generate`` call (a module swapped between two calls is seen
    by the next one) and kept nowhere else, so it never outlives the call; a compiled step does not compile
    again for a new one (its guards read the modules, which are the same). ``streaming``: as
    :class:`LeanStep`'s (compiled CPU steps only)."""
    # a subclass may compute something else in its forward, unless it declares (on the class itself, so that
    # its own subclasses must declare it again) that generation runs Decoder.forward unchanged
    native = type(model) is Decoder or type(model).__dict__.get("generates_with_decoder_forward", False)
    if not native or hasattr(model, "hf_device_map") or model.cfg.positional == "shortformer":
        return None
    if any("forward" in vars(m) for m in model.modules()):
        return None  # a forward replaced on an instance: only the model's own forward runs it
    layers = [_block_layer(block) for block in model.blocks]
    if any(layer is None for layer in layers) or not _known_head(model):
        return None
    return LeanStep(model, layers, streaming)  # type: ignore[arg-type]


def _known_head(model: Decoder) -> bool:
    pos_ok = model.pos_embed is None or _native_kind(model.pos_embed) is PosEmbed
    return type(model.embed) is Embed and pos_ok and type(model.unembed) is Unembed and \
        type(model.ln_final) in _KNOWN_NORMS
