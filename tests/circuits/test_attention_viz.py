"""Attention views: the matplotlib grid, and the self-contained HTML page checked in headless chromium."""

from __future__ import annotations

import shutil

import pytest
import torch

from hookscope.viz.attention import attention_html, plot_attention, save_attention_html

TOKENS = ["<s>", " The", " cat", "</script>", " sat"]


def patterns() -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    scores = torch.randn(3, 5, 5, generator=gen).masked_fill(torch.ones(5, 5).triu(1).bool(), float("-inf"))
    return scores.softmax(-1)  # [head, query, key]


def test_matplotlib_grid_has_one_heatmap_per_head_with_token_labels() -> None:
    import matplotlib

    matplotlib.use("Agg")
    fig = plot_attention(patterns(), TOKENS, ncols=2)
    images = [ax for ax in fig.axes if ax.images]
    assert len(images) == 3
    assert [t.get_text() for t in images[0].get_xticklabels()] == TOKENS
    torch.testing.assert_close(torch.tensor(images[2].images[0].get_array()), patterns()[2])
    with pytest.raises(ValueError, match="tokens"):
        plot_attention(patterns(), TOKENS[:3])


def test_html_is_self_contained_and_escapes_tokens() -> None:
    page = attention_html(patterns(), TOKENS)
    assert "http://" not in page and "https://" not in page and "<script src" not in page
    assert page.count("</script>") == 1  # the token "</script>" cannot close the inline script


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium browser installed")
def test_html_hover_shows_weights_in_headless_chromium(tmp_path) -> None:
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    p = patterns()
    path = save_attention_html(tmp_path / "attn.html", p, TOKENS)
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync"]
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=flags)
        page = browser.new_page()
        requests, errors = [], []
        page.on("request", lambda r: requests.append(r.url))
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(path.as_uri())
        assert page.locator(".cell").count() == 25
        page.hover('.cell[data-q="3"][data-k="1"]')
        tip = page.inner_text("#tip")
        assert f"{p[0, 3, 1].item():.4f}" in tip and '" The"' in tip and "head 0" in tip
        page.click("#heads button:nth-child(3)")
        page.hover('.cell[data-q="4"][data-k="2"]')
        assert f"{p[2, 4, 2].item():.4f}" in page.inner_text("#tip")
        page.hover('#tokens span[data-q="4"]')
        colours = page.eval_on_selector_all("#tokens span", "els => els.map(e => e.style.background)")
        assert len(set(colours)) > 1  # keys coloured by the query's attention
        browser.close()
    assert errors == []
    assert all(url.startswith("file://") for url in requests)
