"""One ``concat_steps`` for native generation and wrapped models: the steps read as one full forward.

Masked attention scores must hold what the full forward's mask holds (the fill of the model's mask
dtype, never ``-inf``), and sliding-window steps sit at their absolute key positions.
"""

from __future__ import annotations

import pytest
import torch

import hookscope
from hookscope.bridge import wrap
from hookscope.cache import MultipleCallsError
from hookscope.generation.step_cache import concat_steps
from tests.bridge import models as M
from tests.equivalence.decoder_configs import random_hf_model, random_tokens

ATTN = ("blocks.1.attn.hook_attn_scores", "blocks.1.attn.hook_pattern", "blocks.0.hook_resid_post")


@pytest.mark.parametrize("name", ["gpt2", "llama", "gemma2"])
def test_native_float64_steps_equal_the_full_forward_including_masked_scores(name: str) -> None:
    """GPT-2's softmax runs in float64 (mask fill float64's min), Llama's and Gemma 2's in float32."""
    model = hookscope.load(random_hf_model(name)).double()
    tokens = random_tokens(2, 5, seed=3)
    out, merged = model.generate(tokens, 4, eos_token_id=[], return_cache=list(ATTN))
    _, full = model.run_with_cache(out, names_filter=list(ATTN))
    for hook in ATTN:
        torch.testing.assert_close(merged[hook], full[hook], atol=1e-10, rtol=1e-10, msg=hook)
    scores = merged["blocks.1.attn.hook_attn_scores"]
    assert bool(torch.isfinite(scores).all())


@pytest.mark.parametrize(("layout", "attn"), [("llama", "eager"), ("mistral", "sdpa")])
def test_wrapped_model_steps_equal_the_full_forward_including_masked_scores(layout: str, attn: str) -> None:
    hf = M.decoder(layout, attn=attn)  # mistral: sliding window 4 < 6 prompt tokens + 3 generated
    wrapped = wrap(hf)
    names = ["blocks.0.attn.hook_attn_scores", "blocks.0.attn.hook_pattern", "blocks.1.hook_resid_post"]
    with torch.no_grad():
        out, steps = wrapped.generate(M.tokens(2, 6), max_new_tokens=4, min_new_tokens=4, do_sample=False,
                                      names_filter=names)
        merged = concat_steps(steps, wrapped)
        _, full = wrapped.run_with_cache(out[:, :-1], names_filter=names)
    for name in names:
        torch.testing.assert_close(merged[name], full[name], atol=1e-5, rtol=1e-5, msg=name)


def test_names_computed_once_are_kept_and_position_free_names_keep_one_call_per_step() -> None:
    steps = [
        {"blocks.0.hook_resid_post": torch.zeros(1, 3, 4), "encoder.0.hook_resid_post": torch.ones(1, 6, 4),
         "pooled": torch.ones(1, 4)},
        {"blocks.0.hook_resid_post": torch.ones(1, 1, 4), "pooled": torch.zeros(1, 4)},
    ]
    merged = concat_steps(steps)
    assert merged["blocks.0.hook_resid_post"].shape == (1, 4, 4)
    assert torch.equal(merged["encoder.0.hook_resid_post"], torch.ones(1, 6, 4))
    with pytest.raises(MultipleCallsError):  # no single forward holds it: never silently one step's value
        merged["pooled"]
    assert [t.tolist() for t in merged.calls("pooled")] == [[[1.0] * 4], [[0.0] * 4]]
    assert torch.equal(concat_steps(steps[:1])["pooled"], torch.ones(1, 4))  # one step is one forward
    with pytest.raises(ValueError, match="at least one step"):
        concat_steps([])
