"""The training loss curve, with eval points and horizontal n-gram baselines (unigram, bigram...)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def plot_loss_curve(
    log: list[dict], baselines: dict[str, float] | None = None, path: str | Path | None = None,
    title: str = "training loss",
) -> Any:
    """Draw ``loss`` (and ``eval_loss`` where logged) against ``tokens`` seen, one dashed line per baseline.

    Uses a bare ``matplotlib.figure.Figure`` (no pyplot state, no GUI backend needed); saved as PNG when
    ``path`` is given. Returns the figure.
    """
    from matplotlib.figure import Figure

    if not log:
        raise ValueError("the log is empty: nothing to draw")
    fig = Figure(figsize=(7, 4.2))
    ax = fig.add_subplot()
    x_key = "tokens" if all("tokens" in e for e in log) else "step"
    ax.plot([e[x_key] for e in log], [e["loss"] for e in log], lw=1.2, label="train loss")
    evals = [e for e in log if "eval_loss" in e]
    if evals:
        ax.plot([e[x_key] for e in evals], [e["eval_loss"] for e in evals], "o-", ms=3, label="eval loss")
    for i, (name, value) in enumerate((baselines or {}).items()):
        ax.axhline(value, ls="--", lw=1, color=f"C{i + 2}", label=f"{name} ({value:.3f})")
    ax.set_xlabel("tokens seen" if x_key == "tokens" else "step")
    ax.set_ylabel("cross-entropy [nats/token]")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    if path is not None:
        fig.savefig(str(path), dpi=110)
    return fig
