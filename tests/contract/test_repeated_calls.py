"""A hook point (or wrapped module) that fires several times in one run keeps every call."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hookscope import HookedModule, HookPoint
from hookscope.bridge import wrap
from hookscope.cache import MultipleCallsError
from hookscope.hooks import at_calls, at_steps


class TiedLoop(HookedModule):
    """One weight-tied block applied ``n`` times: its hook points fire ``n`` times per forward."""

    def __init__(self, d: int = 6, n: int = 3) -> None:
        super().__init__()
        self.n = n
        self.lin = nn.Linear(d, d)
        self.hook_pre = HookPoint()
        self.hook_out = HookPoint()
        self.setup_hooks()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(self.n):
            x = x + torch.tanh(self.hook_pre(self.lin(x)))
        return self.hook_out(x)


def by_hand(model: TiedLoop, x: torch.Tensor) -> list[torch.Tensor]:
    """The pre-activations of each call, computed without any hook."""
    pres = []
    for _ in range(model.n):
        pre = model.lin(x)
        pres.append(pre)
        x = x + torch.tanh(pre)
    return pres


@pytest.fixture
def model() -> TiedLoop:
    torch.manual_seed(0)
    return TiedLoop()


@pytest.fixture
def x() -> torch.Tensor:
    return torch.randn(2, 5, 6)


def test_three_calls_are_cached_in_order_and_equal_hand_recorded(model: TiedLoop, x: torch.Tensor) -> None:
    _, cache = model.run_with_cache(x)
    expected = by_hand(model, x)
    assert cache.n_calls("hook_pre") == 3
    for got, want in zip(cache.calls("hook_pre"), expected, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert cache.stack_calls("hook_pre").shape == (3, 2, 5, 6)
    assert cache.n_calls("hook_out") == 1 and cache["hook_out"].shape == (2, 5, 6)


def test_asking_for_one_activation_of_a_repeated_point_raises(model: TiedLoop, x: torch.Tensor) -> None:
    _, cache = model.run_with_cache(x)
    with pytest.raises(MultipleCallsError, match="fired 3 times"):
        cache["hook_pre"]
    with pytest.raises(MultipleCallsError):
        dict(cache.items())
    assert "3 calls" in repr(cache)
    torch.testing.assert_close(cache.at_call(1)["hook_pre"], cache.calls("hook_pre")[1])
    assert "hook_out" in cache.at_call(0) and "hook_out" not in cache.at_call(2)


def test_hooks_see_the_call_index_counted_from_zero_each_run(model: TiedLoop, x: torch.Tensor) -> None:
    seen: list[int] = []
    for _ in range(2):
        model.run_with_hooks(x, fwd_hooks=[("hook_pre", lambda t, hook: seen.append(hook.call_index))])
    assert seen == [0, 1, 2, 0, 1, 2]


def test_patching_one_call_changes_only_that_call(model: TiedLoop, x: torch.Tensor) -> None:
    zero = at_calls(lambda t, hook: torch.zeros_like(t), 1)
    out = model.run_with_hooks(x, fwd_hooks=[("hook_pre", zero)])
    # by hand: call 0 as usual, call 1 adds tanh(0) = 0, call 2 as usual
    h = x + torch.tanh(model.lin(x))
    h = h + torch.tanh(model.lin(h))
    torch.testing.assert_close(out, h, rtol=0, atol=1e-6)
    assert not torch.allclose(out, model(x))


class LossLoop(TiedLoop):
    """The tied loop returning a scalar loss, so ``incl_bwd`` can call ``backward()``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return (super().forward(x) ** 2).sum()


def test_gradients_of_each_call_land_at_their_forward_call(x: torch.Tensor) -> None:
    torch.manual_seed(0)
    model = LossLoop().double()
    x = x.double()
    _, cache = model.run_with_cache(x, names_filter="hook_pre", incl_bwd=True)
    leaves, h = [], x
    for _ in range(model.n):  # the same loop by hand, each pre-activation keeping its gradient
        pre = model.lin(h)
        pre.retain_grad()
        leaves.append(pre)
        h = h + torch.tanh(pre)
    (h**2).sum().backward()
    got = cache.calls("hook_pre_grad")
    assert len(got) == 3
    for g, leaf in zip(got, leaves, strict=True):
        torch.testing.assert_close(g, leaf.grad, rtol=1e-12, atol=1e-12)


def test_record_keeps_every_forward_of_a_loop(model: TiedLoop, x: torch.Tensor) -> None:
    outs = []
    with model.record("hook_out") as cache:
        y = x
        for _ in range(4):
            y = model(y)
            outs.append(y)
    stacked = cache.stack_calls("hook_out")
    assert stacked.shape == (4, 2, 5, 6)
    torch.testing.assert_close(stacked, torch.stack(outs), rtol=0, atol=0)


def test_at_steps_acts_only_at_the_chosen_step(model: TiedLoop, x: torch.Tensor) -> None:
    seen: list[int | None] = []
    hook = at_steps(lambda t, hook: seen.append(hook.step), [2])
    with model.hooks([("hook_out", hook)]):
        for step in range(4):
            model.set_step(step)
            model(x)
    model.set_step(None)
    assert seen == [2]
    with pytest.raises(ValueError, match="non-negative"):
        at_steps(hook, -1)


class Reuse(nn.Module):
    """A plain module whose ``shared`` submodule runs three times per forward."""

    def __init__(self) -> None:
        super().__init__()
        self.shared = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(3):
            x = torch.relu(self.shared(x))
        return x


def test_wrapped_module_called_three_times_caches_each_call() -> None:
    torch.manual_seed(1)
    net = Reuse()
    x = torch.randn(3, 4)
    model = wrap(net)
    _, cache = model.run_with_cache(x, names_filter=["shared", "shared.hook_in"])
    outs, ins, h = [], [], x
    for _ in range(3):
        ins.append(h)
        o = net.shared(h)
        outs.append(o)
        h = torch.relu(o)
    torch.testing.assert_close(cache.stack_calls("shared"), torch.stack(outs), rtol=0, atol=0)
    torch.testing.assert_close(cache.stack_calls("shared.hook_in"), torch.stack(ins), rtol=0, atol=0)
    with pytest.raises(MultipleCallsError):
        cache["shared"]
    patched = model.run_with_hooks(x, fwd_hooks=[("shared", at_calls(lambda t, hook: -t, 2))])
    torch.testing.assert_close(patched, torch.relu(-outs[2]))
