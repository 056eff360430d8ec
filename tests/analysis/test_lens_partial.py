"""Logit lens and partial_forward on native decoders (random HF weights)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import hookscope
from hookscope import logit_lens, partial_forward
from tests.equivalence.decoder_configs import random_hf_model, random_tokens


@pytest.fixture(scope="module")
def model():
    return hookscope.load(random_hf_model("llama"))


def test_last_row_is_the_model_output(model) -> None:
    tokens = random_tokens(1, 6)
    result = logit_lens(model, tokens, top_k=3)
    with torch.no_grad():
        out = F.log_softmax(model(tokens)[0].float(), -1)
    final_probs = out.exp().topk(3, -1)
    torch.testing.assert_close(result.top_probs[-1], final_probs.values, atol=1e-6, rtol=1e-6)
    assert torch.equal(result.top_ids[-1], final_probs.indices)
    assert float(result.kl[-1].abs().max()) < 1e-6


def test_rows_layers_and_subblocks(model) -> None:
    tokens = random_tokens(1, 5)
    n = model.cfg.n_layers
    assert logit_lens(model, tokens).top_ids.shape[:2] == (n + 1, 5)
    sub = logit_lens(model, tokens, include_subblocks=True, positions=[-1])
    assert sub.top_ids.shape[:2] == (2 * n + 1, 1)
    assert sub.row_labels[:3] == ["embed", "0.attn", "0.mlp"]


def test_rows_equal_decoding_the_cached_residual(model) -> None:
    tokens = random_tokens(1, 5)
    result = logit_lens(model, tokens, include_subblocks=True, top_k=1)
    _, cache = model.run_with_cache(tokens)
    mid = model.unembed(model.ln_final(cache["resid_mid", 1]))[0].float()
    torch.testing.assert_close(result.top_logits[3, :, 0], mid.max(-1).values, atol=1e-5, rtol=1e-5)


def test_target_rank_matches_argsort(model) -> None:
    tokens = random_tokens(1, 5)
    result = logit_lens(model, tokens, target=17, metric="rank")
    _, cache = model.run_with_cache(tokens)
    logits = model.unembed(model.ln_final(cache["resid_post", 1]))[0]
    order = logits.argsort(-1, descending=True)
    expected = (order == 17).nonzero()[:, 1]
    assert torch.equal(result.target_rank[2], expected)
    assert result.values.shape == (model.cfg.n_layers + 1, 5)


def test_bad_inputs_are_clear(model) -> None:
    with pytest.raises(ValueError, match="metric"):
        logit_lens(model, random_tokens(1, 3), metric="entropy")
    with pytest.raises(ValueError, match="outside the vocabulary"):
        logit_lens(model, random_tokens(1, 3), target=10_000)
    with pytest.raises(ValueError, match="one sequence"):
        logit_lens(model, random_tokens(2, 3))
    with pytest.raises(KeyError, match="did you mean"):
        partial_forward(model, random_tokens(1, 3), ["blocks.1.hook_resid_pots"])


def test_partial_forward_equals_cache_and_stops_early(model) -> None:
    tokens = random_tokens(2, 6)
    names = ["blocks.0.attn.hook_pattern", "blocks.1.hook_resid_mid"]
    calls: list[int] = []
    handles = [b.register_forward_pre_hook(lambda m, a, i=i: calls.append(i)) for i, b in enumerate(model.blocks)]
    try:
        acts = partial_forward(model, tokens, names)
    finally:
        for h in handles:
            h.remove()
    assert calls == [0, 1]  # block 2 never ran
    _, cache = model.run_with_cache(tokens, names_filter=names)
    for n in names:
        torch.testing.assert_close(acts[n], cache[n])
    assert not model.active_hooks()


def test_n_layers_loads_only_the_first_blocks() -> None:
    hf = random_hf_model("gpt2")
    small = hookscope.load(hf, n_layers=2)
    full = hookscope.load(hf)
    assert len(small.blocks) == 2
    n_params = sum(p.numel() for p in small.parameters())
    per_block = sum(p.numel() for p in full.blocks[0].parameters())
    assert n_params == sum(p.numel() for p in full.parameters()) - per_block
    tokens = random_tokens(1, 5)
    with torch.no_grad():
        torch.testing.assert_close(small(tokens, stop_at_layer=2), full(tokens, stop_at_layer=2))


def test_plot_html_and_table(model, tmp_path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    result = logit_lens(model, random_tokens(1, 4), target=5)
    fig = result.plot()
    fig.savefig(tmp_path / "lens.png")
    page = result.to_html(tmp_path / "lens.html")
    assert (tmp_path / "lens.png").stat().st_size > 5_000
    assert "<table>" in page and "http" not in page.replace("http-equiv", "")
    assert result.table().count("\n") == model.cfg.n_layers + 3  # title, header, rows, final


def test_lens_reads_a_vision_model() -> None:
    import transformers as T

    from tests.helpers import redraw_parameters

    torch.manual_seed(0)
    cfg = T.ViTConfig(image_size=20, patch_size=5, num_channels=3, hidden_size=24, num_hidden_layers=2,
                      num_attention_heads=4, intermediate_size=37, num_labels=7)
    hf = redraw_parameters(T.ViTForImageClassification(cfg)).eval()
    model = hookscope.load(hf)
    pixels = torch.randn(1, 3, 20, 20)
    result = logit_lens(model, pixels, top_k=2, target=3)
    with torch.no_grad():
        ref = hf(pixels).logits.softmax(-1)[0]
    assert result.top_ids.shape == (3, 1, 2)
    torch.testing.assert_close(result.top_probs[-1, 0], ref.topk(2).values, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(result.target_prob[-1, 0], ref[3], atol=1e-5, rtol=1e-5)


def test_device_map_dispatch_keeps_outputs() -> None:
    pytest.importorskip("accelerate")
    hf = random_hf_model("llama")
    plain = hookscope.load(hf)
    mapping = {"embed": "cpu", "blocks.0": "cpu", "blocks.1": "cpu", "blocks.2": "cpu", "ln_final": "cpu",
               "unembed": "cpu"}
    spread = hookscope.load(hf, device_map=mapping)
    auto = hookscope.load(hf, device_map="auto")
    tokens = random_tokens(2, 5)
    with torch.no_grad():
        torch.testing.assert_close(spread(tokens), plain(tokens))
        torch.testing.assert_close(auto(tokens), plain(tokens))
    _, cache = spread.run_with_cache(tokens, names_filter="blocks.1.hook_resid_post")
    assert cache["resid_post", 1].shape == (2, 5, 48)
    with pytest.raises(hookscope.LoadError, match="device_map"):
        hookscope.load(hf, device_map="everywhere")
