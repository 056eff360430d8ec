"""Attention patterns as pictures: a matplotlib grid of heatmaps, and one self-contained HTML page.

The HTML page (CircuitsVis-like, no network, no external script) shows one head at a time as a
query x key grid; hovering a cell shows the query token, the key token and the weight; hovering a query
token colours the key tokens by how much that query attends to them. Everything is inline: the page works
from a file and offline.
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch


def _as_heads(pattern: torch.Tensor, tokens: Sequence[str]) -> torch.Tensor:
    """``[head_index, query_pos, key_pos]`` (a single ``[query_pos, key_pos]`` head is accepted)."""
    if not isinstance(pattern, torch.Tensor):
        raise TypeError(f"pattern must be a tensor, got {type(pattern).__name__}")
    p = pattern.detach().float().cpu()
    if p.ndim == 2:
        p = p[None]
    if p.ndim != 3:
        raise ValueError(f"pattern must be [head_index, query_pos, key_pos] (index the batch first), got "
                         f"{tuple(pattern.shape)}")
    if p.shape[1] != len(tokens) or p.shape[2] != len(tokens):
        raise ValueError(f"pattern covers {p.shape[1]}x{p.shape[2]} positions but {len(tokens)} tokens were given")
    return p


def _label(token: str) -> str:
    shown = token.replace("\n", "\\n")
    return shown.replace(" ", "\u2423") if shown.strip() == "" else shown


def plot_attention(
    pattern: torch.Tensor, tokens: Sequence[str], head_labels: Sequence[str] | None = None, ncols: int = 4,
    title: str | None = None, cmap: str = "Blues",
) -> Any:
    """A matplotlib figure: one heatmap per head, queries down, keys across, token labels on both axes."""
    import matplotlib.pyplot as plt

    p = _as_heads(pattern, tokens)
    n = p.shape[0]
    labels = list(head_labels) if head_labels is not None else [f"head {h}" for h in range(n)]
    cols = min(ncols, n)
    rows = (n + cols - 1) // cols
    side = max(2.5, 0.28 * len(tokens) + 1.0)
    fig, axes = plt.subplots(rows, cols, figsize=(side * cols, side * rows), squeeze=False)
    shown = [_label(t) for t in tokens]
    for h, ax in enumerate(axes.flat):
        if h >= n:
            ax.axis("off")
            continue
        image = ax.imshow(p[h].numpy(), cmap=cmap, vmin=0.0, vmax=1.0, interpolation="nearest")
        ax.set_title(labels[h], fontsize=9)
        ax.set_xticks(range(len(tokens)), shown, rotation=90, fontsize=7)
        ax.set_yticks(range(len(tokens)), shown, fontsize=7)
        ax.set_xlabel("key", fontsize=8)
        ax.set_ylabel("query", fontsize=8)
    fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.6, label="attention weight")
    if title:
        fig.suptitle(title)
    return fig


_PAGE = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: sans-serif; margin: 16px; }}
#heads button {{ margin: 2px; }} #heads button.on {{ background: #2166ac; color: white; }}
#grid {{ display: grid; gap: 1px; margin-top: 8px; }}
.cell {{ width: 22px; height: 22px; }}
.tok {{ font-size: 11px; white-space: pre; overflow: hidden; }}
.col {{ writing-mode: vertical-rl; height: 70px; }}
#tokens span {{ padding: 1px 2px; margin: 1px; border: 1px solid #ddd; white-space: pre; display: inline-block; }}
#tip {{ margin-top: 8px; min-height: 1.2em; font-family: monospace; }}
</style></head>
<body><h3>{title}</h3>
<div id="heads"></div>
<div id="tokens"></div>
<div id="tip">hover a cell or a token</div>
<div id="grid"></div>
<script>
const DATA = {data};
let head = 0;
const grid = document.getElementById("grid"), tip = document.getElementById("tip");
function colour(w) {{ const t = Math.max(0, Math.min(1, w));
  return "rgb(" + Math.round(255 - t * 222) + "," + Math.round(255 - t * 153) + "," + Math.round(255 - t * 83) + ")"; }}
function fmt(w) {{ return w.toFixed(4); }}
function draw() {{
  const n = DATA.tokens.length, p = DATA.patterns[head];
  grid.innerHTML = "";
  grid.style.gridTemplateColumns = "90px repeat(" + n + ", 22px)";
  grid.appendChild(document.createElement("div"));
  DATA.tokens.forEach(t => {{ const d = document.createElement("div"); d.className = "tok col"; d.textContent = t;
    grid.appendChild(d); }});
  for (let q = 0; q < n; q++) {{
    const lab = document.createElement("div"); lab.className = "tok"; lab.textContent = DATA.tokens[q];
    grid.appendChild(lab);
    for (let k = 0; k < n; k++) {{
      const c = document.createElement("div"); c.className = "cell"; c.style.background = colour(p[q][k]);
      c.dataset.q = q; c.dataset.k = k; c.dataset.w = p[q][k];
      c.addEventListener("mouseenter", () => {{
        tip.textContent = DATA.heads[head] + ": " + JSON.stringify(DATA.tokens[q]) + " -> " +
          JSON.stringify(DATA.tokens[k]) + " = " + fmt(p[q][k]); }});
      grid.appendChild(c);
    }}
  }}
  const toks = document.getElementById("tokens"); toks.innerHTML = "";
  DATA.tokens.forEach((t, q) => {{ const s = document.createElement("span"); s.textContent = t; s.dataset.q = q;
    s.addEventListener("mouseenter", () => {{
      toks.querySelectorAll("span").forEach((o, k) => {{ o.style.background = colour(p[q][k]); }});
      tip.textContent = DATA.heads[head] + ": query " + JSON.stringify(t) + " attends max " +
        fmt(Math.max(...p[q])); }});
    toks.appendChild(s); }});
}}
DATA.heads.forEach((name, h) => {{ const b = document.createElement("button"); b.textContent = name;
  b.addEventListener("click", () => {{ head = h;
    document.querySelectorAll("#heads button").forEach((o, i) => o.classList.toggle("on", i === h)); draw(); }});
  document.getElementById("heads").appendChild(b); }});
document.querySelector("#heads button").classList.add("on");
draw();
</script></body></html>
"""


def attention_html(
    pattern: torch.Tensor, tokens: Sequence[str], head_labels: Sequence[str] | None = None,
    title: str = "Attention patterns",
) -> str:
    """One self-contained HTML page (no network) showing each head's pattern with hover read-outs."""
    p = _as_heads(pattern, tokens)
    labels = list(head_labels) if head_labels is not None else [f"head {h}" for h in range(p.shape[0])]
    if len(labels) != p.shape[0]:
        raise ValueError(f"{len(labels)} head labels for {p.shape[0]} heads")
    data = {"tokens": [_label(t) for t in tokens], "heads": labels,
            "patterns": [[[round(float(w), 6) for w in row] for row in head] for head in p.tolist()]}
    # JSON inside <script>: escape "</" so a token cannot close the script element
    blob = json.dumps(data).replace("</", "<\\/")
    return _PAGE.format(title=html.escape(title), data=blob)


def save_attention_html(path: str | Path, pattern: torch.Tensor, tokens: Sequence[str], **kwargs: Any) -> Path:
    """Write :func:`attention_html` to ``path`` and return it."""
    path = Path(path)
    path.write_text(attention_html(pattern, tokens, **kwargs), encoding="utf-8")
    return path
