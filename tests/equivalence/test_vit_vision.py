"""ViT-family vision analyses (class lens, class-token attention, rollout, overlay), image preprocessing
and folder loading, each checked against Hugging Face or a brute-force computation."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

import hookscope
from hookscope.analysis.vision import attention_rollout, class_attention, class_lens
from hookscope.models.vit_images import settings_from_preprocessor
from hookscope.viz.vision_plot import save_attention_overlay
from tests.equivalence.vit_cases import hf_reference, make_hf, pixels_for
from tests.helpers import TOLERANCES, first_divergence

PIL = pytest.importorskip("PIL.Image")


def _hf_head(hf, variant: str, hidden: torch.Tensor) -> torch.Tensor:
    """Class logits HF's own modules give for a residual stream (independent of hookscope)."""
    if variant == "vit_cls":
        return hf.classifier(hf.vit.layernorm(hidden)[:, 0])
    if variant == "deit_teacher":
        normed = hf.deit.layernorm(hidden)
        return (hf.cls_classifier(normed[:, 0]) + hf.distillation_classifier(normed[:, 1])) / 2
    return hf.visual_projection(hf.vision_model.post_layernorm(hidden[:, 0]))


@pytest.mark.parametrize("variant", ["vit_cls", "deit_teacher", "clip_projection"])
def test_class_lens_matches_hf_per_layer_and_the_output_at_the_last(variant: str) -> None:
    hf = make_hf(variant, torch.float64)
    hf.set_attn_implementation("eager")  # float64: our un-hooked attention mirrors HF eager
    model = hookscope.load(hf, dtype=torch.float64)
    pixels = pixels_for(torch.float64)
    with torch.no_grad():
        result = class_lens(model, pixels)
        out = hf(pixel_values=pixels, output_hidden_states=True)
        refs = [_hf_head(hf, variant, h) for h in out.hidden_states]
        output = model(pixels)
    assert result.row_labels == ["embed", "0", "1", "2"]
    atol, rtol = TOLERANCES[torch.float64]
    pairs = [(f"lens row {label}", result.logits[r], refs[r]) for r, label in enumerate(result.row_labels)]
    assert first_divergence(pairs, atol, rtol) is None, first_divergence(pairs, atol, rtol)
    torch.testing.assert_close(result.logits[-1], output, atol=0, rtol=0)
    assert not torch.allclose(result.logits[1], result.logits[-1])  # earlier layers really differ
    assert "|" in result.table(image=1, k=2)


def test_lens_decoder_is_the_final_norm_and_the_head() -> None:
    model = hookscope.load(make_hf("vit_cls"))
    pixels = pixels_for(torch.float32)
    final_norm, head_fn = model.lens_decoder()
    assert final_norm is model.ln_final
    with torch.no_grad():
        _, cache = model.run_with_cache(pixels, names_filter="blocks.2.hook_resid_post")
        resid = cache["blocks.2.hook_resid_post"]
        torch.testing.assert_close(head_fn(final_norm(resid[:, 0])), model(pixels), atol=1e-6, rtol=1e-6)
        assert model.lens_decoder()(resid).shape == (2, 26, 6)  # every position decodes


@pytest.mark.parametrize("layer", [0, -1])
def test_class_attention_is_hfs_class_token_row(layer: int) -> None:
    # float32: the layers before the one read run our SDPA path, HF eager has float32 softmaxes.
    hf = make_hf("deit_cls")
    model = hookscope.load(hf)
    pixels = pixels_for(torch.float32)
    with torch.no_grad():
        ours = class_attention(model, pixels, layer=layer)
        one_head = class_attention(model, pixels, layer=layer, head=3)
        att = hf_reference(hf, pixels)[0].attentions[layer]  # [batch, head, query, key]
    atol, rtol = TOLERANCES[torch.float32]
    torch.testing.assert_close(ours, att[:, :, 0, 2:].mean(1).reshape(2, 5, 5), atol=atol, rtol=rtol)
    torch.testing.assert_close(one_head, att[:, 3, 0, 2:].reshape(2, 5, 5), atol=atol, rtol=rtol)


def test_attention_rollout_matches_a_brute_force_computation() -> None:
    hf = make_hf("vit_cls", torch.float64)
    model = hookscope.load(hf, dtype=torch.float64)
    pixels = pixels_for(torch.float64, 42, 42)
    with torch.no_grad():
        ours = attention_rollout(model, pixels, interpolate_pos_encoding=True)
        atts = hf_reference(hf, pixels, interpolate_pos_encoding=True)[0].attentions
    for b in range(2):  # loop-by-loop numpy, from HF's patterns
        flow = np.eye(37)
        for att in atts:
            a = att[b].numpy().mean(0)
            a = 0.5 * a + 0.5 * np.eye(37)
            a = a / a.sum(-1, keepdims=True)
            flow = a @ flow
        np.testing.assert_allclose(ours[b].numpy(), flow[0, 1:].reshape(6, 6), atol=1e-10, rtol=1e-10)


