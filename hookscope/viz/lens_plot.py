"""Pictures of a :class:`LensResult`: a matplotlib heatmap, a self-contained HTML page, a text table."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

_LABELS = {"probs": "top-1 probability", "logits": "top-1 logit", "logprobs": "top-1 log-probability",
           "kl": "KL(final || layer) [nats]", "rank": "rank of target (0 = top)"}


def _show(token: str) -> str:
    """Make whitespace visible and keep cell text short."""
    text = token.replace("\n", "\\n").replace(" ", "\u2423") if token.strip() == "" else token.replace("\n", "\\n")
    return text if len(text) <= 10 else text[:9] + "\u2026"


def plot_lens(result: Any, ax: Any = None, cmap: str | None = None, figsize: tuple[float, float] | None = None) -> Any:
    """Heatmap rows = layers (embeddings at the bottom), columns = input positions; top token in each cell."""
    import matplotlib.pyplot as plt

    values = result.values.cpu().numpy()
    n_rows, n_pos = values.shape
    if ax is None:
        width = max(6.0, 1.1 * n_pos + 2.5)
        height = max(4.0, 0.32 * n_rows + 1.5)
        fig, ax = plt.subplots(figsize=figsize or (width, height))
    else:
        fig = ax.figure
    reverse = result.metric in ("kl", "rank")  # low is "good" for these
    cmap = cmap or ("viridis_r" if reverse else "viridis")
    image = ax.imshow(values, aspect="auto", origin="lower", cmap=cmap, interpolation="nearest")
    norm = image.norm
    for r in range(n_rows):
        for p in range(n_pos):
            token = result.top_tokens[r][p][0]
            shade = norm(values[r, p])
            colour = "white" if (shade < 0.5) != reverse else "black"
            ax.text(p, r, _show(token), ha="center", va="center", fontsize=7, color=colour)
            if result.target_id is not None and int(result.top_ids[r, p, 0]) == result.target_id:
                ax.add_patch(plt.Rectangle((p - 0.5, r - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=1.5))
    ax.set_xticks(range(n_pos), [_show(t) for t in result.str_tokens], rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(n_rows), result.row_labels, fontsize=7)
    ax.set_xlabel("input token (prediction of the next token)")
    ax.set_ylabel("layer")
    title = "Logit lens"
    if result.target is not None:
        title += f" (red box: top token is target {result.target!r})"
    ax.set_title(title)
    fig.colorbar(image, ax=ax, label=_LABELS[result.metric])
    fig.tight_layout()
    return fig


def _cell_colour(value: float, lo: float, hi: float, reverse: bool) -> str:
    t = 0.0 if hi <= lo else (value - lo) / (hi - lo)
    t = 1.0 - t if reverse else t
    # white -> deep blue
    r, g, b = (int(255 - t * (255 - c)) for c in (33, 102, 172))
    return f"rgb({r},{g},{b})"


def lens_html(result: Any, path: str | Path | None = None) -> str:
    """A standalone HTML table; hover a cell for its top-k tokens with probabilities."""
    values = result.values.cpu()
    lo, hi = float(values.min()), float(values.max())
    reverse = result.metric in ("kl", "rank")
    head = "".join(f"<th>{html.escape(_show(t))}</th>" for t in result.str_tokens)
    body = []
    for r in reversed(range(len(result.row_labels))):
        cells = []
        for p in range(len(result.positions)):
            tops = [f"{html.escape(repr(tok))}: {float(pr):.3f}" for tok, pr in
                    zip(result.top_tokens[r][p], result.top_probs[r, p])]
            tip = f"layer {result.row_labels[r]}, position {result.positions[p]}&#10;" + "&#10;".join(tops)
            tip += f"&#10;KL to final: {float(result.kl[r, p]):.3f}"
            if result.target_prob is not None and result.target_rank is not None:
                tip += (f"&#10;target {html.escape(repr(result.target))}: p={float(result.target_prob[r, p]):.3f}"
                        f" rank={int(result.target_rank[r, p])}")
            colour = _cell_colour(float(values[r, p]), lo, hi, reverse)
            text = html.escape(_show(result.top_tokens[r][p][0]))
            cells.append(f'<td style="background:{colour}" title="{tip}">{text}</td>')
        body.append(f"<tr><th>{html.escape(result.row_labels[r])}</th>{''.join(cells)}</tr>")
    page = f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>hookscope logit lens</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; }}
table {{ border-collapse: collapse; font-size: 12px; }}
td, th {{ border: 1px solid #ccc; padding: 3px 6px; text-align: center; white-space: pre; }}
td:hover {{ outline: 2px solid #d62728; }}
</style></head><body>
<h2>Logit lens</h2>
<p>Colour: {html.escape(_LABELS[result.metric])} (range {lo:.3g} to {hi:.3g}).
Hover a cell for the top-{result.top_ids.shape[-1]}.</p>
<table><tr><th>layer</th>{head}</tr>
{chr(10).join(body)}
</table></body></html>
"""
    if path is not None:
        Path(path).write_text(page, encoding="utf-8")
    return page


def lens_table(result: Any, position: int = -1) -> str:
    """Top token per layer at one position, with target probability and rank when a target was given."""
    p = position % len(result.positions)
    lines = [f"Logit lens at position {result.positions[p]} ({result.str_tokens[p]!r} -> next token)"]
    header = f"{'layer':>8}  {'top token':<16} {'prob':>6}  {'KL':>6}"
    if result.target_prob is not None:
        header += f"  {'p(target)':>9} {'rank':>6}"
    lines.append(header)
    for r, label in enumerate(result.row_labels):
        line = (f"{label:>8}  {result.top_tokens[r][p][0]!r:<16} {float(result.top_probs[r, p, 0]):6.3f}"
                f"  {float(result.kl[r, p]):6.3f}")
        if result.target_prob is not None and result.target_rank is not None:
            line += f"  {float(result.target_prob[r, p]):9.3f} {int(result.target_rank[r, p]):6d}"
        lines.append(line)
    final = ", ".join(f"{tok!r} {float(pr):.3f}" for tok, pr in zip(result.top_tokens[-1][p], result.top_probs[-1, p]))
    lines.append(f"Final prediction: {final}")
    return "\n".join(lines)
