"""``generate`` with default arguments equals HF ``generate`` with its defaults.

HF ``generate`` stops at the model config's ``eos_token_id`` (one id or a list) and fills finished rows
with its ``pad_token_id`` (else the first EOS id); beam search fills shorter beams with
``pad_token_id or eos_token_id[0]``. Before the fix, hookscope ignored the config (no EOS without a
tokenizer) and padded with the first EOS id, so default-argument outputs differed from HF's.
"""

from __future__ import annotations

import pytest
import torch

import hookscope
from tests.equivalence.decoder_configs import random_hf_model, random_tokens

NEW = 12


def _with_config_ids(name: str, eos: int | list[int], pad: int | None) -> tuple[torch.nn.Module, object]:
    hf = random_hf_model(name)
    for config in (hf.config, hf.generation_config):
        config.eos_token_id, config.pad_token_id = eos, pad
    return hf, hookscope.load(hf)


def _eos_met_early(name: str, tokens: torch.Tensor) -> list[int]:
    """Tokens the free-running greedy output meets at steps 2 and 5 of rows 0 and 1 (so rows stop early)."""
    free = hookscope.load(random_hf_model(name)).generate(tokens, NEW, eos_token_id=[])
    n = tokens.shape[1]
    return [int(free[0, n + 2]), int(free[1, n + 5])]


@pytest.mark.parametrize(("name", "pad"), [("llama", 0), ("llama", 7), ("gpt2", None), ("gemma2", 0)])
def test_greedy_with_default_arguments_equals_hf_defaults(name: str, pad: int | None) -> None:
    tokens = random_tokens(3, 5, seed=12)
    eos = _eos_met_early(name, tokens)
    hf, model = _with_config_ids(name, eos if name == "gemma2" else eos[0], pad)
    with torch.no_grad():
        ref = hf.generate(tokens, max_new_tokens=NEW, do_sample=False)
    out = model.generate(tokens, NEW)
    assert out.shape == ref.shape and torch.equal(out, ref), f"{name} pad={pad}:\n{out}\n{ref}"
    assert out.shape[1] < 5 + NEW or (out[:, 5:] == (pad if pad is not None else eos[0])).any(), (
        "no row stopped early: the default EOS was not exercised"
    )


def test_beam_search_with_default_arguments_equals_hf_defaults() -> None:
    tokens = random_tokens(2, 5, seed=13)
    free = hookscope.load(random_hf_model("llama")).generate(tokens, NEW, eos_token_id=[], num_beams=3)
    eos = int(free[0, 5 + 3])
    hf, model = _with_config_ids("llama", eos, 0)  # HF fills short beams with `0 or eos`: EOS
    with torch.no_grad():
        ref = hf.generate(tokens, max_new_tokens=NEW, do_sample=False, num_beams=3)
    assert torch.equal(model.generate(tokens, NEW, num_beams=3), ref)


def test_explicit_pad_token_id_and_empty_eos_override_the_config() -> None:
    tokens = random_tokens(2, 5, seed=12)
    eos = _eos_met_early("llama", tokens)
    hf, model = _with_config_ids("llama", eos, 0)
    with torch.no_grad():
        ref = hf.generate(tokens, max_new_tokens=NEW, do_sample=False, pad_token_id=9)
        free = hf.generate(tokens, max_new_tokens=NEW, do_sample=False, eos_token_id=None)
    assert torch.equal(model.generate(tokens, NEW, pad_token_id=9), ref)
    assert torch.equal(model.generate(tokens, NEW, eos_token_id=[]), free)
    streamed = torch.stack(list(model.generate_stream(tokens, NEW, pad_token_id=9)), dim=1)
    assert torch.equal(streamed, ref[:, 5:])
    with pytest.raises(ValueError, match="pad_token_id must be an integer >= 0"):
        model.generate(tokens, 2, pad_token_id=-1)


def test_stop_string_may_begin_in_the_prompt_like_hf() -> None:
    """HF's StopStringCriteria matches a stop string that starts in the prompt and ends in generated text;
    hookscope used to look at the generated text only and ran on."""
    from tests.generation.test_gen_cache_and_hooks import _gpt2_with_tokenizer, gpt2_tokenizer

    tok = gpt2_tokenizer.__wrapped__()  # the module's fixture body (skips when the BPE files are absent)
    model = _gpt2_with_tokenizer(tok)
    hf = model.to_hf()
    ids = model.to_tokens("The cat sat on")
    n = ids.shape[1]
    free = model.generate(ids, 8, eos_token_id=[])
    stop = "on" + tok.decode(free[0, n:].tolist())[:2]  # "on" is the prompt's end
    with torch.no_grad():
        ref = hf.generate(ids, max_new_tokens=8, do_sample=False, stop_strings=stop, tokenizer=tok)
    out = model.generate(ids, 8, stop_strings=stop)
    assert torch.equal(out, ref) and out.shape[1] <= n + 2, (out, ref, stop)


def test_default_eos_adds_the_tokenizer_eos_to_the_config_ones() -> None:
    """A chat tokenizer's end-of-turn id (not in config.json) still stops generation, as before the fix."""
    from types import SimpleNamespace

    tokens = random_tokens(3, 5, seed=12)
    eos = _eos_met_early("llama", tokens)
    hf, model = _with_config_ids("llama", eos[0], 0)
    model.tokenizer = SimpleNamespace(eos_token_id=eos[1], pad_token_id=None)
    with torch.no_grad():
        ref = hf.generate(tokens, max_new_tokens=NEW, do_sample=False, eos_token_id=eos)
    assert torch.equal(model.generate(tokens, NEW), ref)


def test_generate_refuses_a_model_that_predicts_ids_it_cannot_embed() -> None:
    """d_vocab_out > d_vocab (TransformerLens allows it): a generated id past d_vocab cannot be the next
    input, so generate says so up front instead of failing inside the embedding at some step."""
    from hookscope.models.decoder import Decoder
    from hookscope.models.decoder_config import DecoderConfig

    wide = Decoder.from_config(DecoderConfig(d_model=8, n_layers=1, n_heads=2, d_head=4, d_mlp=8, d_vocab=10,
                                             n_ctx=30, d_vocab_out=40), init_range=1.0)
    with pytest.raises(ValueError, match="d_vocab_out > d_vocab"):
        wide.generate(torch.tensor([[1, 2, 3]]), 5, eos_token_id=[])
    narrow = Decoder.from_config(DecoderConfig(d_model=8, n_layers=1, n_heads=2, d_head=4, d_mlp=8, d_vocab=10,
                                               n_ctx=30, d_vocab_out=7), init_range=1.0)
    out = narrow.generate(torch.tensor([[1, 2, 3]]), 5, eos_token_id=[])
    assert out.shape == (1, 8) and int(out[:, 3:].max()) < 7