def test_overlay_writes_a_png(tmp_path: Path) -> None:
    model = hookscope.load(make_hf("clip_vision"))
    image = PIL.fromarray(np.random.default_rng(0).integers(0, 256, (50, 61, 3), dtype=np.uint8))
    pixels = model.to_pixel_values(image)
    maps = attention_rollout(model, pixels)
    for i, img in enumerate([image, pixels[0]]):
        path = tmp_path / f"overlay{i}.png"
        save_attention_overlay(path, img, maps[0], model=model, title="rollout")
        data = path.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000
    with pytest.raises(ValueError, match="one map"):
        save_attention_overlay(tmp_path / "bad.png", image, maps)


def _random_image(h: int, w: int, seed: int = 0):
    return PIL.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


@pytest.mark.parametrize("kind", ["vit", "clip"])
def test_image_preprocessing_matches_hf_processor(kind: str) -> None:
    import transformers as tf

    if kind == "vit":
        processor = tf.ViTImageProcessorPil(size={"height": 35, "width": 35})
        model = hookscope.load(make_hf("vit_cls"))
    else:
        crop = {"height": 35, "width": 35}
        processor = tf.CLIPImageProcessorPil(size={"shortest_edge": 35}, crop_size=crop)
        model = hookscope.load(make_hf("clip_vision"))
    model.image_settings = settings_from_preprocessor(processor.to_dict())
    images = [_random_image(50, 61, 0), _random_image(71, 40, 1)]
    ref = processor(images=images, return_tensors="pt")["pixel_values"]
    ours = model.to_pixel_values(images)
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=1e-6)
    with torch.no_grad():
        torch.testing.assert_close(model(images), model(ref), atol=1e-5, rtol=1e-5)
        one = model(np.asarray(images[0]))  # numpy HWC uint8 is an image too
        torch.testing.assert_close(one, model(ref[:1]), atol=1e-5, rtol=1e-5)


_OLD_NAMES = [  # transformers 4.x checkpoint names (what hub ViT checkpoints hold)
    (r"^vit\.layers\.(\d+)\.", r"vit.encoder.layer.\1."),
    (r"\.attention\.q_proj\.", ".attention.attention.query."),
    (r"\.attention\.k_proj\.", ".attention.attention.key."),
    (r"\.attention\.v_proj\.", ".attention.attention.value."),
    (r"\.attention\.o_proj\.", ".attention.output.dense."),
    (r"\.mlp\.fc1\.", ".intermediate.dense."),
    (r"\.mlp\.fc2\.", ".output.dense."),
]


def test_load_folder_with_transformers4_names_and_its_preprocessor(tmp_path: Path) -> None:
    import transformers as tf
    from safetensors.torch import save_file

    hf = make_hf("vit_cls")
    state = {}
    for key, tensor in hf.state_dict().items():
        for pattern, repl in _OLD_NAMES:
            key = re.sub(pattern, repl, key)
        state[key] = tensor.contiguous()
    assert "vit.encoder.layer.0.attention.attention.query.weight" in state
    save_file(state, str(tmp_path / "model.safetensors"))
    hf.config.save_pretrained(tmp_path)
    processor = tf.ViTImageProcessorPil(size={"height": 35, "width": 35}, image_mean=[0.4, 0.5, 0.6])
    processor.save_pretrained(tmp_path)
    model = hookscope.load(tmp_path)
    assert model.image_settings.source == "preprocessor_config.json"
    assert model.image_settings.image_mean == (0.4, 0.5, 0.6)
    pixels = pixels_for(torch.float32)
    with torch.no_grad():
        hf.set_attn_implementation("sdpa")
        torch.testing.assert_close(model(pixels), hf(pixel_values=pixels).logits, atol=1e-5, rtol=1e-5)
    truncated = hookscope.load(tmp_path, n_layers=1)
    assert len(truncated.blocks) == 1


def test_bad_images_get_clear_errors() -> None:
    model = hookscope.load(make_hf("vit_cls"))
    with pytest.raises(TypeError, match="PIL image"):
        model.to_pixel_values("cat.png")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        model.to_pixel_values(np.full((40, 40, 3), 7.5, dtype=np.float32))
    with pytest.raises(ValueError, match="pixel_values must be"):
        model(torch.randn(2, 4, 35, 35))
