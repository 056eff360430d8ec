"""Diffusion-model analysis over a sampler's per-step cache: the per-step lens of a DiT.

The lens reads an intermediate residual stream at every denoising step through the model's final
layer (as if the remaining blocks were skipped), turns the noise it predicts into the clean image it
implies, and so shows at which depth and at which step the image is decided.
"""

from __future__ import annotations

from typing import Any

import torch

from hookscope.components.noise_schedule import NoiseSchedule


@torch.no_grad()
def dit_lens(
    model: Any,
    cache: Any,
    layer: int,
    *,
    guidance_scale: float | None = None,
    clip: bool = True,
    schedule: NoiseSchedule | None = None,
) -> torch.Tensor:
    """Predicted clean images ``[step, n, in_channels, side, side]`` read from ``blocks.{layer}.hook_resid_post``.

    Args:
        model: the :class:`~hookscope.models.dit.DiT` that sampled.
        cache: the cache of ``model.sample(..., return_cache=[...])`` holding ``blocks.{layer}.hook_resid_post``
            and ``blocks.0.hook_cond`` (the conditioning the final layer reads).
        layer: the block whose output is read (``n_layers - 1`` reproduces the sampler's own prediction).
        guidance_scale: the scale the sample used, required when it used guidance (the cached batch is
            then ``2n``: conditional then null-class), so the lens combines them as the sampler did.
        clip: clip the predicted image to [-1, 1] as the sampler's ``clip_sample`` does.
        schedule: the noise schedule the sampler used (default: the model's linear schedule).
    """
    resid_name, cond_name = f"blocks.{layer}.hook_resid_post", "blocks.0.hook_cond"
    for name in (resid_name, cond_name, "sampler.x_t", "sampler.timesteps"):
        if name not in cache:
            raise KeyError(f"dit_lens needs {name!r} in the cache: sample with return_cache=[{resid_name!r}, "
                           f"{cond_name!r}]")
    if not 0 <= layer < model.cfg.n_layers:
        raise ValueError(f"layer must be in 0..{model.cfg.n_layers - 1}, got {layer}")
    schedule = schedule or NoiseSchedule(n_train_timesteps=model.cfg.n_train_timesteps)
    x_t, resid, cond = cache["sampler.x_t"], cache[resid_name], cache[cond_name]
    n, batch, c = x_t.shape[1], resid.shape[1], model.cfg.in_channels
    if batch == 2 * n and guidance_scale is None:
        raise ValueError("this sample used classifier-free guidance (batch 2n cached): pass its guidance_scale")
    if batch not in (n, 2 * n):
        raise ValueError(f"cached batch {batch} matches neither n={n} nor 2n (guidance)")
    images = []
    for step, t in enumerate(cache["sampler.timesteps"].tolist()):
        eps = model.decode_residual(resid[step], cond[step])[:, :c]
        if batch == 2 * n:
            cond_eps, uncond_eps = eps.chunk(2)
            eps = uncond_eps + guidance_scale * (cond_eps - uncond_eps)
        images.append(schedule.predict_x0(x_t[step], eps, int(t), clip))
    return torch.stack(images)
