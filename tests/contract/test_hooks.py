"""Contract tests of the hook core on a small hooked module built for the tests."""

from __future__ import annotations

import gc
import resource

import pytest
import torch
from torch import nn

from hookscope import ActivationCache, HookedModule, HookError, HookPoint, get_act_name


class TinyBlock(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.lin = nn.Linear(d, d)
        self.hook_pre = HookPoint()
        self.hook_post = HookPoint()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.hook_post(torch.tanh(self.hook_pre(self.lin(x))))


class Tiny(HookedModule):
    """[batch, pos, d] -> [batch, pos, d] with a hook point before, inside and after each block."""

    def __init__(self, d: int = 6, n: int = 3) -> None:
        super().__init__()
        self.hook_embed = HookPoint()
        self.blocks = nn.ModuleList(TinyBlock(d) for _ in range(n))
        self.hook_out = HookPoint()
        self.setup_hooks()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.hook_embed(x)
        for b in self.blocks:
            x = b(x)
        return self.hook_out(x)


@pytest.fixture
def model() -> Tiny:
    torch.manual_seed(0)
    return Tiny()


@pytest.fixture
def x() -> torch.Tensor:
    return torch.randn(2, 5, 6)


def test_each_hook_fires_once_in_forward_order(model: Tiny, x: torch.Tensor) -> None:
    seen: list[str] = []
    with model.hooks([(lambda n: True, lambda t, hook: seen.append(hook.name))]):
        model(x)
    assert seen == list(model.hook_dict)  # registration order is forward order here
    assert len(seen) == len(set(seen)) == 1 + 2 * 3 + 1


@pytest.mark.parametrize(
    "names_filter, expected",
    [
        (None, 8),
        ("blocks.1.hook_pre", 1),
        (["hook_embed", "hook_out"], 2),
        (lambda n: n.endswith("hook_post"), 3),
    ],
)
def test_names_filter_forms(model: Tiny, x: torch.Tensor, names_filter, expected: int) -> None:
    _, cache = model.run_with_cache(x, names_filter=names_filter)
    assert len(cache) == expected


def test_unknown_name_suggests_nearest(model: Tiny, x: torch.Tensor) -> None:
    with pytest.raises(KeyError, match=r"blocks\.1\.hook_pre"):
        model.run_with_cache(x, names_filter=["blocks.1.hook_prr"])
    with pytest.raises(KeyError, match="did you mean"):
        model.add_hook("blocks.1.hook_prr", lambda t, hook: None)


def test_hook_specs_are_checked_and_a_bare_pair_is_accepted(model: Tiny, x: torch.Tensor) -> None:
    zero = ("blocks.1.hook_post", lambda t, hook: torch.zeros_like(t))
    torch.testing.assert_close(model.run_with_hooks(x, fwd_hooks=zero), model.run_with_hooks(x, fwd_hooks=[zero]))
    with pytest.raises(TypeError, match=r"fwd_hooks takes a list of \(name or filter, hook function\) pairs"):
        model.run_with_hooks(x, fwd_hooks=["blocks.1.hook_post"])
    with pytest.raises(TypeError, match=r"the hook for 'blocks\.1\.hook_post' must be a function"):
        model.add_hook("blocks.1.hook_post", 3)
    assert not model.active_hooks()


def test_replacement_changes_output_and_identity_does_not(model: Tiny, x: torch.Tensor) -> None:
    base = model(x)
    same = model.run_with_hooks(x, fwd_hooks=[("blocks.1.hook_post", lambda t, hook: t)])
    zero = model.run_with_hooks(x, fwd_hooks=[("blocks.1.hook_post", lambda t, hook: torch.zeros_like(t))])
    torch.testing.assert_close(same, base)
    assert not torch.allclose(zero, base)


def test_wrong_shape_names_hook_and_both_shapes(model: Tiny, x: torch.Tensor) -> None:
    with pytest.raises(HookError, match=r"blocks\.0\.hook_pre.*\(2, 5, 3\).*\(2, 5, 6\)"):
        model.run_with_hooks(x, fwd_hooks=[("blocks.0.hook_pre", lambda t, hook: t[..., :3])])
    assert not model.active_hooks()


def test_wrong_dtype_is_reported(model: Tiny, x: torch.Tensor) -> None:
    with pytest.raises(HookError, match=r"dtype torch\.float64"):
        model.run_with_hooks(x, fwd_hooks=[("hook_embed", lambda t, hook: t.double())])


def test_raising_hook_names_the_hook_and_leaves_nothing(model: Tiny, x: torch.Tensor) -> None:
    def broken(t: torch.Tensor, hook: HookPoint) -> None:
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom") as info:  # the hook's own type, not a wrapper
        with model.hooks([("blocks.2.hook_post", broken)], bwd_hooks=[("hook_out", lambda g, hook: None)]):
            model(x)
    assert not isinstance(info.value, HookError)
    assert any("broken" in note and "'blocks.2.hook_post'" in note for note in info.value.__notes__)
    assert not model.active_hooks()


def test_context_removes_only_its_hooks_and_keeps_permanent(model: Tiny, x: torch.Tensor) -> None:
    model.add_perma_hook("hook_out", lambda t, hook: None)
    model.add_hook("hook_embed", lambda t, hook: None)
    with model.hooks([("hook_out", lambda t, hook: None)]):
        assert model.active_hooks()["hook_out"] == (2, 0)
    assert model.active_hooks() == {"hook_out": (1, 0), "hook_embed": (1, 0)}
    model.reset_hooks()
    assert model.active_hooks() == {"hook_out": (1, 0)}
    model.reset_hooks(including_permanent=True)
    assert not model.active_hooks()


def test_backward_hooks_see_autograd_gradients(model: Tiny, x: torch.Tensor) -> None:
    captured: dict[str, torch.Tensor] = {}
    with model.hooks([("blocks.1.hook_pre", lambda t, hook: captured.__setitem__("t", t))]):
        out = model(x)
    (ref,) = torch.autograd.grad(out.sum(), captured["t"])  # reference: plain autograd
    grads: dict[str, torch.Tensor] = {}
    with model.hooks(bwd_hooks=[("blocks.1.hook_pre", lambda g, hook: grads.__setitem__("g", g))]):
        model(x).sum().backward()
    torch.testing.assert_close(grads["g"], ref)
    assert not model.active_hooks()


def test_hook_context_scratch_is_cleared(model: Tiny, x: torch.Tensor) -> None:
    def remember(t: torch.Tensor, hook: HookPoint) -> None:
        hook.ctx["seen"] = hook.ctx.get("seen", 0) + 1

    with model.hooks([("hook_out", remember)], clear_contexts=True):
        model(x)
        model(x)
        assert model.hook_dict["hook_out"].ctx["seen"] == 2
    assert not model.hook_dict["hook_out"].ctx


def test_backward_hook_can_replace_gradient(model: Tiny, x: torch.Tensor) -> None:
    x = x.requires_grad_()
    with model.hooks(bwd_hooks=[("hook_embed", lambda g, hook: torch.zeros_like(g))]):
        model(x).sum().backward()
    assert x.grad is not None and torch.count_nonzero(x.grad) == 0


def test_incl_bwd_caches_gradients(model: Tiny, x: torch.Tensor) -> None:
    class Loss(Tiny):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return super().forward(x).pow(2).mean()

    torch.manual_seed(0)
    m = Loss()
    _, cache = m.run_with_cache(x, incl_bwd=True, names_filter=["hook_out", "blocks.0.hook_pre"])
    assert set(cache) == {"hook_out", "blocks.0.hook_pre", "hook_out_grad", "blocks.0.hook_pre_grad"}
    torch.testing.assert_close(cache["hook_out_grad"], 2 * cache["hook_out"] / cache["hook_out"].numel())


def test_remove_batch_dim_device_and_pos_slice(model: Tiny) -> None:
    x = torch.randn(1, 5, 6)
    _, full = model.run_with_cache(x)
    _, nobatch = model.run_with_cache(x, remove_batch_dim=True)
    assert nobatch["hook_out"].shape == (5, 6)
    torch.testing.assert_close(nobatch["hook_out"], full["hook_out"][0])
    _, sliced = model.run_with_cache(x, pos_slice=-1)
    torch.testing.assert_close(sliced["hook_out"], full["hook_out"][:, -1:])
    _, picked = model.run_with_cache(x, pos_slice=[0, 2])
    torch.testing.assert_close(picked["hook_out"], full["hook_out"][:, [0, 2]])
    _, moved = model.run_with_cache(x, device="meta")
    assert moved["hook_out"].device.type == "meta"
    assert full.remove_batch_dim()["hook_out"].shape == (5, 6)
    with pytest.raises(ValueError, match="batch size 1"):
        model.run_with_cache(torch.randn(2, 5, 6), remove_batch_dim=True)


def test_cache_key_sugar_and_stacking() -> None:
    store = {f"blocks.{i}.hook_resid_post": torch.full((1, 2, 3), float(i)) for i in range(3)}
    store["blocks.1.attn.hook_pattern"] = torch.zeros(1, 2, 2, 2)
    cache = ActivationCache(store)
    assert cache["resid_post", 2][0, 0, 0] == 2
    assert ("pattern", 1) in cache and cache["pattern", 1].shape == (1, 2, 2, 2)
    assert cache.stack_activation("resid_post").shape == (3, 1, 2, 3)
    assert "ActivationCache(4 activations)" in repr(cache)
    with pytest.raises(KeyError, match="closest cached"):
        cache["blocks.1.hook_resid_pots"]


def test_get_act_name_matches_transformerlens() -> None:
    assert get_act_name("resid_post", 3) == "blocks.3.hook_resid_post"
    assert get_act_name("pattern", 0) == "blocks.0.attn.hook_pattern"
    assert get_act_name("attn", 0) == "blocks.0.attn.hook_pattern"
    assert get_act_name("q", 1) == "blocks.1.attn.hook_q"
    assert get_act_name("post", 2) == "blocks.2.mlp.hook_post"
    assert get_act_name("scale", 2, "ln1") == "blocks.2.ln1.hook_scale"
    assert get_act_name("normalized", None, "ln_final") == "ln_final.hook_normalized"
    assert get_act_name("embed") == "hook_embed"


def test_cached_activations_are_detached(model: Tiny, x: torch.Tensor) -> None:
    _, cache = model.run_with_cache(x.requires_grad_())
    assert all(not t.requires_grad for t in cache.values())


def test_many_cached_runs_do_not_grow_memory(model: Tiny) -> None:
    x = torch.randn(4, 64, 6)
    for _ in range(50):
        model.run_with_cache(x)
    gc.collect()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for _ in range(1000):
        _, cache = model.run_with_cache(x)
    del cache
    gc.collect()
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # each cache holds ~100 KB; a leak of 1000 caches would add ~100 MB
    assert after - before < 20_000, f"peak RSS grew by {after - before} KB over 1000 cached runs"
    assert not model.active_hooks()


def test_cache_of_everything_skips_opt_in_points_unless_named() -> None:
    class WithOptIn(Tiny):
        def __init__(self) -> None:
            super().__init__()
            self.hook_costly = HookPoint(opt_in=True)
            self.setup_hooks()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.hook_costly(super().forward(x))

    model = WithOptIn()
    x = torch.randn(1, 2, 6)
    _, everything = model.run_with_cache(x)
    assert "hook_costly" not in everything and "hook_out" in everything
    _, named = model.run_with_cache(x, names_filter=["hook_costly"])
    assert "hook_costly" in named
