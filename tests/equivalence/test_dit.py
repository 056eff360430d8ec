"""Native DiT equals diffusers' ``DiTTransformer2DModel`` hook by hook, converted strictly.

Sizes: batch 5, 3 input channels (6 out: the learned-variance layout), 12x12 images, patch 2 (a 6x6 grid,
36 positions), 3 heads of d_head 8 (d_model 24), 2 layers, 7 classes; parameters re-drawn.
"""

from __future__ import annotations

import pytest
import torch

import hookscope
from hookscope.convert.engine import ConversionError
from hookscope.models.dit import MODULATIONS, sincos_positions_2d
from tests.helpers import TOLERANCES, first_divergence, redraw_parameters

diffusers = pytest.importorskip("diffusers")

SIZES = dict(num_attention_heads=3, attention_head_dim=8, in_channels=3, out_channels=6, num_layers=2,
             sample_size=12, patch_size=2, num_embeds_ada_norm=7)


def make_diffusers(dtype: torch.dtype, seed: int = 0, **overrides: object) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = diffusers.DiTTransformer2DModel(**{**SIZES, **overrides}).eval()
    redraw_parameters(model, seed=seed)
    return model.to(dtype)


def inputs(dtype: torch.dtype, side: int = 12) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(5, 3, side, side, generator=gen).to(dtype)
    t = torch.tensor([0, 17, 250, 999, 3])
    y = torch.tensor([0, 6, 3, 7, 1])  # 7 = the null class
    return x, t, y


def reference(ref: torch.nn.Module, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    """diffusers' intermediate values, recorded with torch forward hooks, under hookscope's names."""
    seen: dict[str, torch.Tensor] = {}
    handles = []

    def keep(name: str, pick=lambda out: out):
        return lambda mod, args, out: seen.__setitem__(name, pick(out))

    handles.append(ref.pos_embed.register_forward_hook(keep("blocks.0.hook_resid_pre")))
    for i, block in enumerate(ref.transformer_blocks):
        handles.append(block.norm1.emb.register_forward_hook(keep(f"blocks.{i}.hook_cond")))
        handles.append(block.norm1.emb.timestep_embedder.register_forward_hook(
            keep(f"blocks.{i}.cond.hook_time_embed")))
        handles.append(block.norm1.linear.register_forward_hook(keep(f"blocks.{i}.adaln_chunks")))
        handles.append(block.norm1.register_forward_hook(keep(f"blocks.{i}.hook_modulated_msa", lambda o: o[0])))
        handles.append(block.attn1.register_forward_hook(keep(f"blocks.{i}.attn_raw")))
        handles.append(block.ff.register_forward_hook(keep(f"blocks.{i}.ff_raw")))
        handles.append(block.register_forward_hook(keep(f"blocks.{i}.hook_resid_post")))
    try:
        with torch.no_grad():
            seen["out"] = ref(x, timestep=t, class_labels=y).sample
    finally:
        for h in handles:
            h.remove()
    for i in range(len(ref.transformer_blocks)):
        chunks = seen.pop(f"blocks.{i}.adaln_chunks").chunk(6, dim=1)
        seen.update({f"blocks.{i}.hook_{m}": c for m, c in zip(MODULATIONS, chunks, strict=True)})
        gate_msa, gate_mlp = seen[f"blocks.{i}.hook_gate_msa"][:, None], seen[f"blocks.{i}.hook_gate_mlp"][:, None]
        seen[f"blocks.{i}.hook_attn_out"] = gate_msa * seen.pop(f"blocks.{i}.attn_raw")
        seen[f"blocks.{i}.hook_mlp_out"] = gate_mlp * seen.pop(f"blocks.{i}.ff_raw")
    return seen


def compare(ref: torch.nn.Module, dtype: torch.dtype, side: int = 12) -> None:
    model = hookscope.load(ref, dtype=dtype)
    x, t, y = inputs(dtype, side)
    want = reference(ref, x, t, y)
    with torch.no_grad():
        out, cache = model.run_with_cache(x, t, y)
        fused = model(x, t, y)  # un-hooked: the SDPA path
    assert all(cache.n_calls(name) == 1 for name in cache)  # each hook fires once per forward
    assert len(cache) == len(model.cache_names(None))
    pairs = [(name, cache[name], ref_value) for name, ref_value in want.items() if name != "out"]
    pairs += [("output (hooked)", out, want["out"]), ("output (un-hooked)", fused, want["out"])]
    assert len(pairs) == 1 + 2 * (1 + 1 + 6 + 1 + 1 + 1 + 1) + 2
    atol, rtol = TOLERANCES[dtype]
    problem = first_divergence(pairs, atol, rtol)
    assert problem is None, f"{dtype}: first divergence at {problem}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dit_equals_diffusers_hook_by_hook(dtype: torch.dtype) -> None:
    compare(make_diffusers(dtype), dtype)


def test_dit_with_affine_mlp_norm_and_exact_gelu_equals_diffusers() -> None:
    ref = make_diffusers(torch.float64, seed=3, norm_elementwise_affine=True, activation_fn="gelu",
                         out_channels=None, norm_eps=1e-4)
    compare(ref, torch.float64)


def test_dit_at_another_image_size_equals_diffusers() -> None:
    """A 16x16 input (8x8 grid) recomputes the positions on the trained 6x6 grid's scale, as diffusers does."""
    compare(make_diffusers(torch.float64, seed=4), torch.float64, side=16)


def test_position_table_equals_diffusers() -> None:
    from diffusers.models.embeddings import get_2d_sincos_pos_embed

    for grid, base in ((6, 6), (8, 6), (5, 3)):
        want = get_2d_sincos_pos_embed(24, grid, base_size=base, output_type="pt").float()
        torch.testing.assert_close(sincos_positions_2d(24, grid, base), want, rtol=0, atol=0)


def test_diffusers_folder_loads_like_the_object(tmp_path) -> None:
    ref = make_diffusers(torch.float32)
    ref.save_pretrained(tmp_path)
    a, b = hookscope.load(ref), hookscope.load(tmp_path)
    x, t, y = inputs(torch.float32)
    with torch.no_grad():
        torch.testing.assert_close(a(x, t, y), b(x, t, y), rtol=0, atol=0)


def test_conversion_is_strict() -> None:
    ref = make_diffusers(torch.float32)
    ref.register_to_config(upcast_attention=False, some_new_option=True)
    with pytest.raises(ConversionError, match="some_new_option"):
        hookscope.load(ref)
    ref = make_diffusers(torch.float32)
    ref.register_buffer("extra_tensor", torch.zeros(3))
    with pytest.raises(ConversionError, match="extra_tensor"):
        hookscope.load(ref)


def test_bad_inputs_raise_clear_errors() -> None:
    model = hookscope.load(make_diffusers(torch.float32))
    x, t, y = inputs(torch.float32)
    with pytest.raises(ValueError, match="images must be"):
        model(x[:, :2], t, y)
    with pytest.raises(ValueError, match="square"):
        model(x[..., :10], t, y)
    with pytest.raises(ValueError, match="class_labels must be in"):
        model(x, t, y + 5)
    with pytest.raises(ValueError, match="timesteps"):
        model(x, t[:3], y)
