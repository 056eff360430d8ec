"""Feature views: one self-contained HTML page (inline CSS, SVG and a few lines of JS; no network) per set of
SAE latents. Each card shows the latent's top examples with the activating place highlighted (text tokens,
audio frames with the words around them, image patches), a histogram of its non-zero activations, and for
text the output tokens its decoder direction boosts and suppresses.

This module draws plain data (:class:`FeatureCard`); ``hookscope.viz.sae_views`` computes it from a model.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

_CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222;background:#fff}
.card{border:1px solid #ccc;border-radius:6px;padding:.8em 1em;margin:0 0 1.2em 0}
.card h2{font-size:1.1em;margin:.1em 0 .5em 0}.meta{color:#666;font-size:.85em}
.ex{font-family:ui-monospace,monospace;font-size:.85em;margin:.25em 0;white-space:pre-wrap}
.tok{border-radius:2px}.peak{outline:1.5px solid #c00}
.cols{display:flex;gap:2em;flex-wrap:wrap}.logits td{font-family:ui-monospace,monospace;font-size:.85em;padding:0 .6em}
.pos{color:#05a}.neg{color:#c30}#filter{margin-bottom:1em}.image{margin:0 10px 10px 0}
"""

_JS = """
document.getElementById('filter').addEventListener('input', function (e) {
  var q = e.target.value.trim();
  document.querySelectorAll('.card').forEach(function (c) {
    c.style.display = (!q || c.dataset.latent === q) ? '' : 'none';
  });
});
document.body.dataset.cards = String(document.querySelectorAll('.card').length);
"""


@dataclass(frozen=True, kw_only=True)
class FeatureCard:
    """What one latent's card shows (every field optional except the index)."""

    index: int
    density: float | None = None  # fraction of inputs on which it fires
    histogram: Sequence[float] = ()  # its non-zero activation values
    text_examples: Sequence[Sequence[tuple[str, float]]] = ()  # (token, activation) per context position
    boosted: Sequence[tuple[str, float]] = ()
    suppressed: Sequence[tuple[str, float]] = ()
    audio_examples: Sequence[tuple[Sequence[float], float, str]] = ()  # (activation per frame, s per frame, words)
    image_examples: Sequence[tuple[np.ndarray, np.ndarray]] = ()  # (grey image [H, W] in 0..1, acts [gh, gw])
    notes: str = ""
    extra: dict[str, str] = field(default_factory=dict)


def _shade(value: float, top: float) -> str:
    a = 0.0 if top <= 0 else max(0.0, min(1.0, value / top))
    return f"rgba(255,120,0,{a:.2f})"


def _text_example(example: Sequence[tuple[str, float]]) -> str:
    top = max((v for _, v in example), default=0.0)
    spans = []
    for tok, v in example:
        peak = " peak" if top > 0 and v == top else ""
        spans.append(f'<span class="tok{peak}" title="{v:.3f}" style="background:{_shade(v, top)}">'
                     f"{html.escape(tok)}</span>")
    return f'<div class="ex">{"".join(spans)}</div>'


def histogram_svg(values: Sequence[float], bins: int = 30, width: int = 260, height: int = 70) -> str:
    """An SVG bar chart of ``values`` (empty values: a note)."""
    vals = np.asarray(list(values), dtype=np.float64)
    if vals.size == 0:
        return '<div class="meta">never active on these inputs</div>'
    counts, edges = np.histogram(vals, bins=bins)
    peak = max(int(counts.max()), 1)
    bw = width / bins
    bars = "".join(
        f'<rect x="{i * bw:.1f}" y="{height - 14 - c / peak * (height - 16):.1f}" width="{bw - 1:.1f}" '
        f'height="{c / peak * (height - 16):.1f}" fill="#e80"><title>{edges[i]:.3g}..{edges[i + 1]:.3g}: {c}'
        "</title></rect>"
        for i, c in enumerate(counts)
    )
    labels = (f'<text x="0" y="{height - 2}" font-size="10">{edges[0]:.3g}</text>'
              f'<text x="{width}" y="{height - 2}" font-size="10" text-anchor="end">{edges[-1]:.3g}</text>')
    return f'<svg width="{width}" height="{height}" role="img" class="hist">{bars}{labels}</svg>'


