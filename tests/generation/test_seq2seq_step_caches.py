"""T5 and Whisper generation caches of every step equal one teacher-forced run over the result."""

from __future__ import annotations

import pytest
import torch

import hookscope
from tests.equivalence import whisper_cases
from tests.equivalence.t5_cases import inputs, random_hf_t5
from tests.helpers import first_divergence


def _compare(steps: hookscope.ActivationCache, full: hookscope.ActivationCache) -> None:
    assert set(steps) == set(full), sorted(set(steps) ^ set(full))
    joined = [name for name in full if steps.n_calls(name) == 1]
    # T5's relative position biases are kept per step (a full forward holds future keys' bias too)
    assert all(name.endswith("hook_position_bias") for name in full if name not in joined)
    problem = first_divergence(((name, steps[name], full[name]) for name in joined), 1e-10, 1e-10)
    assert problem is None, f"first divergence at {problem}"


@pytest.mark.parametrize("use_cache", [True, False])
def test_t5_generate_cache_equals_teacher_forced_run(use_cache: bool) -> None:
    model = hookscope.load(random_hf_t5("v1.1", torch.float64, seed=1), dtype=torch.float64)
    ids, mask, _, _ = inputs(seed=2)
    tokens, cache = model.generate(ids, 5, attention_mask=mask, eos_token_id=[], return_cache=True,
                                   use_cache=use_cache)
    assert tokens.shape == (5, 6)
    _, full = model.run_with_cache(ids, tokens, attention_mask=mask)
    assert cache["decoder.1.hook_resid_post"].shape[1] == 6 and cache["encoder.0.hook_resid_post"].shape[1] == 9
    _compare(cache, full)


def test_whisper_generate_and_names_filter_cache_equals_teacher_forced_run() -> None:
    hf = whisper_cases.random_hf_whisper(torch.float64, seed=2)
    model = hookscope.load(hf, dtype=torch.float64)
    feats, _ = whisper_cases.inputs(batch=3, dtype=torch.float64)
    tokens, cache = model.generate(feats, 6, eos_token_id=[], return_cache=True)
    _, full = model.run_with_cache(feats, tokens)
    _compare(cache, full)
    names = ["decoder.1.hook_resid_post", "decoder.0.cross_attn.hook_pattern"]
    again, some = model.generate(feats, 6, eos_token_id=[], return_cache=names)
    assert torch.equal(again, tokens) and sorted(some) == sorted(names)
    with pytest.raises(ValueError, match="beam search"):
        model.generate(feats, 6, num_beams=2, return_cache=True)
