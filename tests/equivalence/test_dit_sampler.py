"""The DiT sampler: diffusers' scheduler math, determinism, per-step caches, steering at one step."""

from __future__ import annotations

import pytest
import torch

from hookscope.hooks import at_steps
from hookscope.models.dit import DiT
from hookscope.models.dit_config import DiTConfig
from tests.helpers import redraw_parameters

CFG = DiTConfig(n_layers=2, n_heads=2, d_head=8, in_channels=1, out_channels=2, sample_size=8, patch_size=2,
                n_classes=4, d_mlp=23)


@pytest.fixture(scope="module")
def model() -> DiT:
    torch.manual_seed(0)
    dit = DiT(CFG).eval()
    redraw_parameters(dit, seed=2)
    return dit.double()


def diffusers_loop(model: DiT, kind: str, n: int, steps: int, y: torch.Tensor, scale: float) -> torch.Tensor:
    """The same sampling loop written against diffusers' own scheduler (the independent reference)."""
    diffusers = pytest.importorskip("diffusers")
    sched = (diffusers.DDPMScheduler if kind == "ddpm" else diffusers.DDIMScheduler)(num_train_timesteps=1000)
    sched.set_timesteps(steps)
    gen = torch.Generator().manual_seed(5)
    x = torch.randn((n, 1, 8, 8), generator=gen, dtype=torch.float64)
    null = torch.full_like(y, CFG.n_classes)
    for t in sched.timesteps:
        with torch.no_grad():
            out = model(torch.cat([x, x]), t.expand(2 * n), torch.cat([y, null]))[:, :1]
        cond, uncond = out.chunk(2)
        eps = uncond + scale * (cond - uncond)
        x = sched.step(eps, t, x, generator=gen).prev_sample
    return x


@pytest.mark.parametrize("kind", ["ddpm", "ddim"])
def test_sampler_follows_diffusers_scheduler_step_math(model: DiT, kind: str) -> None:
    y = torch.tensor([0, 3, 1])
    ours = model.sample(3, 7, class_labels=y, guidance_scale=2.5, seed=5, scheduler=kind)
    ref = diffusers_loop(model, kind, 3, 7, y, 2.5)
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-10)


def test_fixed_seed_is_deterministic_and_seeds_differ(model: DiT) -> None:
    a = model.sample(2, 5, class_labels=1, seed=11, scheduler="ddpm")
    b = model.sample(2, 5, class_labels=1, seed=11, scheduler="ddpm")
    c = model.sample(2, 5, class_labels=1, seed=12, scheduler="ddpm")
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_cache_has_a_step_axis_equal_to_each_step_run_alone(model: DiT) -> None:
    name = "blocks.1.hook_resid_post"
    _, cache = model.sample(2, 4, class_labels=[2, 0], seed=3, return_cache=[name, "blocks.0.hook_shift_msa"])
    assert cache[name].shape == (4, 2, 16, 16)
    assert cache["blocks.0.hook_shift_msa"].shape == (4, 2, 16)
    assert cache["sampler.x_t"].shape == (4, 2, 1, 8, 8)
    assert cache["sampler.timesteps"].tolist() == [750, 500, 250, 0]
    for step in range(4):
        t = int(cache["sampler.timesteps"][step])
        _, alone = model.run_with_cache(cache["sampler.x_t"][step], t, torch.tensor([2, 0]), names_filter=name)
        torch.testing.assert_close(cache[name][step], alone[name], rtol=0, atol=0)


def test_guided_cache_holds_conditional_then_null_batch(model: DiT) -> None:
    _, cache = model.sample(2, 3, class_labels=[1, 2], guidance_scale=3.0, return_cache="blocks.0.hook_cond")
    assert cache["blocks.0.hook_cond"].shape == (3, 4, 16)
    torch.testing.assert_close(cache["blocks.0.hook_cond"][:, 2], cache["blocks.0.hook_cond"][:, 3])


def test_steering_at_one_step_changes_only_later_steps(model: DiT) -> None:
    name, k = "blocks.0.hook_resid_post", 2
    direction = torch.linspace(-2.0, 3.0, 16, dtype=torch.float64)  # not a uniform shift (LayerNorm removes those)
    push = at_steps(lambda t, hook: t + direction, k)
    kwargs = dict(class_labels=[0, 1], seed=4, scheduler="ddim", return_cache=[name])
    _, clean = model.sample(2, 5, **kwargs)
    _, steered = model.sample(2, 5, fwd_hooks=[(name, push)], **kwargs)
    x_c, x_s = clean["sampler.x_t"], steered["sampler.x_t"]
    assert torch.equal(x_c[: k + 1], x_s[: k + 1])  # inputs up to and including step k: untouched
    assert torch.equal(clean[name][:k], steered[name][:k])
    torch.testing.assert_close(steered[name][k], clean[name][k] + direction, rtol=0, atol=1e-12)
    for later in range(k + 1, 5):
        assert not torch.allclose(x_c[later], x_s[later])


def test_sampler_rejects_bad_arguments(model: DiT) -> None:
    with pytest.raises(ValueError, match="class_labels must be in"):
        model.sample(2, 3, class_labels=[0, 4])
    with pytest.raises(ValueError, match="scheduler"):
        model.sample(2, 3, scheduler="euler")
    with pytest.raises(ValueError, match="steps must be in"):
        model.sample(2, 0)


@pytest.mark.parametrize("guidance", [1.0, 2.0])
def test_lens_at_the_last_layer_is_the_samplers_own_prediction(model: DiT, guidance: float) -> None:
    from hookscope.analysis.diffusion import dit_lens

    names = ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post", "blocks.0.hook_cond"]
    _, cache = model.sample(2, 4, class_labels=[3, 1], guidance_scale=guidance, return_cache=names)
    lens = dit_lens(model, cache, 1, guidance_scale=guidance)
    torch.testing.assert_close(lens, cache["sampler.pred_x0"], rtol=1e-12, atol=1e-12)
    early = dit_lens(model, cache, 0, guidance_scale=guidance)
    assert early.shape == lens.shape and not torch.allclose(early, lens)
    if guidance != 1.0:
        with pytest.raises(ValueError, match="guidance_scale"):
            dit_lens(model, cache, 1)
