"""Training losses of each SAE architecture, and the per-batch metrics the progress bar shows."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F

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

    MSE is summed over ``d_in`` and averaged over rows (SAELens's convention). TopK always runs sparse,
    a standard SAE once few enough latents fire (see :func:`_topk_forward`, :func:`_relu_forward`).
    """
    arch = sae.cfg.architecture
    sparse_ok = x.dtype in (torch.float32, torch.float64)  # what torch's sparse kernels take
    fwd = None
    if sparse_ok and arch == "topk":
        fwd = _topk_forward(sae, x)
    elif sparse_ok and arch == "standard":
        fwd = _relu_forward(sae, x)
    if fwd is not None:
        pre, acts, recons, act_sums = fwd.pre, fwd.dense, fwd.recons, fwd.sums
    else:
        pre = x @ sae.W_enc + _encoder_bias(sae)  # [batch, d_sae]
        if arch == "topk":  # ranked by decoder norms, decoded along unit rows (see _topk_forward)
            norms = sae.W_dec.norm(dim=-1)
            pre = pre * norms
            acts = sae.activation(pre)
            recons = (acts / norms) @ sae.W_dec + sae.b_dec
        else:
            acts = sae.activation(pre)
            recons = acts @ sae.W_dec + sae.b_dec
        act_sums = acts.sum(0)
    residual = x - recons
    mse = residual.pow(2).sum(-1).mean()
    loss = mse
    parts = {"mse": mse.detach()}
    if weights.l1:
        l1 = act_sums @ sae.W_dec.norm(dim=-1) / len(x)  # == mean over rows of sum_i acts_i |W_dec[i]|
        loss = loss + weights.l1 * l1
        parts["l1"] = l1.detach()
    if weights.l0:
        l0 = step(pre, sae.threshold).sum(-1).mean()
        loss = loss + weights.l0 * l0
        parts["l0_loss"] = l0.detach()
    if weights.aux_k and dead is not None and bool(dead.any()):
        aux = _aux_k_loss(sae, x, pre, fwd, residual.detach(), dead, weights.aux_k_size)
        loss = loss + weights.aux_k * aux
        parts["aux_k"] = aux.detach()
    parts["acts"] = acts.detach()
    parts["recons"] = recons.detach()
    return loss, parts


def _encoder_bias(sae: SAE) -> torch.Tensor:
    """``b_enc - b_dec @ W_enc``: ``(x - b_dec) @ W_enc + b_enc`` without a gradient through ``[batch, d_in]``."""
    return sae.b_enc - sae.b_dec @ sae.W_enc if sae.cfg.apply_b_dec_to_input else sae.b_enc


