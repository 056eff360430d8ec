"""The DDPM noise schedule and the DDPM / DDIM update rules (Ho et al. 2020; Song et al. 2021).

Numerics follow diffusers' ``DDPMScheduler`` and ``DDIMScheduler`` with their defaults (linear betas in
float32, "leading" timestep spacing, epsilon prediction, optional clipping of the predicted clean image,
DDPM's "fixed_small" variance, DDIM's final alpha of one), so a sampler built on these steps takes the
same trajectory as a diffusers loop given the same model outputs and the same noise.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass(frozen=True, kw_only=True)
class NoiseSchedule:
    """``alphas_cumprod[t] = prod_{s <= t} (1 - beta_s)`` for linear betas from ``beta_start`` to ``beta_end``."""

    n_train_timesteps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02
    alphas_cumprod: torch.Tensor = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.n_train_timesteps < 1:
            raise ValueError(f"n_train_timesteps must be >= 1, got {self.n_train_timesteps}")
        betas = torch.linspace(self.beta_start, self.beta_end, self.n_train_timesteps, dtype=torch.float32)
        object.__setattr__(self, "alphas_cumprod", torch.cumprod(1.0 - betas, dim=0))

    def timesteps(self, steps: int) -> list[int]:
        """``steps`` timesteps, high to low, evenly spaced from 0 ("leading" spacing)."""
        if not 1 <= steps <= self.n_train_timesteps:
            raise ValueError(f"steps must be in 1..{self.n_train_timesteps}, got {steps}")
        ratio = self.n_train_timesteps // steps
        return [i * ratio for i in range(steps)][::-1]

    def alpha(self, t: int) -> torch.Tensor:
        """``alphas_cumprod[t]`` (a float32 scalar tensor), and 1 before the first timestep."""
        return self.alphas_cumprod[t] if t >= 0 else torch.tensor(1.0)

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``x_t = sqrt(a_t) x0 + sqrt(1 - a_t) noise`` for per-sample timesteps ``t [batch]``."""
        a = self.alphas_cumprod.to(device=x0.device, dtype=x0.dtype)[t]
        shape = (-1,) + (1,) * (x0.ndim - 1)
        return a.sqrt().reshape(shape) * x0 + (1 - a).sqrt().reshape(shape) * noise

    def predict_x0(self, x: torch.Tensor, eps: torch.Tensor, t: int, clip: bool) -> torch.Tensor:
        """The clean image the noise prediction implies: ``(x - sqrt(1 - a_t) eps) / sqrt(a_t)``."""
        a = self.alpha(t)
        x0 = (x - (1 - a) ** 0.5 * eps) / a**0.5
        return x0.clamp(-1.0, 1.0) if clip else x0

    def ddpm_step(
        self, x: torch.Tensor, eps: torch.Tensor, t: int, prev_t: int, *, clip: bool,
        generator: torch.Generator | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One ancestral DDPM step ``x_t -> x_{prev_t}`` (fixed-small variance); returns ``(x_prev, x0)``."""
        a_t, a_prev = self.alpha(t), self.alpha(prev_t)
        alpha_t = a_t / a_prev
        beta_t = 1 - alpha_t
        x0 = self.predict_x0(x, eps, t, clip)
        mean = (a_prev**0.5 * beta_t) / (1 - a_t) * x0 + alpha_t**0.5 * (1 - a_prev) / (1 - a_t) * x
        if t > 0:
            noise = torch.randn(eps.shape, generator=generator, dtype=eps.dtype).to(eps.device)
            variance = torch.clamp((1 - a_prev) / (1 - a_t) * beta_t, min=1e-20)
            mean = mean + variance**0.5 * noise
        return mean, x0

    def ddim_step(
        self, x: torch.Tensor, eps: torch.Tensor, t: int, prev_t: int, *, clip: bool, eta: float,
        generator: torch.Generator | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One DDIM step ``x_t -> x_{prev_t}`` (``eta=0``: deterministic); returns ``(x_prev, x0)``."""
        a_t, a_prev = self.alpha(t), self.alpha(prev_t)
        x0 = self.predict_x0(x, eps, t, clip)
        std = eta * (((1 - a_prev) / (1 - a_t)) * (1 - a_t / a_prev)) ** 0.5
        out = a_prev**0.5 * x0 + (1 - a_prev - std**2) ** 0.5 * eps
        if eta > 0:
            out = out + std * torch.randn(eps.shape, generator=generator, dtype=eps.dtype).to(eps.device)
        return out, x0
