"""Generation through the wrapped model's own generate(): steering hooks and per-step caches."""

from __future__ import annotations

import torch

from hookscope.bridge import concat_steps, wrap
from tests.bridge import models as M

NEW = 4


def _greedy(wrapped, ids, **kwargs):
    return wrapped.generate(ids, max_new_tokens=NEW, min_new_tokens=NEW, do_sample=False, **kwargs)


def test_steering_hook_changes_generation_and_is_removed_after() -> None:
    model = M.decoder("gpt2", attn="sdpa")
    wrapped = wrap(model)
    ids = M.tokens(batch=2, pos=5)
    clean = _greedy(wrapped, ids)
    assert torch.equal(clean, model.generate(ids, max_new_tokens=NEW, min_new_tokens=NEW, do_sample=False))
    direction = torch.randn(M.D, generator=torch.Generator().manual_seed(0))

    def steer(resid: torch.Tensor, hook) -> torch.Tensor:
        return resid + 8.0 * direction

    steered = _greedy(wrapped, ids, fwd_hooks=[("blocks.1.hook_resid_post", steer)])
    assert steered.shape == clean.shape and not torch.equal(steered[:, 5:], clean[:, 5:])
    assert torch.equal(_greedy(wrapped, ids), clean)  # the steering hook is gone


def test_per_step_caches_concatenate_to_the_full_forward() -> None:
    model = M.decoder("llama", attn="sdpa")
    wrapped = wrap(model)
    ids = M.tokens(batch=2, pos=5)
    names = ["blocks.1.hook_resid_post", "blocks.2.attn.hook_pattern", "ln_final.hook_normalized"]
    out, steps = _greedy(wrapped, ids, names_filter=names)
    assert len(steps) == NEW  # the prompt, then one forward per further token
    assert steps[0]["blocks.1.hook_resid_post"].shape == (2, 5, M.D)
    assert all(step["blocks.1.hook_resid_post"].shape == (2, 1, M.D) for step in steps[1:])
    assert steps[-1]["blocks.2.attn.hook_pattern"].shape == (2, M.HEADS, 1, 5 + NEW - 1)
    assert model.config._attn_implementation == "sdpa"
    merged = concat_steps(steps)
    _, full = wrapped.run_with_cache(out[:, :-1], names_filter=names)
    for name in names:
        torch.testing.assert_close(merged[name], full[name], atol=1e-5, rtol=1e-5)
    _, concatenated = _greedy(wrapped, ids, names_filter=names, concat=True)
    torch.testing.assert_close(concatenated["blocks.1.hook_resid_post"], full["blocks.1.hook_resid_post"])


def test_encoder_decoder_generation_caches_encoder_in_step_zero() -> None:
    model = M.t5()
    wrapped = wrap(model)
    ids = M.tokens(batch=2, pos=6)
    names = ["encoder.1.hook_resid_post", "decoder.0.cross_attn.hook_pattern"]
    out, steps = wrapped.generate(
        ids, max_new_tokens=3, min_new_tokens=3, do_sample=False, names_filter=names
    )
    assert len(steps) == 3
    assert steps[0]["encoder.1.hook_resid_post"].shape == (2, 6, M.D)
    assert all("encoder.1.hook_resid_post" not in step for step in steps[1:])
    assert steps[2]["decoder.0.cross_attn.hook_pattern"].shape == (2, M.HEADS, 1, 6)
    _, full = wrapped.run_with_cache(input_ids=ids, decoder_input_ids=out[:, :-1], names_filter=names)
    torch.testing.assert_close(
        steps[0]["encoder.1.hook_resid_post"], full["encoder.1.hook_resid_post"], atol=1e-5, rtol=1e-5
    )
    torch.testing.assert_close(
        steps[2]["decoder.0.cross_attn.hook_pattern"],
        full["decoder.0.cross_attn.hook_pattern"][:, :, 2:3],
        atol=1e-5,
        rtol=1e-5,
    )


def test_encoder_decoder_concatenated_cache_keeps_the_encoder_and_equals_the_full_forward() -> None:
    model = M.t5()
    wrapped = wrap(model)
    ids = M.tokens(batch=2, pos=6)
    names = ["encoder.1.hook_resid_post", "decoder.1.hook_resid_post", "decoder.0.cross_attn.hook_pattern"]
    out, cache = wrapped.generate(
        ids, max_new_tokens=3, min_new_tokens=3, do_sample=False, names_filter=names, concat=True
    )
    _, full = wrapped.run_with_cache(input_ids=ids, decoder_input_ids=out[:, :-1], names_filter=names)
    assert sorted(cache) == sorted(names)
    for name in names:
        torch.testing.assert_close(cache[name], full[name], atol=1e-5, rtol=1e-5)
