"""DiT: a class-conditional diffusion transformer (Peebles & Xie 2023), hooked at every step.

Read top to bottom: the fixed 2-D sin-cos position table, patchify, the adaLN-Zero block, then the
model (patchify -> blocks -> modulated final norm -> unpatchify). Numerics follow diffusers'
``DiTTransformer2DModel`` exactly, including its layout quirks: every block has its own timestep + class
embedder, and the final layer reads block 0's conditioning vector.

Hook names follow the decoder scheme over patch positions (row-major patches); the adaLN modulation
vectors have their own points (``blocks.{i}.hook_shift_msa``...). ``hook_attn_out`` and ``hook_mlp_out``
are what the block adds to the residual (after the gate), so ``resid_post = resid_pre + attn_out + mlp_out``.
The sampler (DDPM / DDIM, with a step axis in its caches) is :meth:`DiT.sample`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from hookscope.components.adaln import AdaLNModulation, TimestepClassEmbed, modulate
from hookscope.components.attention import Attention
from hookscope.components.masks import AttentionMask
from hookscope.components.mlp import MLP
from hookscope.components.norm import LayerNorm
from hookscope.hooks import HookedModule, HookPoint
from hookscope.models.dit_config import DiTConfig

MODULATIONS = ("shift_msa", "scale_msa", "gate_msa", "shift_mlp", "scale_mlp", "gate_mlp")  # chunk order


def sincos_positions_2d(d_model: int, grid: int, base_grid: int) -> torch.Tensor:
    """Fixed positions ``[grid * grid, d_model]`` for row-major patches (diffusers / MAE recipe).

    The first half of the channels encodes the patch's column, the second its row, each as
    ``[sin, cos]`` of ``coord * 10000 ** (-k / (d/4))``; coordinates are rescaled by
    ``base_grid / grid`` so another image size spans the same range. Computed in float64 from float32
    coordinates and rounded to float32, as diffusers stores it.
    """
    coords = torch.arange(grid, dtype=torch.float32) / (grid / base_grid)  # [grid]
    cols = coords[None, :].expand(grid, grid).reshape(-1)  # [pos]: column of each row-major patch
    rows = coords[:, None].expand(grid, grid).reshape(-1)  # [pos]: its row
    quarter = d_model // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)  # [d_model / 4]

    def axis(pos: torch.Tensor) -> torch.Tensor:
        angles = pos.double()[:, None] * omega[None, :]
        return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)

    return torch.cat([axis(cols), axis(rows)], dim=1).float()


class PatchEmbed(nn.Module):
    """``[batch, channel, H, W]`` -> ``[batch, patch, d_model]`` through a strided conv (row-major patches)."""

    def __init__(self, in_channels: int, d_model: int, patch_size: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_channels, d_model, kernel_size=patch_size, stride=patch_size)
        self.hook_patch_embed = HookPoint()  # [batch, patch, d_model]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.hook_patch_embed(self.proj(images).flatten(2).transpose(1, 2))


class DiTBlock(nn.Module):
    """Conditioning -> adaLN-Zero modulation -> attention and MLP, each gated into the residual."""

    def __init__(self, cfg: DiTConfig) -> None:
        super().__init__()
        d = cfg.d_model
        self.cond = TimestepClassEmbed(d, cfg.n_classes, cfg.n_freq)
        self.adaln = AdaLNModulation(d, len(MODULATIONS))
        self.ln1 = LayerNorm(d, eps=1e-6, affine=False)
        self.attn = Attention(d, cfg.n_heads, cfg.n_heads, cfg.d_head, qkv_bias=cfg.attn_bias, out_bias=True,
                              softmax_in_float32=False)
        self.ln2 = LayerNorm(d, eps=cfg.mlp_norm_eps, affine=cfg.mlp_norm_affine)
        self.mlp = MLP(d, cfg.mlp_width, cfg.act_fn, bias=True)
        self.hook_cond = HookPoint()  # [batch, d_model]
        for m in MODULATIONS:
            setattr(self, f"hook_{m}", HookPoint())  # [batch, d_model]
        self.hook_resid_pre = HookPoint()  # [batch, pos, d_model]
        self.hook_modulated_msa = HookPoint()  # [batch, pos, d_model]
        self.hook_attn_out = HookPoint()  # [batch, pos, d_model], gated
        self.hook_resid_mid = HookPoint()  # [batch, pos, d_model]
        self.hook_modulated_mlp = HookPoint()  # [batch, pos, d_model]
        self.hook_mlp_out = HookPoint()  # [batch, pos, d_model], gated
        self.hook_resid_post = HookPoint()  # [batch, pos, d_model]

    def forward(
        self, resid: torch.Tensor, timesteps: torch.Tensor, labels: torch.Tensor, mask: AttentionMask
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(resid_post [batch, pos, d_model], cond [batch, d_model])``."""
        cond = self.hook_cond(self.cond(timesteps, labels, resid.dtype))
        mod = {m: getattr(self, f"hook_{m}")(v) for m, v in zip(MODULATIONS, self.adaln(cond), strict=True)}
        resid = self.hook_resid_pre(resid)
        h = self.hook_modulated_msa(modulate(self.ln1(resid), mod["shift_msa"], mod["scale_msa"]))
        attn_out = self.hook_attn_out(mod["gate_msa"][:, None] * self.attn(h, h, mask))
        resid = self.hook_resid_mid(attn_out + resid)
        h = self.hook_modulated_mlp(modulate(self.ln2(resid), mod["shift_mlp"], mod["scale_mlp"]))
        mlp_out = self.hook_mlp_out(mod["gate_mlp"][:, None] * self.mlp(h))
        return self.hook_resid_post(mlp_out + resid), cond


