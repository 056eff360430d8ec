"""Training an SAE on activations harvested from a hooked model (or on a tensor of activations).

Adam with a linear learning-rate warmup and a linear decay over the last ``lr_decay_steps``, an L1 (or L0)
coefficient warmup, dead-latent handling (the auxiliary-k loss for TopK/BatchTopK, resampling for the
others), a progress bar with MSE / L0 / explained variance / dead fraction, checkpoints in SAELens's
format, a seed, and DistributedDataParallel when ``torch.distributed`` is initialised (``torchrun``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from tqdm.auto import tqdm

from hookscope.hooks import HookedModule
from hookscope.sae.checkpoint import checkpoint_folder, latest_checkpoint, load_trainer_state, save_trainer_state
from hookscope.sae.config import Architecture, Normalization, SAEConfig
from hookscope.sae.losses import LossWeights, batch_metrics, sae_loss
from hookscope.sae.sae import SAE
from hookscope.sae.store import ActivationStore, activations_at, pack_text

logger = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class SAETrainingConfig:
    """Everything that decides an SAE training run (with the seed, the same data gives the same SAE).

    Attributes:
        architecture / d_sae / k: the SAE (see :class:`~hookscope.sae.config.SAEConfig`).
        training_tokens: activation rows to train on (steps = training_tokens // batch_size).
        batch_size: rows per step.
        context_size: tokens per packed row when the data is a list of strings.
        lr / lr_warmup_steps / lr_decay_steps / lr_end: Adam's learning rate, warmed up linearly from 0,
            decayed linearly to ``lr_end`` over the last ``lr_decay_steps``.
        max_grad_norm: each step's gradient (all parameters together) is clipped to this norm before Adam's
            update, as SAELens's trainer always does (at 1.0); None: no clipping.
        b_dec_init: the decoder bias starts at the mean of the first (scaled) batch ("mean"), or at zero
            ("zeros", SAELens's start; the mean gives standard SAEs a sparser, better fit).
        l1_coefficient / l1_warmup_steps: standard SAEs (the L1 is weighted by decoder-row norms).
        l0_coefficient: JumpReLU's sparsity penalty (warmed up like the L1).
        aux_k_coefficient / aux_k: TopK / BatchTopK dead-latent revival (``aux_k`` default ``d_in // 2``).
        dead_feature_window: steps a latent may stay silent before it counts as dead.
        resample_every: standard / JumpReLU: re-initialise dead latents every this many steps (0: never).
        normalize_activations: "expected_average_only_in" scales inputs to mean norm sqrt(d_in).
        harvest_batch_size: model inputs per forward when harvesting; buffer_size: the mixing buffer.
        skip_first_positions: positions of each input not harvested (1 drops BOS); saved as SAELens's
            ``seqpos_slice``.
        hook_head_index: train a single-head SAE on head ``h`` of a ``hook_z`` activation (``d_in = d_head``);
            spliced, it replaces only that head's slice.
        checkpoint_every / checkpoint_dir: save the SAE (SAELens's format) and the trainer's state every this
            many steps (see :mod:`hookscope.sae.checkpoint`).
        resume: continue from the newest checkpoint in ``checkpoint_dir`` when there is one; the continued
            run is bit-exact with an uninterrupted one (same optimizer state, RNG, stream position).
        dtype / device: of the SAE and its training.
    """

    architecture: Architecture = "topk"
    d_sae: int = 1024
    k: int | None = 32
    training_tokens: int = 1_000_000
    batch_size: int = 4096
    context_size: int = 128
    lr: float = 4e-4
    lr_warmup_steps: int = 0
    lr_decay_steps: int = 0
    lr_end: float = 0.0
    adam_betas: tuple[float, float] = (0.9, 0.999)
    max_grad_norm: float | None = 1.0
    b_dec_init: Literal["mean", "zeros"] = "mean"
    l1_coefficient: float = 5.0
    l1_warmup_steps: int = 0
    l0_coefficient: float = 1e-3
    aux_k_coefficient: float = 1 / 32
    aux_k: int | None = None
    dead_feature_window: int = 200
    resample_every: int = 0
    normalize_activations: Normalization = "expected_average_only_in"
    apply_b_dec_to_input: bool = True
    harvest_batch_size: int = 8
    skip_first_positions: int = 0
    hook_head_index: int | None = None
    buffer_size: int = 65536
    seed: int = 0
    log_every: int = 10
    progress: bool = True
    checkpoint_every: int = 0
    checkpoint_dir: str | None = None
    resume: bool = True
    dtype: str = "float32"
    device: str = "cpu"
    metadata: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        for name in ("training_tokens", "batch_size", "d_sae", "context_size", "harvest_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"SAETrainingConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.training_tokens < self.batch_size:
            raise ValueError(f"training_tokens={self.training_tokens} is less than one batch of {self.batch_size}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.b_dec_init not in ("mean", "zeros"):
            raise ValueError(f"b_dec_init must be 'mean' or 'zeros', got {self.b_dec_init!r}")
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise ValueError(f"max_grad_norm must be > 0 or None, got {self.max_grad_norm}")
        if self.checkpoint_every and not self.checkpoint_dir:
            raise ValueError("checkpoint_every needs a checkpoint_dir")

    @property
    def total_steps(self) -> int:
        return self.training_tokens // self.batch_size

    def sae_config(self, d_in: int, hook_name: str | None, model_name: str | None = None,
                   data_metadata: dict[str, Any] | None = None) -> SAEConfig:
        """The SAE's config; ``data_metadata`` (what the data says: context size, BOS...) under ``metadata``,
        where ``self.metadata``'s own keys win."""
        return SAEConfig(
            d_in=d_in, d_sae=self.d_sae, architecture=self.architecture,
            k=self.k if self.architecture in ("topk", "batchtopk") else None,
            apply_b_dec_to_input=self.apply_b_dec_to_input, normalize_activations=self.normalize_activations,
            dtype=self.dtype, hook_name=hook_name, model_name=model_name or self.metadata.get("model_name"),
            hook_head_index=self.hook_head_index,
            metadata={**(data_metadata or {}), **self.metadata, "training": _jsonable(asdict(self))},
        )


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items() if k != "metadata"}


class _Harvester:
    """Re-iterable stream of activation chunks, one forward per batch of inputs (this rank's share)."""

    def __init__(self, model: HookedModule, hook_name: str, batches: list[Any], cfg: SAETrainingConfig,
                 rank: int, world: int):
        self.model, self.hook_name, self.batches, self.cfg = model, hook_name, batches, cfg
        self.rank, self.world = rank, world

    def __iter__(self) -> Iterator[torch.Tensor]:
        for batch in self.batches[self.rank :: self.world]:
            yield activations_at(self.model, self.hook_name, batch, skip_first_positions=self.cfg.skip_first_positions,
                                 head_index=self.cfg.hook_head_index).float()


def _is_texts(data: Any) -> bool:
    return isinstance(data, (list, tuple)) and bool(data) and all(isinstance(t, str) for t in data)


def data_metadata(model: HookedModule | None, data: Any, cfg: SAETrainingConfig) -> dict[str, Any]:
    """SAELens's metadata fields the data and the config determine (saved with the SAE's ``cfg.json``).

    ``seqpos_slice`` from ``skip_first_positions``; for text, ``context_size`` (the packed row length, or
    the width of the given token ids), ``prepend_bos`` (packed rows start with BOS; given ids: whether every
    row does), and for packed strings ``sequence_separator_token`` / ``disable_concat_sequences``.
    """
    meta: dict[str, Any] = {}
    if cfg.skip_first_positions:
        meta["seqpos_slice"] = [cfg.skip_first_positions, None]
    tok = getattr(model, "tokenizer", None) if model is not None else None
    bos = getattr(tok, "bos_token_id", None)
    if tok is not None and _is_texts(data):
        meta.update(context_size=cfg.context_size, prepend_bos=bos is not None, disable_concat_sequences=False,
                    sequence_separator_token="eos" if tok.eos_token_id is not None else "bos")
        return meta
    ids = [data] if isinstance(data, torch.Tensor) else list(data) if isinstance(data, (list, tuple)) else []
    if model is None or not ids or not all(
            isinstance(t, torch.Tensor) and t.ndim == 2 and not t.is_floating_point() for t in ids):
        return meta
    widths = {t.shape[1] for t in ids}
    if len(widths) == 1:
        meta["context_size"] = widths.pop()
    if bos is not None:
        meta["prepend_bos"] = all(bool((t[:, 0] == bos).all()) for t in ids)
    return meta


def _source(model: HookedModule | None, hook_name: str | None, data: Any, cfg: SAETrainingConfig) -> Any:
    rank, world = _dist()
    if model is None:
        if isinstance(data, torch.Tensor):
            if data.ndim != 2:
                raise ValueError(f"activations to train on must be [rows, d_in], got shape {tuple(data.shape)}")
            return data.float().chunk(world)[rank]
        return data
    if hook_name is None:
        raise ValueError("train_sae needs the hook_name to harvest from")
    if _is_texts(data):
        data = pack_text(model, data, cfg.context_size)
    batches = list(data.split(cfg.harvest_batch_size)) if isinstance(data, torch.Tensor) else list(data)
    if not batches:
        raise ValueError("train_sae got no data")
    return _Harvester(model, hook_name, batches, cfg, rank, world)


def _dist() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def train_sae(
    model: HookedModule | None, hook_name: str | None, data: Any, config: SAETrainingConfig,
) -> SAE:
    """Train an SAE on the activations of ``model`` at ``hook_name`` over ``data``.

    Args:
        model: any hooked model, or None when ``data`` already holds activations ``[rows, d_in]``
            (or is an iterable of such chunks, e.g. an :class:`ActivationStore`'s source).
        hook_name: the hook to read (also recorded in the SAE's config for splicing).
        data: token ids ``[n, pos]`` / strings (packed to ``context_size``) / a list of model-input batches
            / a tensor of activations.
        config: a :class:`SAETrainingConfig`.

    Returns:
        the trained SAE in eval mode, reading raw activations (the activation scale folded into the
        weights) with unit-norm decoder rows; ``sae.history`` holds
        the logged metrics (one dict per ``log_every`` steps).
    """
    cfg = config
    torch.manual_seed(cfg.seed)
    rank, world = _dist()
    store = iter(ActivationStore(_source(model, hook_name, data, cfg), cfg.batch_size, cfg.buffer_size,
                                 seed=cfg.seed + rank))
    first = next(store).to(cfg.device)
    model_name = getattr(getattr(model, "cfg", None), "model_name", None) if model is not None else None
    sae_cfg = cfg.sae_config(first.shape[-1], hook_name, model_name, data_metadata(model, data, cfg))
    sae = SAE(sae_cfg, device=cfg.device, seed=cfg.seed).train()
    _initialise(sae, first, cfg)
    trainer = _Trainer(sae, cfg, world)
    start = trainer.resume()
    for _ in range(start - 1):  # replay the seeded stream up to where the checkpoint left it
        if next(store, None) is None:
            raise ValueError(f"the activation stream ended before the checkpoint's step {start}")
    bar = tqdm(range(start, cfg.total_steps), disable=not cfg.progress or rank != 0, desc="train SAE")
    batch = first
    for step_i in bar:
        if step_i:
            batch = next(store, None)
            if batch is None:
                logger.warning("the activation stream ended after %d of %d steps", step_i, cfg.total_steps)
                break
            batch = batch.to(cfg.device)
        metrics = trainer.step(sae.normalize_input(batch.to(sae.W_enc.dtype))[0], step_i)
        if metrics is not None:
            bar.set_postfix({k: f"{v:.3g}" for k, v in metrics.items() if k != "step"})
    sae.history = trainer.history
    sae.eval()
    sae.fold_activation_norm_scaling_factor()
    sae.fold_decoder_norms_into_encoder()  # unit rows; TopK trained ranking by these norms: same top k
    return sae


@torch.no_grad()
def _initialise(sae: SAE, first: torch.Tensor, cfg: SAETrainingConfig) -> None:
    """Activation scale from the first batch (mean norm -> sqrt(d_in)); decoder bias: the scaled mean, or 0."""
    x = first.to(sae.W_enc.dtype)
    if cfg.normalize_activations == "expected_average_only_in":
        sae.norm_scaling_factor.fill_(math.sqrt(x.shape[-1]) / float(x.norm(dim=-1).mean().clamp_min(1e-12)))
    if cfg.b_dec_init == "mean":
        sae.b_dec.copy_(sae.normalize_input(x)[0].mean(0))
    if cfg.architecture in ("batchtopk", "jumprelu"):  # TopK keeps its rows at 0.1 (its norms only rank)
        sae.set_decoder_norm_to_unit_norm()
        sae.W_enc.copy_(sae.W_dec.T)


class _Trainer:
    def __init__(self, sae: SAE, cfg: SAETrainingConfig, world: int) -> None:
        self.sae, self.cfg, self.world = sae, cfg, world
        self.module: torch.nn.Module = sae
        if world > 1:
            self.module = torch.nn.parallel.DistributedDataParallel(_LossModule(sae))
        self.opt = torch.optim.Adam(sae.parameters(), lr=cfg.lr, betas=cfg.adam_betas)
        self.since_fired = torch.zeros(sae.cfg.d_sae, dtype=torch.long, device=sae.W_enc.device)
        self.history: list[dict[str, float]] = []
        # BatchTopK / JumpReLU keep unit decoder rows; TopK ranks by decoder norms instead (see losses)
        self.unit_decoder = cfg.architecture in ("batchtopk", "jumprelu")

    def lr_at(self, step: int) -> float:
        c = self.cfg
        if c.lr_warmup_steps and step < c.lr_warmup_steps:
            return c.lr * (step + 1) / c.lr_warmup_steps
        decay_start = c.total_steps - c.lr_decay_steps
        if c.lr_decay_steps and step >= decay_start:
            frac = (step - decay_start + 1) / c.lr_decay_steps
            return c.lr + (c.lr_end - c.lr) * frac
        return c.lr

    def weights(self, step: int) -> LossWeights:
        c = self.cfg
        warm = min(1.0, (step + 1) / c.l1_warmup_steps) if c.l1_warmup_steps else 1.0
        arch = c.architecture
        return LossWeights(
            l1=c.l1_coefficient * warm if arch == "standard" else 0.0,
            l0=c.l0_coefficient * warm if arch == "jumprelu" else 0.0,
            aux_k=c.aux_k_coefficient if arch in ("topk", "batchtopk") else 0.0,
            aux_k_size=c.aux_k or self.sae.cfg.d_in // 2,
        )

    def step(self, x: torch.Tensor, step: int) -> dict[str, float] | None:
        sae, c = self.sae, self.cfg
        for group in self.opt.param_groups:
            group["lr"] = self.lr_at(step)
        dead = self.since_fired >= c.dead_feature_window
        loss, parts = self.module(x, self.weights(step), dead) if self.world > 1 else sae_loss(
            sae, x, self.weights(step), dead)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.unit_decoder:
            sae.remove_gradient_parallel_to_decoder_directions()
        if c.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(sae.parameters(), c.max_grad_norm)
        self.opt.step()
        with torch.no_grad():
            if self.unit_decoder:
                sae.set_decoder_norm_to_unit_norm()
            if c.architecture == "jumprelu":
                sae.threshold.clamp_(min=1e-6)
            fired = (parts["acts"] != 0).any(0)
            if self.world > 1:
                torch.distributed.all_reduce(fired, op=torch.distributed.ReduceOp.MAX)
            self.since_fired = torch.where(fired, 0, self.since_fired + 1)
            if c.architecture == "batchtopk":
                _update_threshold(sae, parts["acts"], self.world)
        if c.resample_every and c.architecture in ("standard", "jumprelu") and (step + 1) % c.resample_every == 0:
            self._resample(x, parts["recons"])
        metrics = None
        if step % c.log_every == 0 or step == c.total_steps - 1:
            metrics = {"step": float(step), "loss": float(loss.detach()),
                       **batch_metrics(x, parts["recons"], parts["acts"]),
                       "dead_fraction": float(dead.float().mean()), "lr": self.lr_at(step)}
            self.history.append(metrics)
        if c.checkpoint_every and (step + 1) % c.checkpoint_every == 0 and _dist()[0] == 0:
            self.checkpoint(step + 1)  # after the step's log entry, so a resumed run's log is complete
        return metrics

    @torch.no_grad()
    def _resample(self, x: torch.Tensor, recons: torch.Tensor) -> None:
        """Dead latents get the directions of badly reconstructed inputs (Bricken et al., 2023, simplified)."""
        sae = self.sae
        dead = torch.nonzero(self.since_fired >= self.cfg.dead_feature_window).flatten()
        if not len(dead):
            return
        loss = (x - recons).pow(2).sum(-1)
        gen = torch.Generator().manual_seed(self.cfg.seed + int(self.since_fired.sum()))
        pick = torch.multinomial(loss.cpu() + 1e-12, len(dead), replacement=True, generator=gen).to(x.device)
        dirs = x[pick] - sae.b_dec
        dirs = dirs / dirs.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        alive = self.since_fired < self.cfg.dead_feature_window
        enc_norm = sae.W_enc[:, alive].norm(dim=0).mean() if alive.any() else torch.tensor(1.0)
        sae.W_dec[dead] = dirs * (1.0 if self.unit_decoder else 0.1)
        sae.W_enc[:, dead] = dirs.T * enc_norm * 0.2
        sae.b_enc[dead] = 0.0
        for p in (sae.W_dec, sae.W_enc, sae.b_enc):
            state = self.opt.state.get(p, {})
            for key in ("exp_avg", "exp_avg_sq"):
                if key in state:
                    (state[key][dead] if p is not sae.W_enc else state[key][:, dead]).zero_()
        self.since_fired[dead] = 0

    def checkpoint(self, step: int) -> Path:
        folder = checkpoint_folder(str(self.cfg.checkpoint_dir), step)
        save_trainer_state(folder, self.sae, self.opt, self.since_fired, step, self.history, _jsonable(
            asdict(self.cfg)))
        return folder

    def resume(self) -> int:
        """Load the newest checkpoint when the config asks for it; returns the step to continue from."""
        path = latest_checkpoint(self.cfg.checkpoint_dir) if self.cfg.resume else None
        if path is None:
            return 0
        step, self.since_fired, self.history = load_trainer_state(
            path, self.sae, self.opt, _jsonable(asdict(self.cfg)))
        if step > self.cfg.total_steps:
            raise ValueError(f"checkpoint {path} is at step {step}, past this run's {self.cfg.total_steps} steps")
        logger.info("resumed SAE training from %s at step %d", path, step)
        return step


def _update_threshold(sae: SAE, acts: torch.Tensor, world: int) -> None:
    """BatchTopK's inference threshold: a running mean of the smallest positive latent of each batch."""
    positive = acts[acts > 0]
    if not len(positive):
        return
    smallest = positive.min().reshape(1)
    if world > 1:
        torch.distributed.all_reduce(smallest, op=torch.distributed.ReduceOp.MIN)
    current = sae.threshold[0]
    new = smallest[0] if float(current) == 0 else 0.99 * current + 0.01 * smallest[0]
    sae.threshold.fill_(float(new))


class _LossModule(torch.nn.Module):
    """The loss as a module's forward, so DistributedDataParallel can average its gradients."""

    def __init__(self, sae: SAE) -> None:
        super().__init__()
        self.sae = sae

    def forward(self, x: torch.Tensor, weights: LossWeights, dead: torch.Tensor) -> Any:
        return sae_loss(self.sae, x, weights, dead)