class _PicksOfPre(torch.autograd.Function):
    """``(x @ W_enc)[rows, cols]`` (the picked latents of each row) from the pre-activations already computed.

    The backward touches only the picked entries (a sparse product, ``n_picked * d_in`` multiply-adds)
    instead of the dense ``d_in x batch x d_sae`` product autograd would run.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, w_enc: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor,
                pre_x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, w_enc, rows, cols)
        return pre_x[rows, cols]

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, w_enc, rows, cols = ctx.saved_tensors
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:  # G @ W_enc^T with G [batch, d_sae] holding ``grad`` at the picks
            g = torch.sparse_coo_tensor(torch.stack([rows, cols]), grad, (len(x), w_enc.shape[1]),
                                        check_invariants=False)
            grad_x = torch.sparse.mm(g, w_enc.T)
        if ctx.needs_input_grad[1]:  # (G^T @ x)^T
            g_t = torch.sparse_coo_tensor(torch.stack([cols, rows]), grad, (w_enc.shape[1], len(x)),
                                          check_invariants=False)
            grad_w = torch.sparse.mm(g_t, x).T  # [d_in, d_sae]
        return grad_x, grad_w, None, None, None


class _SparsePass(NamedTuple):
    pre: torch.Tensor  # [batch, d_sae] the pre-activations that rank / gate (no graph)
    pre_x: torch.Tensor  # [batch, d_sae] x @ W_enc (no graph)
    bias: torch.Tensor  # [d_sae] the encoder bias (with its graph)
    dense: torch.Tensor  # [batch, d_sae] the latents, for the metrics (no graph)
    recons: torch.Tensor  # [batch, d_in]
    sums: torch.Tensor  # [d_sae] each latent summed over the batch (with its graph, for the L1)


def _picked_values(sae: SAE, x: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, pre_x: torch.Tensor,
                   bias: torch.Tensor) -> torch.Tensor:
    """ReLU of the pre-activations at ``(rows, cols)``, recomputed with a graph."""
    return torch.relu(_PicksOfPre.apply(x, sae.W_enc, rows, cols, pre_x) + bias[cols])


def _topk_forward(sae: SAE, x: torch.Tensor) -> _SparsePass:
    """TopK's training forward, sparse after the one dense encoder product.

    As SAELens trains TopK (``rescale_acts_by_decoder_norm``): latent ``i`` is ranked by its pre-activation
    times ``|W_dec[i]|`` and decoded along the unit row ``W_dec[i] / |W_dec[i]|``, so the decoder rows
    keep their own norms (no projection); folding the norms afterwards gives the plain TopK SAE of the
    same function. The k largest are picked without a graph, recomputed with one (:class:`_PicksOfPre`)
    and decoded as a weighted sum of k decoder rows (``embedding_bag``): the function and gradients of the
    dense ``topk -> scatter -> acts @ W_dec``, at ``batch * k * d_in`` cost.
    """
    bias = _encoder_bias(sae)
    norms = sae.W_dec.norm(dim=-1)  # [d_sae]
    k = sae.cfg.k
    with torch.no_grad():
        pre_x = x @ sae.W_enc  # [batch, d_sae]
        pre = (pre_x + bias) * norms
        idx = pre.topk(k, dim=-1, sorted=False).indices  # [batch, k]
    rows = torch.arange(len(x), device=x.device).repeat_interleave(k)
    # relu(p * |W_dec|) * W_dec / |W_dec| == relu(p) * W_dec: the norms only rank
    weights = _picked_values(sae, x, rows, idx.reshape(-1), pre_x, bias).reshape(idx.shape)  # [batch, k]
    recons = F.embedding_bag(idx, sae.W_dec, per_sample_weights=weights, mode="sum") + sae.b_dec
    acts = weights * norms[idx]  # the latents as ranked (SAELens's feature_acts)
    dense = torch.zeros_like(pre).scatter_(-1, idx, acts.detach())
    sums = torch.zeros_like(norms).index_add(0, idx.reshape(-1), acts.reshape(-1))
    return _SparsePass(pre=pre, pre_x=pre_x, bias=bias, dense=dense, recons=recons, sums=sums)


SPARSE_DENSITY = 0.08  # below this share of firing latents a standard SAE's step runs sparse


def _relu_forward(sae: SAE, x: torch.Tensor) -> _SparsePass | None:
    """A standard (ReLU) SAE's training forward, sparse when under ``SPARSE_DENSITY`` of the latents fire.

    Only the positive pre-activations are recomputed with a graph and decoded (``embedding_bag`` with one
    bag per row): the function and gradients of ``relu(pre) @ W_dec``. None when too many fire (early in
    training), for the dense formula, which is then faster.
    """
    bias = _encoder_bias(sae)
    with torch.no_grad():
        pre_x = x @ sae.W_enc  # [batch, d_sae]
        pre = pre_x + bias
        rows, cols = torch.nonzero(pre > 0, as_tuple=True)  # row-major: each row's latents together
    if len(rows) > SPARSE_DENSITY * pre.numel():
        return None
    values = _picked_values(sae, x, rows, cols, pre_x, bias)  # [n_active]
    offsets = torch.searchsorted(rows, torch.arange(len(x), device=x.device))
    recons = F.embedding_bag(cols, sae.W_dec, offsets, mode="sum", per_sample_weights=values) + sae.b_dec
    dense = torch.zeros_like(pre).index_put_((rows, cols), values.detach())
    sums = torch.zeros(pre.shape[1], dtype=values.dtype, device=x.device).index_add(0, cols, values)
    return _SparsePass(pre=pre, pre_x=pre_x, bias=bias, dense=dense, recons=recons, sums=sums)


def _aux_k_loss(
    sae: SAE, x: torch.Tensor, pre: torch.Tensor, picked: _SparsePass | None, residual: torch.Tensor,
    dead: torch.Tensor, k_aux: int,
) -> torch.Tensor:
    """Reconstruct the residual from the top ``k_aux`` dead latents (Gao et al., 2024), scaled by the dead share."""
    n_dead = int(dead.sum())
    k = max(1, min(k_aux, n_dead))
    scale = min(n_dead / max(k_aux, 1), 1.0)
    if picked is not None:  # TopK's sparse path: pick with no graph, recompute the picks with one
        with torch.no_grad():
            idx = pre.masked_fill(~dead, float("-inf")).topk(k, dim=-1, sorted=False).indices  # [batch, k]
        rows = torch.arange(len(x), device=x.device).repeat_interleave(k)
        values = _picked_values(sae, x, rows, idx.reshape(-1), picked.pre_x, picked.bias).reshape(idx.shape)
        aux_recons = F.embedding_bag(idx, sae.W_dec, per_sample_weights=values, mode="sum")
        return scale * (aux_recons - residual).pow(2).sum(-1).mean()
    dead_pre = pre[:, dead]  # [batch, n_dead]
    values, idx = dead_pre.topk(k, dim=-1)
    aux_acts = torch.zeros_like(dead_pre).scatter(-1, idx, torch.relu(values))
    aux_recons = aux_acts @ sae.W_dec[dead]
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
