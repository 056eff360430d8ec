"""``wrap()``: the hookscope hook API on any ``nn.Module``, without copying or changing its weights.

Every submodule gets a hook point on its output (named by its module path, ``transformer.h.3.mlp``) and
on its first tensor input (``transformer.h.3.mlp.hook_in``). Transformers models of known layouts also
get canonical aliases (``blocks.3.hook_resid_post``, ``blocks.3.attn.hook_pattern``, ...; see
:mod:`hookscope.bridge.layouts`). Torch hooks are registered on a submodule only while one of its points
has a hook, so an un-hooked wrapped model runs exactly the original code.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from hookscope.bridge import generation
from hookscope.bridge.attention import AttentionPoints, AttentionSwitch, register_implementation
from hookscope.bridge.layouts import EXPECTED_BLOCK_NAMES, LAYOUTS, ModelLayout, StackLayout, find_path
from hookscope.bridge.sites import BridgePoint, Site, SiteKind, find_main
from hookscope.cache import ActivationCache, make_caching_hooks
from hookscope.hooks import HookedModule, HookSpec, StopForward
from hookscope.names import NamesFilter, resolve_names_filter

logger = logging.getLogger(__name__)

_PER_BLOCK = re.compile(r"^\w+\.\d+\.")


class WrappedModel(HookedModule):
    """A hooked view of ``module``: same parameters, same forward, hook points everywhere.

    Attributes:
        model: the wrapped module (not copied).
        tokenizer: the tokenizer given to :func:`wrap`, if any.
        layout: the model type whose canonical names were mapped, or None.
    """

    def __init__(self, module: nn.Module, *, tokenizer: Any = None) -> None:
        super().__init__()
        self.model = module
        self.tokenizer = tokenizer
        self.hook_dict: dict[str, BridgePoint] = {}  # type: ignore[assignment]
        self.mod_dict: dict[str, nn.Module] = {}
        self._sites: dict[tuple[int, SiteKind], Site] = {}
        self._canonical: dict[str, str] = {}
        self._unmapped: dict[str, str] = {}
        self.layout: str | None = None
        self.roles: dict[str, nn.Module] = {}
        for path, sub in module.named_modules():
            if path:
                self.mod_dict[path] = sub
                self._add_point(path, sub, "out", BridgePoint())
                self._add_point(f"{path}.hook_in", sub, "in", BridgePoint())
        self._attention: AttentionSwitch | None = None
        self._map_canonical()

    # ------------------------------------------------------------------ construction
    def _add_point(
        self, name: str, module: nn.Module, kind: SiteKind, point: BridgePoint, d_head: int | None = None
    ) -> None:
        key = (id(module), kind)
        site = self._sites.get(key)
        if site is None:
            site = self._sites[key] = Site(module, kind, d_head)
        point.name = name
        site.attach(point)
        self.hook_dict[name] = point

    def _map_canonical(self) -> None:
        config = getattr(self.model, "config", None)
        model_type = getattr(config, "model_type", None)
        layout = LAYOUTS.get(model_type) if isinstance(model_type, str) else None
        if layout is None:
            self._unmapped["*"] = (
                f"model type {model_type!r} has no layout table (known: {', '.join(sorted(LAYOUTS))}); "
                "hook points are named by module path only"
            )
            return
        groups: dict[nn.Module, AttentionPoints] = {}
        mapped_any = False
        for stack in layout.stacks:
            mapped_any |= self._map_stack(stack, config, groups)
        if not mapped_any:
            return
        self.layout = model_type
        self._map_unembed(layout)
        if groups:
            register_implementation()
            self._attention = AttentionSwitch(self.model, groups)

    def _map_stack(self, stack: StackLayout, config: Any, groups: dict[nn.Module, AttentionPoints]) -> bool:
        path = find_path(self.model, stack.blocks)
        blocks = self.mod_dict.get(path) if path else None
        if not isinstance(blocks, nn.ModuleList):
            self._unmapped[f"{stack.prefix}.*"] = f"no block list '{stack.blocks}' found in this module"
            return False
        self.roles[f"{stack.prefix}"] = blocks
        for i, block in enumerate(blocks):
            base = f"{path}.{i}"
            d_head = _block_head_dim(block, stack, config)
            for suffix, (kind, sub) in stack.sites.items():
                name = f"{stack.prefix}.{i}.{suffix}"
                needed = stack.requires.get(suffix)
                if needed is not None and getattr(config, needed[0], None) != needed[1]:
                    self._unmapped[name] = f"only when config.{needed[0]} == {needed[1]!r}"
                    continue
                target = block.get_submodule(sub) if sub else block
                reason = _readonly_reason(suffix) if suffix in stack.readonly else None
                self._add_point(name, target, kind, BridgePoint(reason), d_head)  # type: ignore[arg-type]
                self._canonical[name] = f"{base}.{sub}".rstrip(".") + (".hook_in" if kind == "in" else "")
            for attn_name, sub in stack.attention.items():
                group = AttentionPoints(
                    f"{stack.prefix}.{i}.{attn_name}", rotary=stack.rotary, softmax_in_float32=stack.softmax_in_float32
                )
                groups[block.get_submodule(sub)] = group
                for name, point in group.named_points():
                    if name in self.hook_dict:  # a module-boundary site already carries it (Whisper's q)
                        continue
                    point.name = name
                    self.hook_dict[name] = point
                    self._canonical[name] = f"{base}.{sub} (attention function)"
        self._map_final_norm(stack)
        return True

    def _map_final_norm(self, stack: StackLayout) -> None:
        name = f"{stack.final_norm_name}.hook_normalized"
        path = find_path(self.model, stack.final_norm) if stack.final_norm else None
        if path is None:
            self._unmapped[name] = (
                "this layout has no final norm" if stack.final_norm is None else "not found"
            )
            return
        self.roles[stack.final_norm_name] = self.mod_dict[path]
        self._add_point(name, self.mod_dict[path], "out", BridgePoint())
        self._canonical[name] = path

    def _map_unembed(self, layout: ModelLayout) -> None:
        path = find_path(self.model, layout.unembed) if layout.unembed else None
        if path is not None:
            self.roles["unembed"] = self.mod_dict[path]

    # ------------------------------------------------------------------ reporting
    def canonical_names(self) -> dict[str, str]:
        """Canonical hook name -> where it lives in the wrapped module (module path, ``.hook_in`` = input)."""
        return dict(self._canonical)

    def mapping_report(self) -> str:
        """Which canonical names were mapped, and why the expected ones that were not are missing."""
        if self.layout is None:
            return "; ".join(self._unmapped.values()) or "no canonical names mapped"
        lines = [f"layout {self.layout!r}: {len(self._canonical)} canonical hook names mapped"]
        prefixes = sorted({n.split(".")[0] for n in self._canonical if n.split(".")[1:2] == ["0"]})
        for prefix in prefixes:
            missing = [s for s in EXPECTED_BLOCK_NAMES if f"{prefix}.0.{s}" not in self.hook_dict]
            if missing:
                reasons = [self._unmapped.get(f"{prefix}.0.{s}", _missing_reason(s)) for s in missing]
                lines += [
                    f"  {prefix}.{{i}}.{s}: not mapped ({r})" for s, r in zip(missing, reasons, strict=True)
                ]
        lines += [f"  {n}: not mapped ({r})" for n, r in self._unmapped.items() if not _PER_BLOCK.match(n)]
        return "\n".join(lines)

    @property
    def config(self) -> Any:
        """The wrapped model's config (transformers models), else None."""
        return getattr(self.model, "config", None)

    # ------------------------------------------------------------------ running
    def forward(self, *args: Any, stop_at: str | None = None, **kwargs: Any) -> Any:
        """Call the wrapped module's forward with the same arguments.

        Args:
            stop_at: a hook name (module path or canonical); the forward ends right after it fires
                and returns that activation instead of the model's output.
        """
        if stop_at is None:
            return self.model(*args, **kwargs)
        seen: list[torch.Tensor] = []

        def stop(tensor: torch.Tensor, hook: Any) -> None:
            seen.append(tensor)
            raise StopForward

        with self.hooks([(stop_at, stop)]):
            try:
                self.model(*args, **kwargs)
            except StopForward:
                return seen[-1]
        raise RuntimeError(f"stop_at={stop_at!r}: that hook never fired during the forward")

    def run_until(self, names: NamesFilter, *model_args: Any, **model_kwargs: Any) -> ActivationCache:
        """Cache ``names`` and end the forward as soon as all of them have fired.

        Nothing after the last of them runs (a ``.hook_in`` name stops *before* its module runs).
        """
        wanted = resolve_names_filter(names, self.hook_dict, self.unknown_name_message)
        store: dict[str, torch.Tensor] = {}
        fwd, _ = make_caching_hooks(
            wanted, store, device=None, remove_batch_dim=False, pos_slice=None, incl_bwd=False
        )

        def stop_when_done(tensor: torch.Tensor, hook: Any) -> None:
            if all(n in store for n in wanted):
                raise StopForward

        with self.hooks([*fwd, *((n, stop_when_done) for n in wanted)]):
            self._forward_catching_stop(*model_args, **model_kwargs)
        return ActivationCache(store, self)

    def generate(
        self,
        *args: Any,
        fwd_hooks: HookSpec = (),
        names_filter: NamesFilter | bool = False,
        return_cache: bool = False,
        concat: bool = False,
        **kwargs: Any,
    ) -> Any:
        """Generate with the wrapped model's own ``generate``, hooks active throughout.

        Args:
            fwd_hooks: ``(name, fn)`` pairs active during every forward step (e.g. a steering hook).
            names_filter / return_cache: cache these names (``return_cache=True`` alone: every name) at
                each step; returns ``(output, caches)`` with one :class:`ActivationCache` per forward step
                (step 0 is the prompt), or one cache concatenated along positions when ``concat=True``.
        """
        if not hasattr(self.model, "generate"):
            raise TypeError(f"{type(self.model).__name__} has no generate(); wrap a transformers model")
        if not return_cache and names_filter is False:
            with self.hooks(fwd_hooks):
                return self.model.generate(*args, **kwargs)
        wanted = resolve_names_filter(
            None if names_filter is False else names_filter, self.hook_dict, self.unknown_name_message
        )
        with self.hooks(fwd_hooks):
            out, steps = generation.generate_with_caches(self, wanted, args, kwargs)
        return out, (generation.concat_steps(steps, self) if concat else steps)

    def to_tokens(self, text: str | Sequence[str]) -> torch.Tensor:
        """Token ids ``[batch, pos]`` from the tokenizer given to :func:`wrap`."""
        if self.tokenizer is None:
            raise ValueError("no tokenizer: pass wrap(model, tokenizer=...)")
        texts = [text] if isinstance(text, str) else list(text)
        return self.tokenizer(texts, return_tensors="pt", padding=True)["input_ids"]

    def to_str_tokens(self, input: str | torch.Tensor | Sequence[int]) -> list[str]:
        """Each token of one sequence (text, or ids ``[pos]`` / ``[1, pos]``) as its own string."""
        ids = self.to_tokens(input) if isinstance(input, str) else torch.as_tensor(input)
        if ids.ndim == 2:
            if ids.shape[0] != 1:
                raise ValueError("to_str_tokens takes one sequence; index the batch first")
            ids = ids[0]
        return [self.tokenizer.decode([i]) for i in ids.tolist()]

    def to_single_token(self, string: str) -> int:
        """The id of a string that is exactly one token (no special tokens); a clear error otherwise."""
        if self.tokenizer is None:
            raise ValueError("no tokenizer: pass wrap(model, tokenizer=...)")
        ids = self.tokenizer(string, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            pieces = [self.tokenizer.decode([i]) for i in ids]
            raise ValueError(f"{string!r} is {len(ids)} tokens {pieces}, not a single token")
        return int(ids[0])

    def lens_decoder(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """Residual ``[..., d_model]`` -> logits through the mapped final norm and unembedding.

        What :func:`hookscope.logit_lens` uses when no ``decoder=`` is given. A final logit soft-cap in the
        config (``final_logit_softcapping``) is applied as the model's own head applies it.
        """
        norm, unembed = self.roles.get("ln_final"), self.roles.get("unembed")
        if norm is None or unembed is None:
            raise ValueError(
                f"no final norm and unembedding mapped for this {type(self.model).__name__} (layout "
                f"{self.layout!r}); pass decoder= a callable or [final_norm, unembed] module names"
            )
        cap = getattr(self.config, "final_logit_softcapping", None)

        def decode(x: torch.Tensor) -> torch.Tensor:
            logits = find_main(unembed(find_main(norm(x))[0]))[0]
            return torch.tanh(logits / cap) * cap if cap else logits

        return decode


def _block_head_dim(block: nn.Module, stack: StackLayout, config: Any) -> int | None:
    """``d_head`` of a block's attention: the attention module's own ``head_dim`` where it has one (Whisper's
    decoder may have other heads than its encoder), else from the config."""
    for sub in stack.attention.values():
        head_dim = getattr(block.get_submodule(sub), "head_dim", None)
        if isinstance(head_dim, int):
            return head_dim
    return _head_dim(config)


def _head_dim(config: Any) -> int | None:
    if config is None:
        return None
    head_dim = getattr(config, "head_dim", None)
    if isinstance(head_dim, int):
        return head_dim
    hidden = getattr(config, "hidden_size", None)
    heads = getattr(config, "num_attention_heads", None)
    return hidden // heads if isinstance(hidden, int) and isinstance(heads, int) and heads else None


def _readonly_reason(suffix: str) -> str:
    from hookscope.bridge.layouts import RESID_MID_REASON

    return f"{suffix}: {RESID_MID_REASON}"


def _missing_reason(suffix: str) -> str:
    if suffix in ("attn.hook_q", "attn.hook_k"):
        return "fused q/k/v projection, or q/k only visible after rotary: see attn.hook_rot_q/rot_k"
    return "no module boundary carries it in this layout"


def wrap(module: nn.Module, *, tokenizer: Any = None) -> WrappedModel:
    """Wrap any ``nn.Module`` (a transformers model or not) in the hookscope hook API, without copying it.

    Hook points: ``<module path>`` (main output tensor) and ``<module path>.hook_in`` (first tensor
    input) for every submodule, plus canonical names for transformers models of known layouts (see
    :meth:`WrappedModel.mapping_report`). The wrapped model's parameters are the original objects.
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"wrap() takes a torch.nn.Module, got {type(module).__name__}")
    wrapped = WrappedModel(module, tokenizer=tokenizer)
    logger.info("hookscope.wrap(%s): %s", type(module).__name__, wrapped.mapping_report())
    return wrapped
