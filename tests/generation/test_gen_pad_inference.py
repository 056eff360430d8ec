"""A token prompt without attention_mask: pad-id tokens are padding when the pad id is not an EOS id, as
HF ``generate`` infers (before: every token was real, so prompts holding the pad id decoded differently)."""

from __future__ import annotations

import pytest
import torch

import hookscope
from tests.equivalence.decoder_configs import random_hf_model

PROMPTS = torch.tensor([[0, 0, 4, 9, 3, 7], [5, 0, 2, 0, 8, 3], [1, 4, 0, 6, 2, 5]])  # pad id 0 inside


@pytest.mark.parametrize("name", ["llama", "gemma2"])
def test_pad_ids_in_an_unmasked_prompt_are_padding_like_hf(name: str) -> None:
    hf = random_hf_model(name)
    hf.config.pad_token_id = hf.generation_config.pad_token_id = 0  # Gemma 2's default; Llama has none
    model = hookscope.load(hf)
    with torch.no_grad():
        ref = hf.generate(PROMPTS, max_new_tokens=5, do_sample=False)
        beams = hf.generate(PROMPTS, max_new_tokens=4, do_sample=False, num_beams=3)
        unmasked = hf.generate(PROMPTS, attention_mask=torch.ones_like(PROMPTS), max_new_tokens=5, do_sample=False)
    assert not torch.equal(ref, unmasked)  # the inferred mask matters for these prompts
    assert torch.equal(model.generate(PROMPTS, 5), ref)
    assert torch.equal(model.generate(PROMPTS, 4, num_beams=3), beams)
    assert torch.equal(torch.stack(list(model.generate_stream(PROMPTS, 5)), dim=1), ref[:, 6:])
    assert torch.equal(model.generate(PROMPTS, 5, attention_mask=torch.ones_like(PROMPTS)), unmasked)


def test_no_inference_when_pad_is_an_eos_id_or_ends_the_prompt() -> None:
    hf = random_hf_model("llama")
    model = hookscope.load(hf)
    plain = model.generate(PROMPTS, 4, attention_mask=torch.ones_like(PROMPTS))
    assert torch.equal(model.generate(PROMPTS, 4, pad_token_id=0, eos_token_id=[0]), plain)
    ends_with_pad = PROMPTS.clone()
    ends_with_pad[0, -1] = 0
    assert torch.equal(model.generate(ends_with_pad, 4, pad_token_id=0),
                       model.generate(ends_with_pad, 4, pad_token_id=0, attention_mask=torch.ones_like(PROMPTS)))
