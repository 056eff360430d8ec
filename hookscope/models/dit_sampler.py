"""Sampling from a DiT with DDPM or DDIM, hooks active at every step and caches with a step axis.

Each denoising step is one forward of the model. Before it, every hook point's ``hook.step`` is set to
the step index (0 = the noisiest), so a hook can act at chosen steps (:func:`hookscope.hooks.at_steps`).
``return_cache`` records the named activations at every step and returns them stacked as
``[step, batch, ...]``, together with the sampler's own trajectory (``sampler.x_t``, ``sampler.eps``,
``sampler.pred_x0``, ``sampler.timesteps``).
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any, Literal

import torch

from hookscope.cache import ActivationCache
from hookscope.components.noise_schedule import NoiseSchedule
from hookscope.hooks import HookSpec
from hookscope.names import NamesFilter

if TYPE_CHECKING:
    from hookscope.models.dit import DiT

Scheduler = Literal["ddpm", "ddim"]


def _labels(model: DiT, n: int, class_labels: Any, device: torch.device) -> torch.Tensor | None:
    if class_labels is None:
        return None
    y = torch.as_tensor(class_labels, dtype=torch.long, device=device)
    if y.ndim == 0:
        y = y.expand(n)
    if y.shape != (n,):
        raise ValueError(f"class_labels must be one label or {n} labels, got shape {tuple(y.shape)}")
    if bool(((y < 0) | (y >= model.cfg.n_classes)).any()):
        raise ValueError(f"class_labels must be in 0..{model.cfg.n_classes - 1}")
    return y


def _predict_eps(
    model: DiT, x: torch.Tensor, t: int, y: torch.Tensor | None, guidance_scale: float
) -> torch.Tensor:
    """The (guided) noise prediction ``[n, in_channels, side, side]`` from one forward of the model.

    Classifier-free guidance runs the conditional and the null-class inputs as one batch of ``2n``
    (conditional first), as diffusers' DiT pipeline does: ``eps = uncond + s * (cond - uncond)``.
    """
    c = model.cfg.in_channels
    if y is None or guidance_scale == 1.0:
        labels = y if y is not None else torch.full((x.shape[0],), model.cfg.n_classes, device=x.device)
        return model(x, torch.full((x.shape[0],), t, device=x.device), labels)[:, :c]
    null = torch.full_like(y, model.cfg.n_classes)
    out = model(torch.cat([x, x]), torch.full((2 * x.shape[0],), t, device=x.device), torch.cat([y, null]))
    cond, uncond = out[:, :c].chunk(2)
    return uncond + guidance_scale * (cond - uncond)


@torch.no_grad()
def sample(
    model: DiT,
    n: int,
    steps: int = 50,
    *,
    class_labels: Any = None,
    guidance_scale: float = 1.0,
    seed: int | None = 0,
    scheduler: Scheduler = "ddim",
    eta: float = 0.0,
    clip_sample: bool = True,
    side: int | None = None,
    fwd_hooks: HookSpec = (),
    return_cache: bool | NamesFilter = False,
    schedule: NoiseSchedule | None = None,
) -> torch.Tensor | tuple[torch.Tensor, ActivationCache]:
    """Draw ``n`` images ``[n, in_channels, side, side]`` by ``steps`` DDPM or DDIM steps.

    Args:
        class_labels: one label or ``n`` labels in ``0..n_classes-1``; None samples unconditionally.
        guidance_scale: classifier-free guidance (1: none). With guidance each step runs a batch of
            ``2n`` (conditional then null-class), and so do the cached activations.
        seed: seeds the initial noise and DDPM's per-step noise (same seed, same images); None draws
            from torch's global generator.
        scheduler: ``"ddim"`` (``eta=0``: deterministic given the initial noise) or ``"ddpm"`` (ancestral).
        side: image side (default: the model's ``sample_size``).
        fwd_hooks: ``(name, fn)`` pairs active at every step; ``hook.step`` tells them which step.
        return_cache: True or a names filter: also return an :class:`ActivationCache` whose tensors
            are ``[step, batch, ...]``, plus ``sampler.x_t`` / ``sampler.eps`` / ``sampler.pred_x0``
            ``[step, n, C, H, W]`` (the input, the guided noise prediction and the predicted clean
            image of each step) and ``sampler.timesteps`` ``[step]``.
        schedule: the noise schedule (default: linear betas over ``cfg.n_train_timesteps``).
    """
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    if scheduler not in ("ddpm", "ddim"):
        raise ValueError(f"scheduler must be 'ddpm' or 'ddim', got {scheduler!r}")
    schedule = schedule or NoiseSchedule(n_train_timesteps=model.cfg.n_train_timesteps)
    timesteps = schedule.timesteps(steps)
    param = next(model.parameters())
    y = _labels(model, n, class_labels, param.device)
    side = side or model.cfg.sample_size
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    shape = (n, model.cfg.in_channels, side, side)
    x = torch.randn(shape, generator=gen, dtype=param.dtype).to(param.device)
    trajectory: dict[str, list[torch.Tensor]] = {"sampler.x_t": [], "sampler.eps": [], "sampler.pred_x0": []}
    names = None if return_cache is True else return_cache
    recording = model.record(names) if return_cache is not False else contextlib.nullcontext()
    try:
        with model.hooks(fwd_hooks), recording as recorded:
            for i, t in enumerate(timesteps):
                model.set_step(i)
                prev_t = t - schedule.n_train_timesteps // steps
                eps = _predict_eps(model, x, t, y, guidance_scale)
                trajectory["sampler.x_t"].append(x)
                if scheduler == "ddpm":
                    x, x0 = schedule.ddpm_step(x, eps, t, prev_t, clip=clip_sample, generator=gen)
                else:
                    x, x0 = schedule.ddim_step(x, eps, t, prev_t, clip=clip_sample, eta=eta, generator=gen)
                trajectory["sampler.eps"].append(eps)
                trajectory["sampler.pred_x0"].append(x0)
    finally:
        model.set_step(None)
    if return_cache is False:
        return x
    store = {name: recorded.stack_calls(name) for name in recorded}
    store.update({k: torch.stack(v) for k, v in trajectory.items()})
    store["sampler.timesteps"] = torch.tensor(timesteps)
    return x, ActivationCache(store, model, has_batch_dim=False)
