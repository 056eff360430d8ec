"""T5 decoding equals HF ``generate`` (greedy and beam search), cached decoding equals the full forward,
and interventions on the encoder output and cross-attention behave as they must."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import hookscope
from hookscope.generation.kv_cache import EncoderDecoderKVCache, KVCache
from tests.equivalence.t5_cases import EOS, VARIANTS, inputs, random_hf_t5
from tests.helpers import TOLERANCES, first_divergence


def _eos_prone(variant: str) -> torch.nn.Module:
    """A random T5 whose EOS logit is boosted, so that rows finish at different steps."""
    hf = random_hf_t5(variant, torch.float32, seed=1)
    head = hf.shared.weight if variant == "v1.0" else hf.lm_head.weight
    with torch.no_grad():
        head[EOS] *= 3.0
    return hf


def _finished_early(seqs: torch.Tensor) -> int:
    """Rows with an EOS before their last position (so the finishing logic was exercised)."""
    return int(sum(bool((row[1:-1] == EOS).any()) for row in seqs))


@pytest.mark.parametrize("variant", VARIANTS)
def test_greedy_is_token_identical_to_hf(variant: str) -> None:
    hf = _eos_prone(variant)
    model = hookscope.load(hf)
    ids, mask, _, _ = inputs(seed=2)
    ref = hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=12, do_sample=False, num_beams=1)
    ours = model.generate(ids, 12, attention_mask=mask)
    uncached = model.generate(ids, 12, attention_mask=mask, use_cache=False)
    assert _finished_early(ref) >= 1, "test set-up: no row finished early"
    assert torch.equal(ours, ref), f"\nours {ours}\nHF   {ref}"
    assert torch.equal(uncached, ref)


@pytest.mark.parametrize("variant", VARIANTS)
def test_beam_search_equals_hf(variant: str) -> None:
    hf = _eos_prone(variant)
    model = hookscope.load(hf)
    ids, mask, _, _ = inputs(seed=2)
    ref = hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=10, do_sample=False, num_beams=3)
    ours = model.generate(ids, 10, attention_mask=mask, num_beams=3)
    assert (ref == EOS).any(), "test set-up: no beam ended with EOS"
    assert torch.equal(ours, ref), f"\nours {ours}\nHF   {ref}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
def test_cached_decoding_equals_full_forward(dtype: torch.dtype) -> None:
    model = hookscope.load(random_hf_t5("v1.1", dtype), dtype=dtype)
    ids, mask, dec, _ = inputs()
    cfg = model.cfg
    with torch.no_grad():
        enc = model.encode(ids, mask)
        full = model(None, dec, mask, encoder_output=enc)
        cache = EncoderDecoderKVCache(
            KVCache(cfg.n_decoder_layers, dec.shape[0], dec.shape[1], cfg.n_heads, cfg.d_head, dtype=dtype)
        )
        # a 2-token prefill, then one token a step; the encoder output is only needed on the first call
        steps = [model(None, dec[:, :2], mask, encoder_output=enc, cache=cache)]
        steps += [
            model(None, dec[:, t : t + 1], mask, encoder_output=None if t > 2 else enc, cache=cache)
            for t in range(2, dec.shape[1])
        ]
    atol, rtol = TOLERANCES[dtype]
    problem = first_divergence([("cached logits", torch.cat(steps, dim=1), full)], atol, rtol)
    assert problem is None, problem


def test_patching_clean_encoder_output_is_identity() -> None:
    model = hookscope.load(random_hf_t5("v1.0"))
    ids, mask, dec, dec_mask = inputs()
    name = "encoder_final_ln.hook_normalized"
    with torch.no_grad():
        clean, cache = model.run_with_cache(ids, dec, mask, dec_mask, names_filter=name)
        patched = model.run_with_hooks(
            ids, dec, mask, dec_mask, fwd_hooks=[(name, lambda t, hook: cache[name].clone())]
        )
        # a corrupted input (same padding) with the clean encoder output patched in gives the clean logits
        corrupt = torch.randint(2, 101, ids.shape, generator=torch.Generator().manual_seed(5)) * mask
        hooks = [(name, lambda t, hook: cache[name].clone())]
        assert not torch.allclose(model(corrupt, dec, mask, dec_mask), clean, atol=1e-3)
        other = model.run_with_hooks(corrupt, dec, mask, dec_mask, fwd_hooks=hooks)
    assert torch.equal(patched, clean)
    assert torch.equal(other, clean)


def test_cross_attention_ablation_changes_output() -> None:
    model = hookscope.load(random_hf_t5("v1.1"))
    ids, mask, dec, dec_mask = inputs()
    seen: list[str] = []

    def zero(t: torch.Tensor, hook: object) -> torch.Tensor:
        seen.append(hook.name)  # type: ignore[attr-defined]
        return torch.zeros_like(t)

    with torch.no_grad():
        clean = model(ids, dec, mask, dec_mask)
        ablated = model.run_with_hooks(
            ids, dec, mask, dec_mask, fwd_hooks=[("decoder.1.hook_cross_attn_out", zero)]
        )
        head = model.run_with_hooks(
            ids, dec, mask, dec_mask, fwd_hooks=[("decoder.0.cross_attn.hook_z", zero)]
        )
    assert seen == ["decoder.1.hook_cross_attn_out", "decoder.0.cross_attn.hook_z"]  # each fired once
    assert (ablated - clean).abs().max() > 1e-3
    assert (head - clean).abs().max() > 1e-3


def test_every_hook_fires_once_and_names_have_shapes() -> None:
    from hookscope.names import shape_of

    model = hookscope.load(random_hf_t5("v1.1"))
    ids, mask, dec, dec_mask = inputs()
    counts: dict[str, int] = {}

    def count(t: torch.Tensor, hook: object) -> None:
        counts[hook.name] = counts.get(hook.name, 0) + 1  # type: ignore[attr-defined]

    with torch.no_grad():
        model.run_with_hooks(ids, dec, mask, dec_mask, fwd_hooks=[(lambda n: True, count)])
    assert set(counts) == set(model.hook_dict), sorted(set(model.hook_dict) - set(counts))
    assert set(counts.values()) == {1}
    assert all(shape_of(n) is not None for n in model.hook_dict), [
        n for n in model.hook_dict if shape_of(n) is None
    ]


def test_load_folder_decides_tying_from_weights(tmp_path: Path) -> None:
    for variant in VARIANTS:
        hf = random_hf_t5(variant)
        hf.save_pretrained(tmp_path / variant)
        model = hookscope.load(tmp_path / variant)
        assert model.cfg.tie_embeddings == (variant == "v1.0"), variant
        ids, mask, dec, dec_mask = inputs()
        with torch.no_grad():
            ref = hf(
                input_ids=ids, attention_mask=mask, decoder_input_ids=dec, decoder_attention_mask=dec_mask
            )
            ours = model(ids, dec, mask, dec_mask)
        assert torch.allclose(ours, ref.logits, atol=1e-5, rtol=1e-5), variant


def test_text_without_tokenizer_and_missing_inputs_raise_clearly() -> None:
    model = hookscope.load(random_hf_t5("v1.0"))
    with pytest.raises(ValueError, match="no tokenizer"):
        model("translate English to German: hi")
    with pytest.raises(ValueError, match="encoder input"):
        model(None, torch.zeros(1, 1, dtype=torch.long))
    with pytest.raises(ValueError, match="num_beams"):
        model.generate(torch.ones(1, 3, dtype=torch.long), 4, num_beams=0)
