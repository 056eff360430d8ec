"""Native ViT / DeiT / CLIP vision encoders equal their Hugging Face source, hook by hook."""

from __future__ import annotations

import pytest
import torch
import transformers as tf

import hookscope
from hookscope.convert.engine import ConversionError, convert_state_dict
from hookscope.convert.vit_hf import rules_for
from tests.equivalence.vit_cases import SIZES, VARIANTS, hf_reference, make_hf, pixels_for
from tests.helpers import TOLERANCES, first_divergence, redraw_parameters


def _pairs(model, cache, out, main, pooled, ours_main, ours_pooled, n_layers):
    yield "blocks.0.hook_resid_pre", cache["blocks.0.hook_resid_pre"], out.hidden_states[0]
    for i in range(n_layers):
        yield f"blocks.{i}.attn.hook_pattern", cache[f"blocks.{i}.attn.hook_pattern"], out.attentions[i]
        yield f"blocks.{i}.hook_resid_post", cache[f"blocks.{i}.hook_resid_post"], out.hidden_states[i + 1]
    yield "output", ours_main, main
    if pooled is not None:
        yield "pooled", ours_pooled, pooled


def _main_output(hf, pixels: torch.Tensor, kwargs: dict) -> torch.Tensor:
    out = hf(pixel_values=pixels, **kwargs)
    for field in ("logits", "image_embeds", "last_hidden_state"):
        if getattr(out, field, None) is not None:
            return getattr(out, field)
    raise AssertionError("no output")


def _compare(
    variant: str, dtype: torch.dtype, height: int = 35, width: int = 35, interpolate: bool = False
) -> None:
    hf = make_hf(variant, dtype)
    model = hookscope.load(hf, dtype=dtype)
    pixels = pixels_for(dtype, height, width)
    kwargs = {"interpolate_pos_encoding": True} if interpolate else {}
    with torch.no_grad():
        out, main, pooled = hf_reference(hf, pixels, **kwargs)
        ours, cache = model.run_with_cache(pixels, **kwargs)
        ours_pooled = model.run_with_cache(pixels, "pooled", **kwargs)[0] if pooled is not None else None
        fused = model(pixels, **kwargs)  # no hooks: the SDPA path (float64: mirrors HF eager exactly)
        # float32: our SDPA path against HF's SDPA path. float64: our un-hooked attention reproduces HF
        # eager's float32 softmax, so it is compared with HF eager.
        hf.set_attn_implementation("sdpa" if dtype == torch.float32 else "eager")
        main_sdpa = _main_output(hf, pixels, kwargs)
    assert len(out.hidden_states) == model.cfg.n_layers + 1
    atol, rtol = TOLERANCES[dtype]
    problem = first_divergence(
        _pairs(model, cache, out, main, pooled, ours, ours_pooled, model.cfg.n_layers), atol, rtol
    )
    assert problem is None, f"{variant} {dtype}: first divergence at {problem}"
    problem = first_divergence([("un-hooked output vs HF", fused, main_sdpa)], atol, rtol)
    assert problem is None, problem


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_layer_and_pattern_match_hf(variant: str, dtype: torch.dtype) -> None:
    _compare(variant, dtype)


@pytest.mark.parametrize("size", [(42, 42), (49, 28), (35, 35)])  # larger square, non-square, trained size
@pytest.mark.parametrize("variant", ["vit_cls", "deit_teacher", "clip_vision"])
def test_interpolated_positions_match_hf(variant: str, size: tuple[int, int]) -> None:
    _compare(variant, torch.float64, *size, interpolate=True)


def test_interpolation_actually_changes_the_table() -> None:
    """At 42x42 the 5x5 table becomes 6x6 (so the interpolation tests above really interpolate)."""
    model = hookscope.load(make_hf("vit_cls"))
    _, cache = model.run_with_cache(pixels_for(torch.float32, 42, 42), names_filter="hook_pos_embed",
                                    interpolate_pos_encoding=True)
    assert cache["hook_pos_embed"].shape == (2, 37, 40)


def test_wrong_image_size_without_interpolation_says_what_to_do() -> None:
    model = hookscope.load(make_hf("vit_cls"))
    with pytest.raises(ValueError, match="interpolate_pos_encoding=True"):
        model(pixels_for(torch.float32, 42, 42))


def _grads(model, hf, explicit: bool) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """(name, ours, HF) gradients of a weighted sum of the outputs w.r.t. the pixels and every parameter.

    ``explicit``: with a no-op pattern hook; otherwise un-hooked. In float64 both reproduce HF eager
    (float32 softmax), so both are compared with HF eager.
    """
    dtype = torch.float64
    hf.set_attn_implementation("eager")
    px_hf, px_ours = pixels_for(dtype).requires_grad_(True), pixels_for(dtype).requires_grad_(True)
    main = _main_output(hf, px_hf, {})
    weights = torch.randn(main.shape, generator=torch.Generator().manual_seed(3), dtype=dtype)
    (main * weights).sum().backward()
    hooks = [(lambda n: n.endswith("hook_pattern"), lambda t, hook: None)] if explicit else []
    model.zero_grad()
    (model.run_with_hooks(px_ours, fwd_hooks=hooks) * weights).sum().backward()
    hf_grads = {k: p.grad for k, p in hf.named_parameters()}
    hf.zero_grad()
    expected = [n for n, _ in model.named_parameters()]
    mapped = convert_state_dict(hf_grads, rules_for(model.cfg), model.cfg.n_layers, expected)
    assert len(mapped) == len(hf_grads)
    return [("d pixel_values", px_ours.grad, px_hf.grad)] + [
        (f"d {n}", p.grad, mapped[n]) for n, p in model.named_parameters()
    ]


