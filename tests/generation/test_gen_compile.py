"""generate(compile=True): compiled once per shape bucket, tokens equal HF's, hooks honoured at every step.

The default run compiles with a counting backend (TorchDynamo traces and guards exactly as with inductor,
then runs the captured graph eagerly), which is what decides recompilation and hook handling; the
slow-marked test compiles with inductor for every decoder family.
"""

from __future__ import annotations

import pytest
import torch

import hookscope
from hookscope.generation import compiled
from tests.equivalence.decoder_configs import random_hf_model, random_tokens

ARCHS = ["gpt2", "gpt_neo", "opt", "neox", "llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gptj", "phi"]


def _hf_greedy(hf: torch.nn.Module, tokens: torch.Tensor, new: int, **kwargs: object) -> torch.Tensor:
    with torch.no_grad():
        return hf.generate(tokens, max_new_tokens=new, do_sample=False, eos_token_id=None, **kwargs)


def test_second_call_and_other_lengths_do_not_recompile(compilations: list[int]) -> None:
    hf = random_hf_model("llama")  # GQA, rotary
    model = hookscope.load(hf)
    tokens = random_tokens(2, 6)
    first = model.generate(tokens, 12, eos_token_id=[], compile=True)
    assert compilations, "the first call compiles"
    n_first = len(compilations)
    again = model.generate(tokens, 12, eos_token_id=[], compile=True)
    shorter = model.generate(tokens[:, :4], 20, eos_token_id=[], compile=True)
    assert len(compilations) == n_first  # same shape bucket: nothing compiled again
    assert torch.equal(first, again) and torch.equal(first, _hf_greedy(hf, tokens, 12))
    assert torch.equal(shorter, _hf_greedy(hf, tokens[:, :4], 20))


@pytest.mark.parametrize(
    "name", [a if a in ("gpt2", "llama") else pytest.param(a, marks=pytest.mark.slow) for a in ARCHS]
)  # tracing takes ~20 s a family here: two in the default run, every family in the slow run
def test_compiled_greedy_and_beams_equal_hf(name: str, compilations: list[int]) -> None:
    hf = random_hf_model(name)
    model = hookscope.load(hf)
    tokens = random_tokens(2, 6, seed=2)
    assert torch.equal(model.generate(tokens, 14, eos_token_id=[], compile=True), _hf_greedy(hf, tokens, 14))
    beams = model.generate(tokens, 8, eos_token_id=[], num_beams=3, compile=True)
    assert torch.equal(beams, _hf_greedy(hf, tokens, 8, num_beams=3))
    assert compilations


def test_compiled_steps_run_only_without_hooks_and_left_padding_matches_eager(compilations: list[int]) -> None:
    model = hookscope.load(random_hf_model("llama"))
    tokens = random_tokens(2, 5)
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    eager = model.generate(tokens, 6, eos_token_id=[], attention_mask=mask)
    assert torch.equal(model.generate(tokens, 6, eos_token_id=[], attention_mask=mask, compile=True), eager)
    steer = ("blocks.0.hook_resid_post", lambda t, hook: t + 3.0)
    with model.hooks([steer]):
        steered_eager = model.generate(tokens, 6, eos_token_id=[], attention_mask=mask)
        steered = model.generate(tokens, 6, eos_token_id=[], attention_mask=mask, compile=True)
    assert torch.equal(steered, steered_eager) and not torch.equal(steered, eager)
    _, cache = model.generate(tokens, 3, eos_token_id=[], attention_mask=mask, compile=True,
                              return_cache="blocks.1.hook_resid_post")
    assert cache["blocks.1.hook_resid_post"].shape[1] == 8  # recorded steps run eagerly


