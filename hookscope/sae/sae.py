"""The sparse autoencoder: ReLU ("standard"), TopK, BatchTopK and JumpReLU, with hook points inside.

Encode: ``pre = (x * s - b_dec) @ W_enc + b_enc`` (``s`` the activation-norm scale, ``b_dec`` subtracted
only when ``apply_b_dec_to_input``), ``acts = f(pre)``; decode: ``x_hat = (acts @ W_dec + b_dec) / s``.
The hook points are named as in SAELens (``hook_sae_input``, ``hook_sae_acts_pre``, ``hook_sae_acts_post``,
``hook_sae_recons``, ``hook_sae_error``, ``hook_sae_output``), so that, spliced into a model at
``blocks.6.hook_resid_post``, the latents are cached as ``blocks.6.hook_resid_post.hook_sae_acts_post``.
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from hookscope.hooks import HookedModule, HookPoint, hooks_active
from hookscope.sae.config import SAEConfig
from hookscope.sae.jumprelu import jumprelu


def _dtype(name: str) -> torch.dtype:
    value = getattr(torch, name.replace("torch.", ""), None)
    if not isinstance(value, torch.dtype):
        raise ValueError(f"unknown dtype {name!r} in the SAE config (use e.g. 'float32')")
    return value


class SAE(HookedModule):
    """A sparse autoencoder over one activation of width ``cfg.d_in``.

    ``sae(x)`` returns the reconstruction (``use_error_term=True``: the input exactly, while the latents
    still run through the hook points, so ablating or patching a latent changes the output by exactly
    its decoded contribution). Inputs may have any leading axes; an input whose last two axes multiply
    to ``d_in`` (``hook_z``'s ``[..., head_index, d_head]``) is flattened over them and restored. A
    single-head SAE (``cfg.hook_head_index``) reads and replaces only its head's slice of ``hook_z``.
    """

    def __init__(self, cfg: SAEConfig, device: torch.device | str | None = None, seed: int | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        dtype = _dtype(cfg.dtype)
        kw = {"device": device, "dtype": dtype}
        self.W_enc = nn.Parameter(torch.empty(cfg.d_in, cfg.d_sae, **kw))  # [d_in, d_sae]
        self.b_enc = nn.Parameter(torch.zeros(cfg.d_sae, **kw))
        self.W_dec = nn.Parameter(torch.empty(cfg.d_sae, cfg.d_in, **kw))  # [d_sae, d_in]
        self.b_dec = nn.Parameter(torch.zeros(cfg.d_in, **kw))
        if cfg.architecture == "jumprelu":
            self.threshold = nn.Parameter(torch.full((cfg.d_sae,), 1e-3, **kw))
        elif cfg.architecture == "batchtopk":  # estimated while training (see hookscope.sae.train)
            self.register_buffer("threshold", torch.zeros(cfg.d_sae, **kw))
        self.register_buffer("norm_scaling_factor", torch.ones((), **kw))
        self._norm_state: torch.Tensor | tuple | None = None  # per-input statistics from the last encode
        self.hook_sae_input = HookPoint()
        self.hook_sae_acts_pre = HookPoint()
        self.hook_sae_acts_post = HookPoint()
        self.hook_sae_recons = HookPoint()
        self.hook_sae_error = HookPoint()
        self.hook_sae_output = HookPoint()
        self.reset_parameters(seed)
        self.setup_hooks()

    def reset_parameters(self, seed: int | None = None) -> None:
        """Decoder rows drawn at random with norm 0.1, encoder initialised as the decoder's transpose."""
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        w = torch.randn(self.cfg.d_sae, self.cfg.d_in, generator=gen, dtype=torch.float64)
        w = 0.1 * w / w.norm(dim=-1, keepdim=True)
        with torch.no_grad():
            self.W_dec.copy_(w.to(self.W_dec.dtype))
            self.W_enc.copy_(w.T.to(self.W_enc.dtype))
            self.b_enc.zero_()
            self.b_dec.zero_()

    @property
    def hook_name(self) -> str | None:
        """Where the SAE reads (and, spliced, writes): ``cfg.hook_name``."""
        return self.cfg.hook_name

    # ------------------------------------------------------------------ the computation
    def read_input(self, x: torch.Tensor) -> torch.Tensor:
        """The part of a hook's activation this SAE reads, ``[..., d_in]``.

        ``[..., d_in]`` as it is; ``hook_z``'s ``[..., head_index, d_head]`` flattened over heads when
        ``n_heads * d_head == d_in``; with ``cfg.hook_head_index`` set, head ``h``'s slice ``[..., d_head]``
        of a 4-D ``[batch, pos, head_index, d_head]`` activation (lower-dimensional inputs are rows already).
        """
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"an SAE takes a tensor [..., {self.cfg.d_in}], got {type(x).__name__}")
        head = self.cfg.hook_head_index
        if head is not None and x.ndim == 4:
            if x.shape[-1] != self.cfg.d_in or head >= x.shape[-2]:
                raise ValueError(
                    f"this SAE reads head {head} of a [batch, pos, head_index, d_head={self.cfg.d_in}] activation; "
                    f"got shape {tuple(x.shape)} (hook {self.cfg.hook_name!r})"
                )
            return x[..., head, :]
        if x.shape[-1] == self.cfg.d_in:
            return x
        if x.ndim >= 2 and x.shape[-1] * x.shape[-2] == self.cfg.d_in:
            return x.flatten(-2)
        raise ValueError(
            f"this SAE reads activations of width d_in={self.cfg.d_in}; got shape {tuple(x.shape)} "
            f"(hook {self.cfg.hook_name!r})"
        )

    def write_output(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``x`` (a hook's activation) with the part :meth:`read_input` reads replaced by ``y`` ``[..., d_in]``."""
        y = y.to(x.dtype)
        if self.cfg.hook_head_index is not None and x.ndim == 4:
            out = x.clone()
            out[..., self.cfg.hook_head_index, :] = y  # the other heads pass through untouched
            return out
        return y.reshape(x.shape)

    def encode_pre(self, x: torch.Tensor) -> torch.Tensor:
        """Pre-activations ``[..., d_sae]`` of an input ``[..., d_in]`` (runs the input and pre hooks)."""
        x = self.hook_sae_input(self.read_input(x).to(self.W_enc.dtype))
        x, self._norm_state = self.normalize_input(x)
        if self.cfg.apply_b_dec_to_input:
            x = x - self.b_dec
        return self.hook_sae_acts_pre(x @ self.W_enc + self.b_enc)

    def activation(self, pre: torch.Tensor) -> torch.Tensor:
        """The architecture's sparsifying function of the pre-activations."""
        arch = self.cfg.architecture
        if arch == "standard":
            return torch.relu(pre)
        if arch == "topk" or (arch == "batchtopk" and self.training):
            return _topk(pre, self.cfg.k, per_batch=arch == "batchtopk")  # type: ignore[arg-type]
        if arch == "jumprelu" and self.training:
            return jumprelu(pre, self.threshold)
        # jumprelu, and batchtopk at inference (SAELens: ReLU, then the threshold mask)
        return torch.relu(pre) * (pre > self.threshold)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Latent activations ``[..., d_sae]`` of ``x`` ``[..., d_in]``."""
        return self.hook_sae_acts_post(self.activation(self.encode_pre(x)))

    def decode(self, acts: torch.Tensor) -> torch.Tensor:
        """The reconstruction ``[..., d_in]`` of latent activations ``[..., d_sae]``."""
        recons = self.hook_sae_recons(acts @ self.W_dec + self.b_dec)
        return self.denormalize_output(recons, self._norm_state)

    # ------------------------------------------------------------------ activation normalisation
    def normalize_input(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | tuple | None]:
        """``x`` as the encoder sees it (``cfg.normalize_activations``), and what undoing it needs.

        Definitions follow SAELens: "layer_norm" centres each row and divides by ``std + 1e-5`` (unbiased
        std); "constant_norm_rescale" scales each row to norm ``sqrt(d_in)``; "expected_average_only_in"
        and "none" multiply by the scalar ``norm_scaling_factor`` (1 for "none").
        """
        mode = self.cfg.normalize_activations
        if mode == "layer_norm":
            mu = x.mean(dim=-1, keepdim=True)
            x = x - mu
            std = x.std(dim=-1, keepdim=True)
            return x / (std + 1e-5), (mu, std)
        if mode == "constant_norm_rescale":
            coeff = math.sqrt(self.cfg.d_in) / x.norm(dim=-1, keepdim=True)
            return x * coeff, coeff
        return x * self.norm_scaling_factor, None

    def denormalize_output(self, y: torch.Tensor, state: torch.Tensor | tuple | None) -> torch.Tensor:
        """Undo :meth:`normalize_input` on a reconstruction, given the ``state`` it returned for the input."""
        mode = self.cfg.normalize_activations
        if mode in ("layer_norm", "constant_norm_rescale"):
            if state is None:
                raise ValueError(
                    f"normalize_activations={mode!r} decodes with the statistics of the input it encoded: "
                    "call encode() on the inputs before decode(), or use sae(x)"
                )
            if mode == "layer_norm":
                mu, std = state
                return y * std + mu
            return y / state
        return y / self.norm_scaling_factor

    def forward(self, x: torch.Tensor, use_error_term: bool = False) -> torch.Tensor:
        """The reconstruction of ``x`` (same shape and dtype), or ``x`` itself plus edits with the error term."""
        flat = self.read_input(x)
        recons = self.decode(self.encode(flat))
        if use_error_term:
            inner = (self.hook_sae_input, self.hook_sae_acts_pre, self.hook_sae_acts_post, self.hook_sae_recons)
            with torch.no_grad():
                # the same computation without hooks; equal bit for bit when no hook edited anything
                clean = self._plain_recons(flat) if hooks_active(inner) else recons.detach()
            x_in = flat.detach().to(recons.dtype)
            err_clean = x_in - clean
            err = self.hook_sae_error(err_clean)
            # == recons + err, written so that unedited latents and error give back x exactly
            recons = x_in + (recons - clean) + (err - err_clean)
        return self.write_output(x, self.hook_sae_output(recons))

    def _plain_recons(self, x: torch.Tensor) -> torch.Tensor:
        x, state = self.normalize_input(x.to(self.W_enc.dtype))
        if self.cfg.apply_b_dec_to_input:
            x = x - self.b_dec
        acts = self.activation(x @ self.W_enc + self.b_enc)
        return self.denormalize_output(acts @ self.W_dec + self.b_dec, state)

    # ------------------------------------------------------------------ weights
    @torch.no_grad()
    def fold_W_dec_norm(self) -> None:
        """Rescale so every decoder row has unit norm, keeping the function (and L0) the same.

        Latent ``i`` is multiplied by ``|W_dec[i]|`` and its decoder row divided by it; the encoder column,
        encoder bias and threshold scale with it.
        """
        norms = self.W_dec.norm(dim=-1).clamp_min(1e-12)  # [d_sae]
        self.W_dec.div_(norms[:, None])
        self.W_enc.mul_(norms)
        self.b_enc.mul_(norms)
        if hasattr(self, "threshold"):
            self.threshold.mul_(norms)

    @torch.no_grad()
    def fold_activation_norm_scaling_factor(self) -> None:
        """Fold the input scale into the weights so the SAE reads raw activations (scale becomes 1).

        Only the scalar "expected_average_only_in" scale folds; per-input normalisations stay as they are.
        """
        if self.cfg.normalize_activations not in ("none", "expected_average_only_in"):
            return
        s = self.norm_scaling_factor
        self.W_enc.mul_(s)
        self.W_dec.div_(s)
        self.b_dec.div_(s)
        self.norm_scaling_factor.fill_(1.0)
        self.cfg = replace(self.cfg, normalize_activations="none")

    @torch.no_grad()
    def set_decoder_norm_to_unit_norm(self) -> None:
        self.W_dec.div_(self.W_dec.norm(dim=-1, keepdim=True).clamp_min(1e-12))

    @torch.no_grad()
    def remove_gradient_parallel_to_decoder_directions(self) -> None:
        """Project out the part of ``W_dec``'s gradient along each row (keeps unit rows unit to first order)."""
        if self.W_dec.grad is None:
            return
        unit = self.W_dec / self.W_dec.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        parallel = (self.W_dec.grad * unit).sum(-1, keepdim=True)
        self.W_dec.grad.sub_(parallel * unit)

    # ------------------------------------------------------------------ files
    def save(self, folder: str | Path) -> Path:
        """Write SAELens's format: ``cfg.json`` + ``sae_weights.safetensors`` (see :mod:`hookscope.sae.saelens`)."""
        from hookscope.sae.saelens import save_sae

        return save_sae(self, folder)

    @classmethod
    def load(
        cls, folder: str | Path, device: torch.device | str | None = None, dtype: str | None = None,
        subfolder: str | None = None, norm_scaling_factor: float | None = None,
    ) -> SAE:
        """Read an SAE folder in SAELens's format (ours, or one SAELens wrote; a hub repo id + ``subfolder``).

        ``norm_scaling_factor``: the "expected_average_only_in" input scale when the folder does not carry it.
        """
        from hookscope.sae.saelens import load_sae

        return load_sae(folder, device=device, dtype=dtype, subfolder=subfolder,
                        norm_scaling_factor=norm_scaling_factor)

    def extra_repr(self) -> str:
        c = self.cfg
        k = f", k={c.k}" if c.k is not None else ""
        return f"{c.architecture}, d_in={c.d_in}, d_sae={c.d_sae}{k}, hook={c.hook_name!r}"


def _topk(pre: torch.Tensor, k: int, per_batch: bool) -> torch.Tensor:
    """Keep the k largest pre-activations per input (``per_batch``: ``k * rows`` over the whole batch), then ReLU."""
    if per_batch:
        flat = pre.reshape(-1)
        n = min(k * math.prod(pre.shape[:-1]), flat.numel())
        values, idx = flat.topk(n, sorted=False)
        return torch.zeros_like(flat).scatter(0, idx, torch.relu(values)).reshape(pre.shape)
    values, idx = pre.topk(k, dim=-1, sorted=False)
    return torch.zeros_like(pre).scatter(-1, idx, torch.relu(values))