def _audio_example(frames: Sequence[float], seconds_per_frame: float, words: str) -> str:
    vals = np.asarray(list(frames), dtype=np.float64)
    top = float(vals.max()) if vals.size else 0.0
    w = 2 if vals.size > 150 else 4
    rects = "".join(
        f'<rect x="{i * w}" y="0" width="{w}" height="18" fill="{_shade(float(v), top)}"/>' for i, v in enumerate(vals)
    )
    peak = int(vals.argmax()) if vals.size else 0
    label = f"peak at {peak * seconds_per_frame:.2f} s"
    return (f'<div class="ex"><svg width="{max(1, vals.size * w)}" height="18" class="frames">{rects}'
            f'<rect x="{peak * w}" y="0" width="{w}" height="18" fill="none" stroke="#c00"/></svg> '
            f"{label}: {html.escape(words)}</div>")


def _image_example(image: np.ndarray, acts: np.ndarray, scale: int = 10) -> str:
    img = np.asarray(image, dtype=np.float64)
    grid = np.asarray(acts, dtype=np.float64)
    h, w = img.shape
    ph, pw = h // grid.shape[0], w // grid.shape[1]
    pix = "".join(
        f'<rect x="{x * scale}" y="{y * scale}" width="{scale}" height="{scale}" '
        f'fill="rgb({int(255 * (1 - img[y, x]))},{int(255 * (1 - img[y, x]))},{int(255 * (1 - img[y, x]))})"/>'
        for y in range(h) for x in range(w)
    )
    top = float(grid.max())
    overlay = "".join(
        f'<rect x="{gx * pw * scale}" y="{gy * ph * scale}" width="{pw * scale}" height="{ph * scale}" '
        f'fill="{_shade(float(grid[gy, gx]), top)}" opacity="0.45"/>'
        for gy in range(grid.shape[0]) for gx in range(grid.shape[1])
    )
    py, px = np.unravel_index(int(grid.argmax()), grid.shape)
    box = (f'<rect class="peak-patch" x="{px * pw * scale}" y="{py * ph * scale}" width="{pw * scale}" '
           f'height="{ph * scale}" fill="none" stroke="#c00" stroke-width="2"/>')
    return f'<svg width="{w * scale}" height="{h * scale}" class="image">{pix}{overlay}{box}</svg>'


def _logit_table(boosted: Sequence[tuple[str, float]], suppressed: Sequence[tuple[str, float]]) -> str:
    rows = []
    for i in range(max(len(boosted), len(suppressed))):
        b = boosted[i] if i < len(boosted) else ("", 0.0)
        s = suppressed[i] if i < len(suppressed) else ("", 0.0)
        rows.append(f'<tr><td class="pos">{html.escape(repr(b[0]))}</td><td>{b[1]:+.2f}</td>'
                    f'<td class="neg">{html.escape(repr(s[0]))}</td><td>{s[1]:+.2f}</td></tr>')
    return ('<table class="logits"><tr><th>boosted</th><th></th><th>suppressed</th><th></th></tr>'
            + "".join(rows) + "</table>")


def card_html(card: FeatureCard) -> str:
    """One latent's card."""
    meta = f"fires on {card.density:.3%} of inputs" if card.density is not None else ""
    parts = [f'<div class="card" data-latent="{card.index}"><h2>latent {card.index}</h2>'
             f'<div class="meta">{meta} {html.escape(card.notes)}</div><div class="cols"><div>']
    parts += [_text_example(e) for e in card.text_examples]
    parts += [_audio_example(*e) for e in card.audio_examples]
    parts += [_image_example(*e) for e in card.image_examples]
    parts.append(f"</div><div>{histogram_svg(card.histogram)}")
    if card.boosted or card.suppressed:
        parts.append(_logit_table(card.boosted, card.suppressed))
    parts += [f'<div class="meta">{html.escape(k)}: {html.escape(v)}</div>' for k, v in card.extra.items()]
    parts.append("</div></div></div>")
    return "".join(parts)


def feature_page(cards: Sequence[FeatureCard], title: str = "SAE features", path: str | Path | None = None) -> str:
    """A complete HTML page of ``cards``; written to ``path`` when given. Returns the HTML."""
    body = "".join(card_html(c) for c in cards)
    page = (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>"
            f'<input id="filter" placeholder="latent index"/>{body}<script>{_JS}</script></body></html>')
    if path is not None:
        Path(path).write_text(page, encoding="utf-8")
    return page
