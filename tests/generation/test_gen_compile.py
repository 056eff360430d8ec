"""generate(compile=True): compiled decode steps give the eager tokens; hooks and step caches run eagerly."""

from __future__ import annotations

import torch

import hookscope
from hookscope.generation import compiled
from tests.equivalence.decoder_configs import random_hf_model, random_tokens


def test_compiled_steps_match_eager_and_hooks_stay_eager(monkeypatch) -> None:
    model = hookscope.load(random_hf_model("llama"))  # GQA, rotary
    tokens = random_tokens(2, 5)
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    eager = model.generate(tokens, 6, eos_token_id=[], attention_mask=mask)

    calls: list[int] = []
    real_step = compiled.compiled_step

    def counting_step(m):
        step = real_step(m)
        return None if step is None else (lambda *a: calls.append(1) or step(*a))

    monkeypatch.setattr("hookscope.generation.api.compiled_step", counting_step)
    fast = model.generate(tokens, 6, eos_token_id=[], attention_mask=mask, compile=True)
    assert torch.equal(fast, eager)
    assert len(calls) == 5  # every step after the prompt went through the compiled function

    calls.clear()
    steer = ("blocks.0.hook_resid_post", lambda t, hook: t + 3.0)
    with model.hooks([steer]):
        steered_eager = model.generate(tokens, 6, eos_token_id=[], attention_mask=mask)
        steered = model.generate(tokens, 6, eos_token_id=[], attention_mask=mask, compile=True)
    assert torch.equal(steered, steered_eager) and not calls  # a hook is attached: eager steps
    _, cache = model.generate(tokens, 3, eos_token_id=[], attention_mask=mask, compile=True,
                              return_cache="blocks.1.hook_resid_post")
    assert cache["blocks.1.hook_resid_post"].shape[1] == 8 and not calls  # recorded steps: eager