class DiT(HookedModule):
    """Class-conditional DiT denoiser: ``forward(images, timesteps, class_labels) -> model output``.

    The output has ``out_channels`` channels: the predicted noise (and, with ``2 * in_channels``, the
    variance interpolation the DiT checkpoints also predict).
    """

    def __init__(self, cfg: DiTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        self.embed = PatchEmbed(cfg.in_channels, d, cfg.patch_size)
        self.register_buffer("pos_table", sincos_positions_2d(d, cfg.grid, cfg.grid), persistent=False)
        self.hook_pos_embed = HookPoint()  # [batch, pos, d_model]
        self.blocks = nn.ModuleList(DiTBlock(cfg) for _ in range(cfg.n_layers))
        self.final_adaln = AdaLNModulation(d, 2)
        self.hook_shift_final = HookPoint()  # [batch, d_model]
        self.hook_scale_final = HookPoint()  # [batch, d_model]
        self.ln_final = LayerNorm(d, eps=1e-6, affine=False)
        self.hook_modulated_final = HookPoint()  # [batch, pos, d_model]
        self.unembed = nn.Linear(d, cfg.patch_size**2 * cfg.out_channels)
        self.hook_patch_out = HookPoint()  # [batch, pos, patch_size * patch_size * out_channels]
        self.hook_image_out = HookPoint()  # [batch, out_channels, height, width]
        self.tokenizer = None
        self.setup_hooks()

    # ------------------------------------------------------------------ inputs
    def _check_inputs(
        self, images: Any, timesteps: Any, class_labels: Any
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        cfg = self.cfg
        if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != cfg.in_channels:
            got = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise ValueError(f"images must be a tensor [batch, {cfg.in_channels}, side, side], got {got}")
        b, _, h, w = images.shape
        if h != w or h % cfg.patch_size:
            raise ValueError(f"images must be square with a side that is a multiple of {cfg.patch_size}, got {h}x{w}")
        t = torch.as_tensor(timesteps, device=images.device)
        if t.ndim == 0:
            t = t.expand(b)
        if t.ndim != 1 or t.shape[0] not in (1, b):
            raise ValueError(f"timesteps must be a number or a [batch={b}] tensor, got shape {tuple(t.shape)}")
        if class_labels is None:
            y = torch.full((b,), cfg.n_classes, dtype=torch.long, device=images.device)  # the null class
        else:
            y = torch.as_tensor(class_labels, device=images.device)
            if y.ndim == 0:
                y = y.expand(b)
            if y.shape != (b,) or y.dtype.is_floating_point:
                raise ValueError(f"class_labels must be integers [batch={b}], got {tuple(y.shape)} {y.dtype}")
            if bool(((y < 0) | (y > cfg.n_classes)).any()):
                raise ValueError(f"class_labels must be in 0..{cfg.n_classes} ({cfg.n_classes} = unconditional)")
        return images, t.expand(b) if t.shape[0] == 1 else t, y

    def positions(self, grid: int) -> torch.Tensor:
        """The position table ``[grid * grid, d_model]`` for a ``grid x grid`` patch layout."""
        if grid == self.cfg.grid:
            return self.pos_table
        return sincos_positions_2d(self.cfg.d_model, grid, self.cfg.grid).to(self.pos_table.device)

    # ------------------------------------------------------------------ forward
    def forward(
        self, images: torch.Tensor, timesteps: torch.Tensor | float, class_labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Model output ``[batch, out_channels, side, side]`` for noisy ``images`` at ``timesteps``.

        ``class_labels`` ``[batch]`` in ``0..n_classes-1``, or ``n_classes`` / None for the null class.
        """
        images, t, y = self._check_inputs(images, timesteps, class_labels)
        grid = images.shape[-1] // self.cfg.patch_size
        patches = self.embed(images)  # [batch, pos, d_model]
        pos = self.hook_pos_embed(self.positions(grid)[None].expand(patches.shape[0], -1, -1))
        resid = (patches + pos).to(patches.dtype)
        n = resid.shape[1]
        mask = AttentionMask(None, torch.arange(n, device=resid.device), n, causal=False)
        cond0 = None
        for block in self.blocks:
            resid, cond = block(resid, t, y, mask)
            cond0 = cond if cond0 is None else cond0
        shift, scale = self.final_adaln(cond0)
        shift, scale = self.hook_shift_final(shift), self.hook_scale_final(scale)
        h = self.hook_modulated_final(modulate(self.ln_final(resid), shift, scale))
        out = self.hook_patch_out(self.unembed(h))  # [batch, pos, p * p * out_channels]
        return self.hook_image_out(self.unpatchify(out))

    def unpatchify(self, patches: torch.Tensor) -> torch.Tensor:
        """``[batch, pos, p * p * out_channels]`` (row-major square grid) -> ``[batch, out_channels, side, side]``."""
        p, c = self.cfg.patch_size, self.cfg.out_channels
        grid = round(patches.shape[1] ** 0.5)
        out = patches.reshape(-1, grid, grid, p, p, c).permute(0, 5, 1, 3, 2, 4)  # [b, c, row, p, col, q]
        return out.reshape(-1, c, grid * p, grid * p)

    def decode_residual(self, resid: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """The model output ``[batch, out_channels, side, side]`` read from any residual ``[batch, pos, d_model]``.

        Applies the final layer (modulated by the conditioning vector ``cond [batch, d_model]``, which the
        model takes from block 0: ``blocks.0.hook_cond``) as if ``resid`` were the last block's output:
        the DiT analogue of a logit lens.
        """
        shift, scale = self.final_adaln(cond)
        return self.unpatchify(self.unembed(modulate(self.ln_final(resid), shift, scale)))

    def sample(self, *args: Any, **kwargs: Any) -> Any:
        """See :func:`hookscope.models.dit_sampler.sample`."""
        from hookscope.models.dit_sampler import sample

        return sample(self, *args, **kwargs)
