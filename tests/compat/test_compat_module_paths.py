"""TransformerLens's module layout: the CamelCase module paths import as in TL (the package attribute stays the
class), and ``HookPoint.has_hooks`` answers both as hookscope's truthy attribute and as TL 3's filtered method."""

from __future__ import annotations

import importlib
import sys
import types

import pytest
import torch

import hookscope.compat as compat
from hookscope.compat.hook_points import HookPoint

CLASS_MODULES = ["HookedTransformer", "HookedTransformerConfig", "ActivationCache", "FactoredMatrix",
                 "SVDInterpreter", "HookedEncoder", "HookedEncoderDecoder", "HookedRootModule"]


@pytest.mark.parametrize("name", CLASS_MODULES)
def test_camelcase_module_holds_the_class_and_the_package_attribute_stays_the_class(name: str) -> None:
    module = importlib.import_module(f"hookscope.compat.{name}")
    assert isinstance(module, types.ModuleType) and sys.modules[f"hookscope.compat.{name}"] is module
    cls = getattr(module, name)
    assert isinstance(cls, type)
    assert getattr(compat, name) is cls  # importing the submodule did not rebind the package attribute
    namespace: dict = {}
    exec(f"from hookscope.compat import {name} as pkg_attr\nfrom hookscope.compat.{name} import {name} as mod_attr",
         namespace)
    assert namespace["pkg_attr"] is namespace["mod_attr"] is cls


def test_tl3_config_package_paths() -> None:
    from hookscope.compat.config import HookedTransformerConfig as a
    from hookscope.compat.config.hooked_transformer_config import HookedTransformerConfig as b
    from hookscope.compat.HookedTransformerConfig import HookedTransformerConfig as c

    assert a is b is c is compat.HookedTransformerConfig
    cfg = a(d_model=8, d_head=4, n_layers=1, n_ctx=4, d_vocab=10)
    assert cfg.n_heads == 2


def test_a_submodule_that_is_not_a_class_module_is_still_bound_as_a_module() -> None:
    importlib.import_module("hookscope.compat.head_detector")
    assert isinstance(compat.head_detector, types.ModuleType)


def _noop(activation: torch.Tensor, hook: HookPoint) -> None:
    return None


def test_has_hooks_is_truthy_only_with_a_hook_attached() -> None:
    point = HookPoint()
    assert not point.has_hooks and point.has_hooks == False  # noqa: E712  (TL code compares it)
    point.add_hook(_noop, dir="bwd")
    assert point.has_hooks and point.has_hooks == True  # noqa: E712
    point.remove_hooks("both")
    assert not point.has_hooks


@pytest.mark.parametrize("query, expected", [
    (dict(), True), (dict(dir="fwd"), True), (dict(dir="bwd"), True),
    (dict(including_permanent=False), True), (dict(dir="fwd", including_permanent=False), False),
    (dict(level=0), True), (dict(level=0, including_permanent=False), False), (dict(dir="bwd", level=0), False),
    (dict(dir="bwd", level=2, including_permanent=False), True), (dict(level=7), False),
])
def test_has_hooks_filters_by_direction_permanence_and_level(query: dict, expected: bool) -> None:
    point = HookPoint()
    point.add_hook(_noop, dir="fwd", is_permanent=True, level=0)
    point.add_hook(_noop, dir="bwd", level=2)
    assert point.has_hooks(**query) is expected


def test_has_hooks_refuses_an_unknown_direction() -> None:
    with pytest.raises(ValueError, match="dir must be"):
        HookPoint().has_hooks(dir="sideways")


def test_loading_reads_hf_configs_through_its_module_level_autoconfig(monkeypatch: pytest.MonkeyPatch) -> None:
    """TL code patches ``loading_from_pretrained.AutoConfig.from_pretrained``; the config then comes from it."""
    import transformers

    from hookscope.compat import loading_from_pretrained as loading

    config = transformers.GPT2Config(n_embd=32, n_layer=3, n_head=4, n_positions=64, vocab_size=100)
    monkeypatch.setattr(loading.AutoConfig, "from_pretrained", lambda *a, **k: config)
    cfg = loading.get_pretrained_model_config("gpt2")
    assert (cfg.d_model, cfg.n_layers, cfg.n_heads, cfg.n_ctx, cfg.d_vocab) == (32, 3, 4, 64, 100)


def test_enable_hook_attaches_at_the_context_level_by_name_or_filter() -> None:
    """TL's internal ``_enable_hook`` (what its ``hooks()`` uses): by name, or every point a filter accepts."""
    from hookscope.compat.hook_points import HookedRootModule

    class Tiny(HookedRootModule):
        def __init__(self) -> None:
            super().__init__()
            self.hook_a, self.hook_b = HookPoint(), HookPoint()
            self.setup()

    model = Tiny()
    assert model.context_level == 0
    with model.hooks():
        assert model.context_level == 1  # inside a hooks() block: its depth
    model.context_level = 3
    model._enable_hook("hook_a", _noop, dir="fwd")
    model._enable_hook(lambda name: name.endswith("b"), _noop, dir="bwd")
    attached = [(h.level, d) for d, hs in (("fwd", model.hook_a.fwd_hooks), ("bwd", model.hook_a.bwd_hooks))
                for h in hs]
    assert attached == [(3, "fwd")]
    assert model.hook_b.has_hooks(dir="bwd", level=3) and not model.hook_b.has_hooks(dir="fwd")
