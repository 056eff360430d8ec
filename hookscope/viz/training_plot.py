"""The training loss curve, with eval points, horizontal n-gram baselines (unigram, bigram...) and, below it,
the probe values logged during training (e.g. an induction score), so a phase change shows in each."""

from __future__ import annotations

from pathlib import Path
from typing import Any

# what train() itself logs; every other number in an entry came from a probe
_LOOP_KEYS = frozenset({"step", "loss", "lr", "tokens", "tokens_per_s", "eval_loss"})


def probe_keys(log: list[dict]) -> list[str]:
    """The names of the probe values in a training log (numbers other than the loop's own), in first-seen order."""
    keys: dict[str, None] = {}
    for entry in log:
        for key, value in entry.items():
            if key not in _LOOP_KEYS and isinstance(value, (int, float)):
                keys.setdefault(key)
    return list(keys)


def plot_loss_curve(
    log: list[dict], baselines: dict[str, float] | None = None, path: str | Path | None = None,
    title: str = "training loss",
) -> Any:
    """Draw ``loss`` (and ``eval_loss`` where logged) against ``tokens`` seen, one dashed line per baseline,
    and, below it, one small panel per probe value the log holds (each on its own scale), on the same x axis.

    Uses a bare ``matplotlib.figure.Figure`` (no pyplot state, no GUI backend needed); saved as PNG when
    ``path`` is given. Returns the figure.
    """
    from matplotlib.figure import Figure

    if not log:
        raise ValueError("the log is empty: nothing to draw")
    probes = probe_keys(log)
    fig = Figure(figsize=(7, 4.2 + 1.5 * len(probes)))
    grid = fig.subplots(1 + len(probes), 1, sharex=True, height_ratios=(3, *[1.1] * len(probes)), squeeze=False)
    axes = list(grid[:, 0])  # the loss, then one panel per probe
    ax = axes[0]
    x_key = "tokens" if all("tokens" in e for e in log) else "step"
    ax.plot([e[x_key] for e in log], [e["loss"] for e in log], lw=1.2, label="train loss")
    evals = [e for e in log if "eval_loss" in e]
    if evals:
        ax.plot([e[x_key] for e in evals], [e["eval_loss"] for e in evals], "o-", ms=3, label="eval loss")
    for i, (name, value) in enumerate((baselines or {}).items()):
        ax.axhline(value, ls="--", lw=1, color=f"C{i + 2}", label=f"{name} ({value:.3f})")
    ax.set_ylabel("cross-entropy [nats/token]")
    ax.set_title(title)
    for i, name in enumerate(probes):
        logged = [e for e in log if name in e]
        axes[1 + i].plot([e[x_key] for e in logged], [e[name] for e in logged], "o-", ms=3, color=f"C{i + 4}",
                         label=name)
    for a in axes:
        a.grid(alpha=0.3)
        a.legend(fontsize=8)
    axes[-1].set_xlabel("tokens seen" if x_key == "tokens" else "step")
    fig.tight_layout()
    if path is not None:
        fig.savefig(str(path), dpi=110)
    return fig
