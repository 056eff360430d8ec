"""Feature views: the cards hold the right examples, and the page renders in a real headless browser."""

from __future__ import annotations

import shutil

import pytest
import torch

import hookscope
from hookscope.sae import SAE, SAEConfig
from hookscope.viz.feature_view import FeatureCard, feature_page, histogram_svg
from hookscope.viz.sae_views import audio_cards, image_cards, text_cards
from tests.equivalence.decoder_configs import random_hf_model, random_tokens
from tests.equivalence.whisper_cases import random_hf_whisper
from tests.sae.test_train_eval import _tiny_vit


class _Tok:
    bos_token_id = eos_token_id = pad_token_id = None

    def decode(self, ids: list[int]) -> str:
        return "".join(f"t{i} " for i in ids)


def _sae(d_in: int, hook: str) -> SAE:
    sae = SAE(SAEConfig(d_in=d_in, d_sae=16, hook_name=hook), seed=1)
    with torch.no_grad():
        sae.b_enc.fill_(0.05)
    return sae.eval()


def test_text_cards_show_the_strongest_contexts_and_the_decoder_logit_effect() -> None:
    model = hookscope.load(random_hf_model("gpt2"))
    model.tokenizer = _Tok()
    tokens = random_tokens(6, 9)
    sae = _sae(48, "blocks.1.hook_resid_post")
    (card,) = text_cards(model, sae, tokens, [3], n_examples=2, context=3)
    with torch.no_grad():
        lat = sae.encode(model.run_with_cache(tokens, names_filter=sae.hook_name)[1][sae.hook_name])[..., 3]
    lat[:, 0] = 0
    row, pos = divmod(int(lat.reshape(-1).argmax()), 9)
    peak = max(card.text_examples[0], key=lambda tv: tv[1])
    assert peak == (f"t{int(tokens[row, pos])} ", pytest.approx(float(lat[row, pos]), rel=1e-5))
    effect = (sae.W_dec[3] @ model.W_U).detach()
    assert card.boosted[0] == (f"t{int(effect.argmax())} ", pytest.approx(float(effect.max()), rel=1e-5))
    assert card.density == pytest.approx(float((lat[:, 1:] > 0).float().mean()))


def test_image_and_audio_cards_locate_the_peak() -> None:
    vit = _tiny_vit()
    images = torch.randn(6, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    sae = _sae(24, "blocks.1.hook_resid_post")
    (card,) = image_cards(vit, sae, images, [2], grid=(4, 4), n_examples=1)
    with torch.no_grad():
        lat = sae.encode(vit.run_with_cache(images, names_filter=sae.hook_name)[1][sae.hook_name])[:, 1:, 2]
    image, grid = card.image_examples[0]
    assert image.shape == (8, 8) and grid.shape == (4, 4)
    assert float(grid.max()) == pytest.approx(float(lat.max()), rel=1e-5)
    whisper = hookscope.load(random_hf_whisper())
    feats = torch.randn(3, 11, 26, generator=torch.Generator().manual_seed(1))
    sae_a = _sae(48, "encoder.0.hook_resid_post")
    (acard,) = audio_cards(whisper, sae_a, feats, ["a b c d", "e f g h", "i j k l"], [13, 6, 10], [1])
    assert all(len(frames) in (13, 6, 10) for frames, _, _ in acard.audio_examples)


@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium is not installed (apt-get install chromium)")
def test_feature_page_renders_in_headless_chromium(tmp_path) -> None:
    playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    import numpy as np

    cards = [
        FeatureCard(index=7, density=0.01, histogram=[0.5, 1.0, 2.0], text_examples=[[("a", 0.0), ("b<", 2.0)]],
                    boosted=[(" x", 1.0)], suppressed=[(" y", -1.0)]),
        FeatureCard(index=9, image_examples=[(np.eye(8), np.arange(16.0).reshape(4, 4))],
                    audio_examples=[([0.0, 1.0, 0.5], 0.02, "~ “hello world”")]),
    ]
    path = tmp_path / "features.html"
    page_html = feature_page(cards, path=path)
    assert "http" not in page_html.replace('lang="en"', "")  # self-contained: nothing to fetch
    errors: list[str] = []
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--disable-quic"])
        page = browser.new_page()
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(path.as_uri())
        assert page.evaluate("document.body.dataset.cards") == "2"
        assert page.evaluate("document.querySelector('.peak').textContent") == "b<"
        assert page.evaluate("document.querySelectorAll('.peak-patch').length") == 1
        page.fill("#filter", "9")
        visible = page.evaluate("[...document.querySelectorAll('.card')].filter(c => c.style.display !== 'none')"
                                ".map(c => c.dataset.latent)")
        assert visible == ["9"]
        browser.close()
    assert not errors


def test_histogram_of_nothing_says_so() -> None:
    assert "never active" in histogram_svg([])
