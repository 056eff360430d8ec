"""wrap() on plain PyTorch modules: hooks by module path, edits, errors, stopping early, no copies."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from hookscope.bridge import WrappedModel, wrap


class Counting(nn.Module):
    """Counts its forward calls (to prove what did or did not run)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.inner(x)


def mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 11), nn.GELU(), nn.Linear(11, 7), nn.Tanh(), nn.Linear(7, 3)).eval()


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(
            nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 4, 3), nn.ReLU()
        )
        self.head = nn.Linear(4 * 2 * 2, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


@dataclasses.dataclass
class Out:
    aux: str
    main: torch.Tensor
    extra: torch.Tensor


class Structured(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.proj = nn.Linear(4, 4)
        self.pair = PairOut(self.proj)
        self.record = RecordOut()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        main, side = self.pair(x)
        rec = self.record(main)
        return rec.main + rec.extra + side


class PairOut(nn.Module):
    def __init__(self, proj: nn.Module) -> None:
        super().__init__()
        self.proj = proj

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.proj(x), x.sum(-1, keepdim=True)


class RecordOut(nn.Module):
    def forward(self, x: torch.Tensor) -> Out:
        return Out(aux="kept", main=torch.relu(x), extra=x * 0.5)


def test_sequential_mlp_cache_by_module_path_equals_manual_computation() -> None:
    model = mlp()
    x = torch.randn(2, 5)
    out, cache = wrap(model).run_with_cache(x)
    h0 = model[0](x)
    h2 = model[2](torch.nn.functional.gelu(h0))
    torch.testing.assert_close(cache["0"], h0, atol=0, rtol=0)
    torch.testing.assert_close(cache["2"], h2, atol=0, rtol=0)
    torch.testing.assert_close(cache["3.hook_in"], h2, atol=0, rtol=0)
    torch.testing.assert_close(cache["4"], out, atol=0, rtol=0)
    torch.testing.assert_close(out, model(x), atol=0, rtol=0)


def test_cnn_zero_ablation_changes_output_and_matches_manual() -> None:
    model = SmallCNN().eval()
    x = torch.randn(2, 3, 8, 8)
    wrapped = wrap(model)
    clean = wrapped(x)
    ablated = wrapped.run_with_hooks(x, fwd_hooks=[("features.3", lambda t, hook: torch.zeros_like(t))])
    assert not torch.allclose(clean, ablated)
    manual = model.head(torch.zeros(2, 16))  # relu(0) = 0 feeds the head
    torch.testing.assert_close(ablated, manual, atol=0, rtol=0)
    torch.testing.assert_close(wrapped(x), clean, atol=0, rtol=0)  # the edit did not outlive the call


def test_tuple_and_dataclass_outputs_hook_the_main_tensor_and_pass_the_rest_through() -> None:
    model = Structured()
    x = torch.randn(3, 4)
    wrapped = wrap(model)
    _, cache = wrapped.run_with_cache(x, names_filter=["pair", "record"])
    torch.testing.assert_close(cache["pair"], model.proj(x))
    torch.testing.assert_close(cache["record"], torch.relu(model.proj(x)))
    seen: list[str] = []
    wrapped.add_hook("record", lambda t, hook: seen.append(hook.name))
    edited = wrapped.run_with_hooks(x, fwd_hooks=[("pair", lambda t, hook: t + 1.0)])
    p = model.proj(x) + 1.0
    torch.testing.assert_close(edited, torch.relu(p) + 0.5 * p + x.sum(-1, keepdim=True))
    edited = wrapped.run_with_hooks(x, fwd_hooks=[("record", lambda t, hook: -t)])
    p = model.proj(x)
    torch.testing.assert_close(edited, -torch.relu(p) + 0.5 * p + x.sum(-1, keepdim=True))
    assert seen == ["record", "record"]  # the permanent-until-reset hook saw both runs
    wrapped.reset_hooks()


def test_weights_are_the_same_objects_and_nothing_is_copied() -> None:
    model = SmallCNN()
    wrapped = wrap(model)
    ours = dict(wrapped.model.named_parameters())
    for name, p in model.named_parameters():
        assert ours[name] is p
    assert wrapped.model is model
    assert {id(p) for p in wrapped.parameters()} == {id(p) for p in model.parameters()}
    assert wrapped.mod_dict["features.0"] is model.features[0]


def test_unhooked_wrapped_model_registers_no_torch_hooks() -> None:
    model = SmallCNN()
    wrapped = wrap(model)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    with wrapped.hooks([("features.0", lambda t, hook: None), ("head.hook_in", lambda t, hook: None)]):
        assert len(model.features[0]._forward_hooks) == 1 and len(model.head._forward_pre_hooks) == 1
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_hooks_removed_after_an_exception() -> None:
    model = mlp()
    wrapped = wrap(model)

    def boom(t: torch.Tensor, hook) -> None:
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        wrapped.run_with_hooks(torch.randn(2, 5), fwd_hooks=[("2", boom)])
    assert wrapped.active_hooks() == {}
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    with pytest.raises(RuntimeError), wrapped.hooks([("0", lambda t, hook: None)]):
        wrapped(torch.randn(2, 4))  # wrong input size: the model itself raises
    assert wrapped.active_hooks() == {}
    assert not model[0]._forward_hooks


def test_hook_in_edits_a_keyword_input() -> None:
    class KeywordCaller(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.layer = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.layer(input=x)

    model = KeywordCaller()
    x = torch.randn(2, 4)
    out = wrap(model).run_with_hooks(x, fwd_hooks=[("layer.hook_in", lambda t, hook: t * 3)])
    torch.testing.assert_close(out, model.layer(3 * x))


def test_unknown_name_suggests_the_nearest() -> None:
    wrapped = wrap(SmallCNN())
    with pytest.raises(KeyError, match=r"did you mean 'features\.3'"):
        wrapped.add_hook("feature.3", lambda t, hook: None)


def test_run_until_executes_nothing_after_the_last_name() -> None:
    layers = [Counting(nn.Linear(4, 4)) for _ in range(5)]
    model = nn.Sequential(*layers)
    x = torch.randn(2, 4)
    cache = wrap(model).run_until(["1", "2.hook_in"], x)
    assert set(cache) == {"1", "2.hook_in"}
    assert [layer.calls for layer in layers] == [1, 1, 0, 0, 0]  # stopped before layer 2 ran
    cache = wrap(model).run_until(["3", "0"], x)  # order of the names does not matter
    assert [layer.calls for layer in layers] == [2, 2, 1, 1, 0]
    with torch.no_grad():
        manual = x
        for layer in layers[:4]:
            manual = layer.inner(manual)
    torch.testing.assert_close(cache["3"], manual)


def test_stop_at_returns_that_activation() -> None:
    layers = [Counting(nn.Linear(4, 4)) for _ in range(3)]
    model = nn.Sequential(*layers)
    x = torch.randn(2, 4)
    mid = wrap(model)(x, stop_at="1")
    torch.testing.assert_close(mid, layers[1].inner(layers[0].inner(x)))
    assert [layer.calls for layer in layers] == [1, 1, 0]


def test_backward_hooks_see_the_autograd_gradient() -> None:
    model = mlp()
    x = torch.randn(3, 5)
    wrapped = wrap(model)
    grads: dict[str, torch.Tensor] = {}
    wrapped.add_hook("2", lambda g, hook: grads.__setitem__("2", g), dir="bwd")
    wrapped(x).pow(2).sum().backward()
    wrapped.reset_hooks()
    h2 = model[2](torch.nn.functional.gelu(model[0](x))).detach().requires_grad_(True)
    (ref,) = torch.autograd.grad(model[4](model[3](h2)).pow(2).sum(), h2)
    torch.testing.assert_close(grads["2"], ref)
    assert not model[2]._forward_hooks


def test_run_with_cache_incl_bwd_caches_gradients() -> None:
    model = mlp()
    x = torch.randn(3, 5)

    class Loss(nn.Module):
        def __init__(self, net: nn.Module) -> None:
            super().__init__()
            self.net = net

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x).pow(2).sum()

    wrapped = wrap(Loss(model))
    assert isinstance(wrapped, WrappedModel)
    _, cache = wrapped.run_with_cache(x, names_filter=["net.2"], incl_bwd=True)
    h2 = model[2](torch.nn.functional.gelu(model[0](x))).detach().requires_grad_(True)
    (ref,) = torch.autograd.grad(model[4](model[3](h2)).pow(2).sum(), h2)
    torch.testing.assert_close(cache["net.2_grad"], ref)
    torch.testing.assert_close(cache["net.2"], h2.detach())
