"""Greedy decoding, EOS stopping and beam search give Hugging Face ``generate``'s tokens and scores."""

from __future__ import annotations

import pytest
import torch

import hookscope
from tests.equivalence.decoder_configs import random_hf_model, random_tokens

GREEDY_ARCHS = ["gpt2", "gpt_neo", "neox", "llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "opt", "gptj",
                "gptj_full_rotary_tied_gelu", "phi", "phi_qk_layernorm_gqa"]
NEW = 20


def _pair(name: str) -> tuple[torch.nn.Module, object]:
    hf = random_hf_model(name)
    return hf, hookscope.load(hf)


@pytest.mark.parametrize("name", GREEDY_ARCHS)
def test_greedy_equals_hf(name: str) -> None:
    """Mistral/Gemma 2 use a sliding window of 4 and GPT-Neo's local layers one of 3, much shorter than the 26
    positions generated over."""
    hf, model = _pair(name)
    tokens = random_tokens(3, 6, seed=2)
    with torch.no_grad():
        ref = hf.generate(tokens, max_new_tokens=NEW, do_sample=False, eos_token_id=None)
    out = model.generate(tokens, NEW, eos_token_id=[])
    assert out.shape == ref.shape == (3, 6 + NEW)
    assert torch.equal(out, ref), f"{name}: first differing step {(out != ref).any(0).nonzero()[0, 0] - 6}"


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_greedy_left_padded_equals_hf(name: str) -> None:
    hf, model = _pair(name)
    tokens = random_tokens(3, 7, seed=3)
    mask = torch.ones_like(tokens)
    mask[0, :3] = 0
    mask[2, :1] = 0
    tokens = tokens.masked_fill(mask == 0, 0)
    with torch.no_grad():
        ref = hf.generate(tokens, attention_mask=mask, max_new_tokens=NEW, do_sample=False, eos_token_id=None,
                          pad_token_id=0)
    out = model.generate(tokens, NEW, attention_mask=mask, eos_token_id=[])
    assert torch.equal(out, ref)


def test_stops_on_any_of_several_eos_ids_like_hf() -> None:
    hf, model = _pair("llama")
    tokens = random_tokens(3, 5, seed=4)
    free = model.generate(tokens, NEW, eos_token_id=[])
    eos = [int(free[0, 5 + 2]), int(free[1, 5 + 6])]  # row 0 stops by step 3, row 1 by step 7 (or earlier)
    with torch.no_grad():
        ref = hf.generate(tokens, max_new_tokens=NEW, do_sample=False, eos_token_id=eos, pad_token_id=eos[0])
    out = model.generate(tokens, NEW, eos_token_id=eos, pad_token_id=eos[0])
    assert torch.equal(out, ref)
    for row in (0, 1):
        gen = out[row, 5:].tolist()
        stop = min(i for i, t in enumerate(gen) if t in eos)
        assert stop <= (2 if row == 0 else 6)
        assert all(t == eos[0] for t in gen[stop + 1 :]), "tokens after EOS must be padding"


@pytest.mark.parametrize(
    ("name", "num_beams", "length_penalty", "early_stopping"),
    [("gpt2", 3, 1.0, False), ("gpt2", 4, 0.0, False), ("llama", 3, 2.0, True), ("llama", 4, 1.0, "never"),
     ("llama", 4, -0.5, False), ("gptj", 3, 1.0, False), ("phi_qk_layernorm_gqa", 3, 1.0, True)],
)
def test_beam_search_equals_hf(name: str, num_beams: int, length_penalty: float,
                               early_stopping: bool) -> None:
    hf, model = _pair(name)
    tokens = random_tokens(2, 5, seed=5)
    kwargs = dict(max_new_tokens=12, num_beams=num_beams, length_penalty=length_penalty,
                  early_stopping=early_stopping)
    free = model.generate(tokens, eos_token_id=[], **kwargs)
    eos = [int(free[0, 5 + 3]), int(free[1, 5 + 5])]  # tokens the best beams meet: some beams finish early
    kwargs["eos_token_id"] = eos
    with torch.no_grad():
        ref = hf.generate(tokens, do_sample=False, pad_token_id=eos[0], num_return_sequences=num_beams,
                          output_scores=True, return_dict_in_generate=True, **kwargs)
        best = hf.generate(tokens, do_sample=False, pad_token_id=eos[0], **kwargs)
    beams = model.generate(tokens, return_beams=True, **kwargs)
    assert beams.sequences.shape[:2] == (2, num_beams)
    assert torch.equal(beams.sequences.flatten(0, 1), ref.sequences)
    torch.testing.assert_close(beams.scores.flatten(), ref.sequences_scores, atol=1e-5, rtol=1e-5)
    assert torch.equal(model.generate(tokens, **kwargs), best)
    assert (beams.sequences[:, :, 5:] == eos[0]).any() or (beams.sequences[:, :, 5:] == eos[1]).any(), (
        "no beam met an EOS: the finished-beam bookkeeping was not exercised"
    )


def test_beam_search_with_repetition_penalty_and_padding_equals_hf() -> None:
    hf, model = _pair("qwen2")
    tokens = random_tokens(2, 6, seed=6)
    mask = torch.ones_like(tokens)
    mask[1, :2] = 0
    tokens = tokens.masked_fill(mask == 0, 0)
    kwargs = dict(max_new_tokens=8, num_beams=3, repetition_penalty=1.3, eos_token_id=[5])
    with torch.no_grad():
        ref = hf.generate(tokens, attention_mask=mask, do_sample=False, pad_token_id=0,
                          num_return_sequences=3, output_scores=True, return_dict_in_generate=True, **kwargs)
    # HF's repetition penalty also counts the left-padding token (0); ours skips padding: give row 1
    # a pad id that row 1's real tokens already contain, so both count the same set of tokens.
    tokens[1, :2] = tokens[1, 2]
    beams = model.generate(tokens, attention_mask=mask, return_beams=True, **kwargs)
    ref_seq = ref.sequences.view(2, 3, -1)
    assert torch.equal(beams.sequences[0], ref_seq[0])
    assert torch.equal(beams.sequences[1, :, 6:], ref_seq[1, :, 6:])
    torch.testing.assert_close(beams.scores.flatten(), ref.sequences_scores, atol=1e-5, rtol=1e-5)
