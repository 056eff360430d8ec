"""Evaluating an SAE: reconstruction (MSE, explained variance, L0, dead / dense latents) and what splicing it
costs the model (next-token loss recovered against zero- and mean-ablation, KL to the clean output); for
speech the change of the transcripts' word error rate, for images the change of classification accuracy.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F

from hookscope.hooks import HookedModule
from hookscope.sae.sae import SAE


@torch.no_grad()
def reconstruction_metrics(sae: SAE, acts: torch.Tensor, dense_threshold: float = 0.1) -> dict[str, float]:
    """MSE, explained variance, L0 and dead / dense latent fractions of ``sae`` on rows ``acts`` ``[n, d_in]``
    (or a hook's activation: ``hook_z``'s ``[batch, pos, head_index, d_head]`` is read as the SAE reads it).

    MSE is the squared error summed over ``d_in``, averaged over rows; explained variance is
    ``1 - sum |x - x_hat|^2 / sum |x - mean(x)|^2``; a latent is dead when it never fires on these rows,
    dense when it fires on more than ``dense_threshold`` of them.
    """
    x = sae.read_input(acts).reshape(-1, sae.cfg.d_in).to(sae.W_enc.dtype)  # hook_z: the heads it reads
    latents = sae.encode(x)
    recons = sae.decode(latents)
    err = (x - recons).pow(2).sum()
    total = (x - x.mean(0)).pow(2).sum().clamp_min(1e-30)
    density = (latents != 0).float().mean(0)  # [d_sae]
    return {
        "mse": float(err / len(x)),
        "explained_variance": float(1 - err / total),
        "l0": float((latents != 0).sum(-1).float().mean()),
        "dead_fraction": float((density == 0).float().mean()),
        "dense_fraction": float((density > dense_threshold).float().mean()),
    }


@dataclass(frozen=True, kw_only=True)
class SAEEvaluation:
    """Reconstruction metrics and the next-token loss of the model clean, spliced and ablated."""

    mse: float
    explained_variance: float
    l0: float
    dead_fraction: float
    dense_fraction: float
    clean_loss: float
    spliced_loss: float
    zero_ablation_loss: float
    mean_ablation_loss: float
    loss_recovered: float  # (zero - spliced) / (zero - clean): 1 is perfect, 0 is as bad as zero-ablation
    loss_recovered_vs_mean: float
    kl_div: float  # mean KL(clean || spliced) of the next-token distributions, nats

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def next_token_loss(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Per-position next-token cross-entropy ``[batch, pos - 1]`` of ``logits [batch, pos, vocab]``."""
    log_probs = F.log_softmax(logits[:, :-1].double(), dim=-1)
    return -log_probs.gather(-1, tokens[:, 1:, None])[..., 0]


def _logits(out: Any) -> torch.Tensor:
    return out if isinstance(out, torch.Tensor) else out.logits


@torch.no_grad()
def evaluate_sae(
    model: HookedModule, sae: SAE, tokens: torch.Tensor, *, hook_name: str | None = None, batch_size: int = 8,
    skip_first_positions: int = 0,
) -> SAEEvaluation:
    """Evaluate ``sae`` on a language model over ``tokens`` ``[n, pos]``.

    The loss is the mean next-token cross-entropy over the predictions made at positions
    ``>= skip_first_positions``; the reconstruction, zero and mean ablations replace the activation only
    at those positions (``skip_first_positions=1`` leaves BOS, whose activation is an outlier an SAE is
    usually not trained on, untouched). "Mean ablation" uses the mean over every replaced row of ``tokens``.
    A single-head SAE's reconstruction and ablations replace only its head's slice of ``hook_z``.
    """
    name = hook_name or sae.hook_name
    if name is None:
        raise ValueError("evaluate_sae needs hook_name= (the SAE's config records none)")
    if not isinstance(tokens, torch.Tensor) or tokens.ndim != 2 or tokens.shape[1] <= skip_first_positions + 1:
        raise ValueError("evaluate_sae takes token ids [batch, pos] with pos > skip_first_positions + 1")
    s = skip_first_positions
    batches = tokens.split(batch_size)
    # what the SAE reads ([batch, pos, d_in]: one head's slice for a single-head SAE); ablations replace only it
    acts = [sae.read_input(model.run_with_cache(b, names_filter=name)[1][name][:, s:]) for b in batches]
    mean_act = torch.cat([a.reshape(-1, sae.cfg.d_in) for a in acts]).mean(0)
    replace = {
        "spliced": lambda a: sae(a),
        "zero": lambda a: sae.write_output(a, torch.zeros_like(sae.read_input(a))),
        "mean": lambda a: sae.write_output(a, mean_act.expand_as(sae.read_input(a))),
    }
    totals = dict.fromkeys(["clean", "spliced", "zero", "mean", "kl"], 0.0)
    count = 0
    for batch in batches:
        logits = {"clean": _logits(model(batch))}
        for key, fn in replace.items():
            logits[key] = _logits(model.run_with_hooks(batch, fwd_hooks=[(name, _from_position(s, fn))]))
        for key, value in logits.items():
            totals[key] += float(next_token_loss(value, batch)[:, s:].sum())
        log_p, log_q = F.log_softmax(logits["clean"].double(), -1), F.log_softmax(logits["spliced"].double(), -1)
        totals["kl"] += float((log_p.exp() * (log_p - log_q)).sum(-1)[:, s:-1].sum())
        count += batch.shape[0] * (batch.shape[1] - 1 - s)
    m = {k: v / count for k, v in totals.items()}
    rec = reconstruction_metrics(sae, torch.cat([a.reshape(-1, sae.cfg.d_in) for a in acts]))
    return SAEEvaluation(
        **rec, clean_loss=m["clean"], spliced_loss=m["spliced"], zero_ablation_loss=m["zero"],
        mean_ablation_loss=m["mean"], kl_div=m["kl"],
        loss_recovered=_recovered(m["zero"], m["spliced"], m["clean"]),
        loss_recovered_vs_mean=_recovered(m["mean"], m["spliced"], m["clean"]),
    )


