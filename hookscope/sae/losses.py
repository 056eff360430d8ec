"""Training losses of each SAE architecture, and the per-batch metrics the progress bar shows."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from hookscope.sae.jumprelu import step
from hookscope.sae.sae import SAE


@dataclass(frozen=True, kw_only=True)
class LossWeights:
    """Coefficients of one step (warmups already applied)."""

    l1: float = 0.0  # standard: L1 of the latents weighted by their decoder-row norms
    l0: float = 0.0  # jumprelu: the (straight-through) count of active latents
    aux_k: float = 0.0  # topk / batchtopk: auxiliary loss that revives dead latents
    aux_k_size: int = 0  # how many dead latents the auxiliary reconstruction may use


def sae_loss(
    sae: SAE, x: torch.Tensor, weights: LossWeights, dead: torch.Tensor | None
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The loss of a batch of rows ``x`` ``[batch, d_in]`` (already scaled), and its parts (detached).

    MSE is summed over ``d_in`` and averaged over rows (SAELens's convention).
    """
    x_in = x - sae.b_dec if sae.cfg.apply_b_dec_to_input else x
    pre = x_in @ sae.W_enc + sae.b_enc  # [batch, d_sae]
    acts = sae.activation(pre)
    recons = acts @ sae.W_dec + sae.b_dec
    residual = x - recons
    mse = residual.pow(2).sum(-1).mean()
    loss = mse
    parts = {"mse": mse.detach()}
    if weights.l1:
        l1 = (acts * sae.W_dec.norm(dim=-1)).sum(-1).mean()
        loss = loss + weights.l1 * l1
        parts["l1"] = l1.detach()
    if weights.l0:
        l0 = step(pre, sae.threshold).sum(-1).mean()
        loss = loss + weights.l0 * l0
        parts["l0_loss"] = l0.detach()
    if weights.aux_k and dead is not None and bool(dead.any()):
        aux = _aux_k_loss(sae, pre, residual.detach(), dead, weights.aux_k_size)
        loss = loss + weights.aux_k * aux
        parts["aux_k"] = aux.detach()
    parts["acts"] = acts.detach()
    parts["recons"] = recons.detach()
    return loss, parts


def _aux_k_loss(sae: SAE, pre: torch.Tensor, residual: torch.Tensor, dead: torch.Tensor, k_aux: int) -> torch.Tensor:
    """Reconstruct the residual from the top ``k_aux`` dead latents (Gao et al., 2024), scaled by the dead share."""
    n_dead = int(dead.sum())
    k = max(1, min(k_aux, n_dead))
    dead_pre = pre[:, dead]  # [batch, n_dead]
    values, idx = dead_pre.topk(k, dim=-1)
    aux_acts = torch.zeros_like(dead_pre).scatter(-1, idx, torch.relu(values))
    aux_recons = aux_acts @ sae.W_dec[dead]
    scale = min(n_dead / max(k_aux, 1), 1.0)
    return scale * (aux_recons - residual).pow(2).sum(-1).mean()


def batch_metrics(x: torch.Tensor, recons: torch.Tensor, acts: torch.Tensor) -> dict[str, float]:
    """MSE (per row, summed over d_in), L0 (mean active latents per row) and explained variance."""
    err = (x - recons).pow(2).sum()
    total = (x - x.mean(0)).pow(2).sum()
    return {
        "mse": float(err / len(x)),
        "l0": float((acts != 0).sum(-1).float().mean()),
        "explained_variance": float(1 - err / total.clamp_min(1e-30)),
    }