@pytest.mark.parametrize("backend", ["counting", pytest.param("inductor", marks=pytest.mark.slow)])
def test_weights_edited_after_compiling_are_what_the_compiled_steps_use(
    backend: str, compilations: list[int], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Nothing is baked into the compiled step: in-place edits and replaced weight tensors (another layout
    too) give the tokens HF gives with the same edit, never the compile-time weights."""
    if backend == "inductor":
        monkeypatch.setattr(compiled, "BACKEND", "inductor")
    hf = random_hf_model("llama")
    model = hookscope.load(hf)
    tokens = random_tokens(2, 5)
    before = model.generate(tokens, 8, eos_token_id=[], compile=True)
    ours, theirs = model.blocks[0].mlp.up_proj.weight, hf.model.layers[0].mlp.up_proj.weight
    edited = ours.detach() * -4.0
    with torch.no_grad():
        ours.copy_(edited)
        theirs.copy_(edited)
    in_place = model.generate(tokens, 8, eos_token_id=[], compile=True)
    assert torch.equal(in_place, _hf_greedy(hf, tokens, 8)) and not torch.equal(in_place, before)
    head = hf.lm_head.weight.detach().flip(0).contiguous()  # [d_vocab, d_model], row-major this time
    with torch.no_grad():
        model.unembed.weight.data = head.clone()
        hf.lm_head.weight.data = head.clone()
    replaced = model.generate(tokens, 8, eos_token_id=[], compile=True)
    assert torch.equal(replaced, _hf_greedy(hf, tokens, 8)) and not torch.equal(replaced, in_place)


@pytest.mark.parametrize("compile", [False, True])
def test_hook_attached_mid_generation_fires_from_the_next_step(compile: bool, compilations: list[int]) -> None:
    model = hookscope.load(random_hf_model("gpt2"))
    tokens = random_tokens(1, 4)
    seen: list[tuple[int, ...]] = []
    direction = torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(0))

    def steer(t: torch.Tensor, hook: object) -> torch.Tensor:
        seen.append(tuple(t.shape))
        return t + 10.0 * direction

    def run(attach_after: int | None) -> list[int]:
        out = []
        stream = model.generate_stream(tokens, 8, eos_token_id=[], compile=compile)
        for i, tok in enumerate(stream):
            out.append(int(tok[0]))
            if i + 1 == attach_after:
                model.add_hook("blocks.1.hook_resid_post", steer)
        model.reset_hooks()
        return out

    plain = run(None)
    steered = run(3)
    # attached after token 3: the forwards for tokens 4..8 each ran the hook on their one new position
    assert seen == [(1, 1, model.cfg.d_model)] * 5
    assert steered[:3] == plain[:3] and steered != plain
    seen.clear()
    assert run(3) == steered and len(seen) == 5  # the same with the hook attached the same way again


@pytest.mark.slow
@pytest.mark.parametrize("name", ARCHS)
def test_inductor_compiled_greedy_equals_hf(name: str) -> None:
    hf = random_hf_model(name)
    model = hookscope.load(hf)
    tokens = random_tokens(2, 6, seed=2)
    assert torch.equal(model.generate(tokens, 14, eos_token_id=[], compile=True), _hf_greedy(hf, tokens, 14))


def test_cuda_path_marks_the_kv_cache_static_once_per_cache(compilations: list[int]) -> None:
    """The CUDA-graph path, exercised on CPU tensors: the cache buffers it writes get static addresses."""
    from hookscope.generation.kv_cache import KVCache

    model = hookscope.load(random_hf_model("llama"))
    lean = compiled.compiled_step(model)
    step = compiled.CompiledStep(model, lean.fn, on_cuda=True, lean=lean.lean)
    tokens = random_tokens(1, 4)
    cache = KVCache.for_model(model, 1, 8)
    with torch.no_grad():
        model(tokens, kv_cache=cache)
        logits = step(tokens[:, -1:], None, cache)
    marked = [cache.keys, cache.values, cache.layer(0).k, cache.layer(1).v]
    assert all(getattr(t, "_dynamo_static_input_type", None) for t in marked)
    assert step.used_compiled == 1 and logits.shape == (1, 1, model.cfg.d_vocab)


def test_fixed_shape_step_is_chosen_only_on_cuda() -> None:
    kind, fn, options = compiled.plan(on_cuda=True, has_lean=True)
    assert kind == "fixed_shape" and fn is compiled._fixed_shape_step
    assert options == {"dynamic": False, "mode": "reduce-overhead"}
    assert compiled.plan(on_cuda=False, has_lean=True)[0::2] == ("lean", {"dynamic": True})
    assert compiled.plan(on_cuda=True, has_lean=False)[0] == "forward"  # no lean step: the forward, graphs still
    assert compiled.compiled_step(hookscope.load(random_hf_model("llama"))).kind == "lean"  # a CPU model


@pytest.mark.parametrize(  # a sliding window over the whole buffer; learned positions (slow run)
    "name", ["mistral", pytest.param("gpt2", marks=pytest.mark.slow)]
)
def test_fixed_shape_step_equals_hf_and_compiles_once_for_every_step(
    name: str, compilations: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CUDA step run on the CPU: every step has the same shapes, so one graph serves them all."""
    monkeypatch.setattr(compiled, "on_cuda", lambda model: True)
    hf = random_hf_model(name)
    model = hookscope.load(hf)
    tokens = random_tokens(2, 6, seed=2)
    assert torch.equal(model.generate(tokens, 12, eos_token_id=[], compile=True), _hf_greedy(hf, tokens, 12))
    assert len(compilations) == 1
    mask = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])
    padded = tokens.masked_fill(mask == 0, 0)
    out = model.generate(padded, 12, eos_token_id=[], attention_mask=mask, compile=True)
    assert torch.equal(out, _hf_greedy(hf, padded, 12, attention_mask=mask, pad_token_id=0))
    beams = model.generate(tokens, 8, eos_token_id=[], num_beams=3, compile=True)
    assert torch.equal(beams, _hf_greedy(hf, tokens, 8, num_beams=3))
    assert len(compilations) == 3, compilations  # one more graph with a padding mask, one for 6 beam rows