@pytest.mark.parametrize("explicit", [False, True])
@pytest.mark.parametrize("variant", ["vit_cls", "deit_teacher", "clip_projection"])
def test_gradients_match_hf(variant: str, explicit: bool) -> None:
    hf = make_hf(variant, torch.float64)
    model = hookscope.load(hf, dtype=torch.float64)
    problem = first_divergence(_grads(model, hf, explicit), *TOLERANCES[torch.float64])
    assert problem is None, problem


def test_patch_ablation_matches_the_same_ablation_in_hf() -> None:
    """Zeroing patch 7 at embed.hook_patch_embed changes the logits, exactly as zeroing it inside HF does."""
    hf = make_hf("vit_cls", torch.float64)
    model = hookscope.load(hf, dtype=torch.float64)
    hf.set_attn_implementation("eager")  # float64: our un-hooked attention mirrors HF eager (see _grads)
    pixels = pixels_for(torch.float64)

    def ablate(t: torch.Tensor, hook) -> torch.Tensor:
        t = t.clone()
        t[:, 7] = 0.0
        return t

    with torch.no_grad():
        clean = model(pixels)
        ablated = model.run_with_hooks(pixels, fwd_hooks=[("embed.hook_patch_embed", ablate)])
        handle = hf.vit.embeddings.patch_embeddings.register_forward_hook(lambda m, i, o: ablate(o, None))
        try:
            ref = hf(pixel_values=pixels).logits
        finally:
            handle.remove()
    assert (clean - ablated).abs().max() > 1e-3
    assert first_divergence([("ablated logits", ablated, ref)], *TOLERANCES[torch.float64]) is None


def test_stop_at_layer_returns_the_residual_entering_that_block() -> None:
    model = hookscope.load(make_hf("deit_teacher"))
    pixels = pixels_for(torch.float32)
    with torch.no_grad():
        feats = model(pixels, stop_at_layer=2)
        _, cache = model.run_with_cache(pixels, names_filter="blocks.2.hook_resid_pre")
        resumed = model(feats, start_at_layer=2)
    assert feats.shape == (2, 27, 40)
    assert torch.equal(feats, cache["blocks.2.hook_resid_pre"])
    torch.testing.assert_close(resumed, model(pixels), atol=0, rtol=0)


def test_batched_equals_one_by_one() -> None:
    model = hookscope.load(make_hf("clip_projection"))
    pixels = pixels_for(torch.float32)
    with torch.no_grad():
        batched = model(pixels)
        single = torch.cat([model(pixels[i : i + 1]) for i in range(2)])
    torch.testing.assert_close(batched, single, atol=1e-6, rtol=1e-6)


def test_unmodelled_config_attribute_is_refused() -> None:
    hf = make_hf("vit_cls")
    hf.config.qkv_bias = False  # declared in the config but the weights still carry q/k/v biases
    with pytest.raises(ConversionError, match="source tensors no rule consumes"):
        hookscope.load(hf)
    hf = make_hf("clip_vision")
    hf.config.use_fancy_pos = True
    with pytest.raises(ConversionError, match="use_fancy_pos"):
        hookscope.load(hf)


def test_headless_model_explains_missing_logits() -> None:
    model = hookscope.load(make_hf("vit_model"))
    assert model.cfg.pooler and model.head is None
    with pytest.raises(ValueError, match="no head"):
        model(pixels_for(torch.float32), "logits")
    with pytest.raises(ValueError, match="no classification head"):
        model.lens_decoder()


def test_each_hook_fires_once_and_split_inputs_change_nothing() -> None:
    model = hookscope.load(make_hf("deit_teacher", torch.float64), dtype=torch.float64)
    pixels = pixels_for(torch.float64)
    counts: dict[str, int] = {}

    def count(t: torch.Tensor, hook) -> None:
        counts[hook.name] = counts.get(hook.name, 0) + 1

    noop = [(lambda n: n.endswith("hook_pattern"), lambda t, hook: None)]  # same explicit attention path
    with torch.no_grad():
        plain = model.run_with_hooks(pixels, fwd_hooks=noop)
        hooked = model.run_with_hooks(pixels, fwd_hooks=[(lambda n: True, count)])
    never = {n for n in model.hook_dict if n not in counts}
    assert never == set()  # every point fires (ViTs have no rotary points)
    assert set(counts.values()) == {1}
    torch.testing.assert_close(hooked, plain, atol=1e-10, rtol=1e-10)
    assert counts["head.hook_out"] == 1 and "embed.hook_patch_embed" in counts


@pytest.mark.parametrize("cls,config_cls", [(tf.ViTModel, tf.ViTConfig), (tf.CLIPVisionModel, tf.CLIPVisionConfig)])
def test_image_size_not_a_multiple_of_patch_matches_hf(cls, config_cls) -> None:
    """HF's patch convolution floors the grid (33 // 8 = 4) and drops the edge pixels; so do we."""
    sizes = {**SIZES, "num_hidden_layers": 1, "image_size": 33, "patch_size": 8}
    config = config_cls(**sizes, attn_implementation="eager")
    torch.manual_seed(0)
    hf = redraw_parameters(cls(config).eval()).to(torch.float64)
    model = hookscope.load(hf, dtype=torch.float64)
    pixels = pixels_for(torch.float64, 33, 33)
    with torch.no_grad():
        expected = hf(pixel_values=pixels).last_hidden_state
        got = model(pixels, return_type="hidden")
    torch.testing.assert_close(got, expected, atol=1e-10, rtol=1e-10)