def _from_position(start: int, fn: Callable[[torch.Tensor], torch.Tensor]) -> Callable[..., torch.Tensor]:
    def hook(act: torch.Tensor, hook: Any) -> torch.Tensor:
        if start == 0:
            return fn(act).to(act.dtype)
        return torch.cat([act[:, :start], fn(act[:, start:]).to(act.dtype)], dim=1)

    return hook


def _recovered(ablated: float, spliced: float, clean: float) -> float:
    gap = ablated - clean
    return float("nan") if abs(gap) < 1e-12 else (ablated - spliced) / gap


def word_error_rate(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    """Word-level edit distance summed over pairs, divided by the number of reference words.

    Words are lower-cased and stripped of punctuation at both ends.
    """
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references for {len(hypotheses)} hypotheses")
    errors = words = 0
    for ref, hyp in zip(references, hypotheses):
        r, h = _words(ref), _words(hyp)
        row = list(range(len(h) + 1))
        for i, rw in enumerate(r, 1):
            prev, row[0] = row[0], i
            for j, hw in enumerate(h, 1):
                prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (rw != hw))
        errors += row[-1]
        words += len(r)
    return errors / max(words, 1)


def _words(text: str) -> list[str]:
    out = [w.strip(".,!?;:\"'()").lower() for w in text.split()]
    return [w for w in out if w]


def transcription_change(
    model: HookedModule, sae: SAE, audios: Sequence[Any], references: Sequence[str],
    transcribe: Callable[[HookedModule, Any], str] | None = None,
) -> dict[str, float]:
    """Word error rate of a speech model's transcripts without and with ``sae`` spliced in.

    ``transcribe(model, audio)`` defaults to ``model.transcribe(audio)`` (Whisper).
    """
    run = transcribe or (lambda m, a: m.transcribe(a))
    clean = [run(model, a) for a in audios]
    with model.saes(sae):
        spliced = [run(model, a) for a in audios]
    wer_clean, wer_spliced = word_error_rate(references, clean), word_error_rate(references, spliced)
    return {"wer_clean": wer_clean, "wer_spliced": wer_spliced, "wer_change": wer_spliced - wer_clean}


@torch.no_grad()
def classification_change(
    model: HookedModule, sae: SAE, inputs: torch.Tensor, labels: torch.Tensor, batch_size: int = 64,
) -> dict[str, float]:
    """Accuracy of a classifier (logits ``[batch, n_classes]``) without and with ``sae`` spliced in."""
    def accuracy() -> float:
        right = sum(int((_logits(model(b)).argmax(-1) == y).sum())
                    for b, y in zip(inputs.split(batch_size), labels.split(batch_size)))
        return right / len(labels)

    clean = accuracy()
    with model.saes(sae):
        spliced = accuracy()
    return {"accuracy_clean": clean, "accuracy_spliced": spliced, "accuracy_change": spliced - clean}
