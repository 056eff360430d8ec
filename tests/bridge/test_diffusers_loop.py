"""A diffusers model wrapped with wrap() and run through its own pipeline loop gives per-step caches."""

from __future__ import annotations

import pytest
import torch

from hookscope import at_calls, wrap

diffusers = pytest.importorskip("diffusers")
STEPS = 4


def tiny_unet() -> torch.nn.Module:
    torch.manual_seed(0)
    return diffusers.UNet2DModel(
        sample_size=8, in_channels=1, out_channels=1, layers_per_block=1, block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
    ).eval()


def run_pipeline(unet: torch.nn.Module, seed: int = 0) -> torch.Tensor:
    pipe = diffusers.DDPMPipeline(unet=unet, scheduler=diffusers.DDPMScheduler(num_train_timesteps=50))
    pipe.set_progress_bar_config(disable=True)
    out = pipe(batch_size=2, num_inference_steps=STEPS, generator=torch.Generator().manual_seed(seed),
               output_type="np")
    return torch.as_tensor(out.images)


def by_hand(unet: torch.nn.Module, module: str) -> list[torch.Tensor]:
    """The module's output at every step, recorded with a plain torch forward hook."""
    seen: list[torch.Tensor] = []
    handle = unet.get_submodule(module).register_forward_hook(lambda m, a, out: seen.append(out.detach().clone()))
    try:
        run_pipeline(unet)
    finally:
        handle.remove()
    return seen


def test_pipeline_loop_records_every_step_equal_to_hand_recorded() -> None:
    unet = tiny_unet()
    expected = by_hand(unet, "mid_block")
    wrapped = wrap(unet)
    with wrapped.record(["mid_block", "conv_out"]) as cache:
        run_pipeline(unet)
    assert cache.n_calls("mid_block") == STEPS == len(expected)
    stacked = cache.stack_calls("mid_block")  # [step, batch, channels, height, width]
    assert stacked.shape == (STEPS, *expected[0].shape)
    torch.testing.assert_close(stacked, torch.stack(expected), rtol=0, atol=0)
    assert cache.stack_calls("conv_out").shape == (STEPS, 2, 1, 8, 8)


def test_pipeline_steering_at_one_call_changes_only_that_step_and_later() -> None:
    unet = tiny_unet()
    wrapped = wrap(unet)
    clean = by_hand(unet, "conv_out")
    with wrapped.hooks([("mid_block", at_calls(lambda t, hook: t + 1.0, 2))]):
        steered = by_hand(unet, "conv_out")
    for step in range(2):
        torch.testing.assert_close(steered[step], clean[step], rtol=0, atol=0)
    for step in range(2, STEPS):
        assert not torch.allclose(steered[step], clean[step])
