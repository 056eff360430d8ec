"""hookscope.compat.HookedTransformer: TransformerLens's construction, signatures, defaults and numbers.

References are independent: the HF model's logits, ``F.cross_entropy``, a by-hand argmax decoding loop.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from hookscope.compat import HookedTransformer, HookedTransformerConfig, HookedTransformerKeyValueCache
from hookscope.compat.pretrained import get_official_model_name
from tests.compat.helpers import BOS, PAD, hf_and_compat, word_tokenizer
from tests.equivalence.decoder_configs import random_tokens

FP32 = dict(atol=1e-5, rtol=1e-5)


def tiny_cfg(**overrides) -> HookedTransformerConfig:
    base = dict(n_layers=2, d_model=48, d_head=12, n_ctx=32, d_vocab=101, act_fn="gelu_new", seed=0)
    return HookedTransformerConfig(**{**base, **overrides})


def test_config_has_transformerlens_defaults() -> None:
    cfg = tiny_cfg()
    assert (cfg.n_heads, cfg.d_mlp, cfg.d_vocab_out) == (4, 192, 101)
    assert cfg.initializer_range == pytest.approx(0.8 / math.sqrt(48))
    assert cfg.attn_scale == pytest.approx(math.sqrt(12))  # a divisor, as TL
    assert cfg.n_params == 2 * (48 * 12 * 4 * 4) + 2 * (48 * 192 * 2)
    assert cfg.default_prepend_bos is True and cfg.normalization_type == "LN" and cfg.device == "cpu"
    assert HookedTransformerConfig.unwrap(cfg.to_dict()).to_dict() == cfg.to_dict()
    with pytest.raises(TypeError, match="no field"):
        HookedTransformerConfig.from_dict({**cfg.to_dict(), "bogus": 1})
    with pytest.raises(NotImplementedError, match="attention_dir"):
        HookedTransformer(tiny_cfg(attention_dir="bidirectional"))


@pytest.mark.parametrize("norm", ["LN", "LNPre", "RMS", "RMSPre", None])
def test_from_scratch_options_build_native_models(norm: str | None) -> None:
    """attn_only, every normalization_type and d_vocab_out are native config fields, not compat patches."""
    model = HookedTransformer(tiny_cfg(attn_only=True, normalization_type=norm, d_vocab_out=37, n_key_value_heads=2))
    x = random_tokens(2, 6)
    logits, cache = model.run_with_cache(x)
    assert logits.shape == (2, 6, 37) and "blocks.0.mlp.hook_post" not in cache
    assert torch.equal(logits, model(x))
    assert model.cfg.normalization_type == norm and model.cfg.attn_only
    decomposed = cache.decompose_resid()  # attention-only: embeddings and attention outputs
    torch.testing.assert_close(decomposed.sum(0), cache["resid_post", -1], atol=1e-5, rtol=1e-5)
    attrs = cache.logit_attrs(decomposed, 5)  # through whatever final norm the model has
    expect = logits[..., 5] - model.b_U[5]
    if norm == "LN":
        expect = expect - model.ln_final.bias @ model.W_U[:, 5]
    torch.testing.assert_close(attrs.sum(0), expect, atol=1e-4, rtol=1e-4)


def test_constructed_model_uses_tl_init_and_is_hooked() -> None:
    model = HookedTransformer(tiny_cfg())
    w_q = model.blocks[0].attn.q_proj.weight
    assert abs(w_q.std().item() - model.cfg.initializer_range) < 0.01
    assert torch.count_nonzero(model.blocks[0].attn.q_proj.bias) == 0
    assert torch.equal(model.blocks[1].ln2.weight, torch.ones(48))
    assert model.cfg.n_layers == 2 and model.cfg.norm == "layernorm"  # TL fields, native ones read through
    x = random_tokens(3, 9)
    logits = model(x)
    cached, cache = model.run_with_cache(x)
    assert torch.allclose(logits, cached)  # torch.allclose defaults: observing changes nothing
    assert cache["resid_post", -1].shape == (3, 9, 48)


def test_forward_return_types_and_loss_per_token() -> None:
    model = HookedTransformer(tiny_cfg())
    x = random_tokens(2, 8)
    logits = model(x)
    per_token = model(x, return_type="loss", loss_per_token=True)
    by_hand = F.cross_entropy(logits[:, :-1].flatten(0, 1), x[:, 1:].flatten(), reduction="none").view(2, 7)
    torch.testing.assert_close(per_token, by_hand, **FP32)
    torch.testing.assert_close(model(x, return_type="loss"), by_hand.mean(), **FP32)
    both_logits, both_loss = model(x, return_type="both")
    assert torch.equal(both_logits, logits) and torch.allclose(both_loss, by_hand.mean())
    assert model(x, return_type=None) is None
    mid = model(x, stop_at_layer=1)
    torch.testing.assert_close(model(mid, start_at_layer=1), logits, **FP32)
    torch.testing.assert_close(model(mid, start_at_layer=1, tokens=x, return_type="loss"), by_hand.mean(), **FP32)
    with pytest.raises(ValueError, match="return_type"):
        model(x, return_type="probs")


def test_opt_in_switches_cache_the_extra_points() -> None:
    model = HookedTransformer(tiny_cfg())
    x = random_tokens(2, 6)
    _, plain = model.run_with_cache(x)
    assert "blocks.0.attn.hook_result" not in plain
    model.set_use_attn_result(True)
    model.set_use_hook_mlp_in(True)
    _, cache = model.run_with_cache(x)
    heads = cache["blocks.0.attn.hook_result"]  # [batch, pos, head_index, d_model]
    torch.testing.assert_close(heads.sum(2) + model.blocks[0].attn.b_O, cache["blocks.0.hook_attn_out"], **FP32)
    assert "blocks.1.hook_mlp_in" in cache


@pytest.mark.parametrize("arch", ["gpt2", "llama", "neox", "gemma2"])
def test_from_pretrained_no_processing_equals_hf(arch: str) -> None:
    hf, model = hf_and_compat(arch)
    x = random_tokens(2, 7)
    with torch.no_grad():
        ref = hf(x).logits
        ours, _ = model.run_with_cache(x)
    torch.testing.assert_close(ours, ref, **FP32)
    assert torch.allclose(model(x), ours)
    assert isinstance(model, HookedTransformer) and model.cfg.n_layers == hf.config.num_hidden_layers
    assert model.cfg.normalization_type == ("LN" if arch in ("gpt2", "neox") else "RMS")
    assert model.cfg.positional_embedding_type == ("standard" if arch == "gpt2" else "rotary")
    assert model.W_E.shape == (model.cfg.d_vocab, model.cfg.d_model)


def test_official_names_and_aliases() -> None:
    assert get_official_model_name("gpt2-small") == "gpt2"
    assert get_official_model_name("pythia-70m") == "EleutherAI/pythia-70m"
    assert get_official_model_name("llama-3.2-1b") == "meta-llama/Llama-3.2-1B"
    assert get_official_model_name("tiny-stories-1M") == "roneneldan/TinyStories-1M"
    assert get_official_model_name("neo-small") == "EleutherAI/gpt-neo-125M"
    assert get_official_model_name("opt") == "facebook/opt-125m"
    assert get_official_model_name("gemma-2b") == "google/gemma-2b"
    assert get_official_model_name("gptj") == "EleutherAI/gpt-j-6B"
    assert get_official_model_name("phi-1_5") == "microsoft/phi-1_5"
    assert get_official_model_name("phi-2") == "microsoft/phi-2"
    with pytest.raises(ValueError, match="did you mean"):
        get_official_model_name("gpt2-smal")


def test_tokenization_defaults_are_transformerlens() -> None:
    _, model = hf_and_compat("llama")
    toks = model.to_tokens(["w1 w2 w3", "w4"])  # BOS prepended, right padding
    assert toks.tolist() == [[BOS, 5, 6, 7], [BOS, 8, PAD, PAD]]
    assert model.to_tokens("w1", prepend_bos=False).tolist() == [[5]]
    assert model.to_tokens(["w1 w2", "w4"], padding_side="left").tolist() == [[BOS, 5, 6], [PAD, BOS, 8]]
    assert model.to_str_tokens("w1 w2") == ["<s>", "w1", "w2"]
    assert model.to_str_tokens(torch.tensor([[5, 6]])) == ["w1", "w2"]
    assert model.to_str_tokens(["w1", "w2 w3"]) == [["<s>", "w1"], ["<s>", "w2", "w3"]]
    assert model.to_string(torch.tensor([5, 6])) == "w1 w2"
    assert model.to_single_token("w7") == 11 and model.to_single_str_token(11) == "w7"
    assert model.get_token_position("w2", "w1 w2 w2", mode="last") == 3
    with pytest.raises(AssertionError, match="does not occur"):
        model.get_token_position("w9", "w1 w2")
    assert model.tokens_to_residual_directions(model.to_tokens("")).shape == (model.cfg.d_model,)  # one token
    model.tokenizer.padding_side = "left"  # TL code sets the default side on the tokenizer
    assert model.to_tokens(["w1 w2", "w4"]).tolist() == [[BOS, 5, 6], [PAD, BOS, 8]]
    tokenizer_with_bos = word_tokenizer(adds_bos=True)  # a Llama-style tokenizer: still a single BOS
    model.set_tokenizer(tokenizer_with_bos)
    assert model.to_tokens("w1").tolist() == [[BOS, 5]]


def test_left_padded_text_equals_each_prompt_alone() -> None:
    _, model = hf_and_compat("llama")
    prompts = ["w1 w2 w3 w4", "w5 w6"]
    with torch.no_grad():
        batched = model(prompts, padding_side="left")
        alone = model(prompts[1])
    torch.testing.assert_close(batched[1, -3:], alone[0], **FP32)


def test_left_padded_tokens_with_bos_equal_to_pad_equal_each_prompt_alone() -> None:
    """GPT-2 style: BOS and PAD are one id, so the BOS after the padding must stay unmasked."""
    _, model = hf_and_compat("gpt2")
    model.tokenizer.pad_token = model.tokenizer.bos_token
    model.tokenizer.padding_side = "left"
    prompts = ["w1 w2 w3 w4", "w5 w6"]
    tokens = model.to_tokens(prompts)
    assert tokens[1, 2].item() == model.tokenizer.bos_token_id == model.tokenizer.pad_token_id
    with torch.no_grad():
        batched = model(tokens)
        alone = model(prompts[1])
    torch.testing.assert_close(batched[1, -3:], alone[0], **FP32)


def test_kv_cache_forward_equals_full_forward() -> None:
    _, model = hf_and_compat("gpt2")
    x = random_tokens(2, 9)
    with torch.no_grad():
        full = model(x)
        cache = HookedTransformerKeyValueCache.init_cache(model.cfg, model.cfg.device, batch_size=2)
        first = model(x[:, :5], past_kv_cache=cache)
        rest = [model(x[:, i:i + 1], past_kv_cache=cache) for i in range(5, 9)]
    torch.testing.assert_close(torch.cat([first, *rest], 1), full, **FP32)
    cache.freeze()
    with torch.no_grad():
        again = model(x[:, 8:9], past_kv_cache=cache)  # frozen: reads the cache, appends nothing
    assert cache.length == 9 and again.shape == (2, 1, model.cfg.d_vocab)


def test_generate_greedy_matches_an_argmax_loop() -> None:
    _, model = hf_and_compat("llama")
    prompt = model.to_tokens("w1 w2 w3")
    out = model.generate(prompt, max_new_tokens=4, do_sample=False, stop_at_eos=False, verbose=False)
    seq = prompt
    with torch.no_grad():
        for _ in range(4):
            seq = torch.cat([seq, model(seq)[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(out, seq)
    text = model.generate("w1 w2 w3", max_new_tokens=4, do_sample=False, stop_at_eos=False, verbose=False)
    assert isinstance(text, str) and text == model.to_string(seq[0])
    penalised = model.generate(prompt, max_new_tokens=40, do_sample=True, freq_penalty=1e4, stop_at_eos=False,
                               verbose=False, seed=0)
    assert len(set(penalised[0].tolist())) == penalised.shape[1]  # every token present is pushed down by 1e4
    greedy = model.generate(prompt, max_new_tokens=4, do_sample=False, freq_penalty=1e4, stop_at_eos=False,
                            verbose=False)
    assert torch.equal(greedy, seq)  # as TL: the penalty is part of sampling only


def test_weight_views() -> None:
    model = HookedTransformer(tiny_cfg())
    assert model.W_E_pos.shape == (101 + 32, 48)
    assert model.W_Q.shape == (2, 4, 48, 12) and model.W_U.shape == (48, 101)
    torch.testing.assert_close(model.tokens_to_residual_directions(torch.tensor([3, 4])), model.W_U[:, [3, 4]].T)
    assert model.all_head_labels()[:2] == ["L0H0", "L0H1"]


def test_hook_conventions_of_transformerlens() -> None:
    model = HookedTransformer(tiny_cfg())
    x = random_tokens(1, 5)
    with pytest.raises(AssertionError, match="set_use_attn_result"):
        model.add_hook("blocks.0.attn.hook_result", lambda t, hook: None)
    model.set_use_attn_result(True)
    model.add_hook("blocks.0.attn.hook_result", lambda t, hook: None)
    model.reset_hooks()
    seen = []

    def grad_as_tuple(grad: torch.Tensor, hook) -> tuple:
        seen.append(hook.name)
        return (2 * grad,)  # TL accepts a 1-tuple from a backward hook

    with model.hooks(bwd_hooks=[("blocks.0.hook_resid_post", grad_as_tuple)]):
        model(x).sum().backward()
    assert seen == ["blocks.0.hook_resid_post"]
    entry = model.hook_dict["hook_embed"]
    entry.add_hook(lambda t, hook: None, dir="fwd", is_permanent=True, level=5)
    assert entry.fwd_hooks[0].is_permanent and entry.fwd_hooks[0].context_level == 5
    model.remove_all_hook_fns(including_permanent=True)
    assert model.active_hooks() == {}


def test_stack_results_before_layer_zero_are_empty() -> None:
    model = HookedTransformer(tiny_cfg())
    _, cache = model.run_with_cache(random_tokens(2, 5))
    heads, labels = cache.stack_head_results(layer=0, pos_slice=-1, return_labels=True)
    assert heads.shape == (0, 2, 48) and labels == []
    rest, labels = cache.stack_head_results(layer=0, pos_slice=-1, incl_remainder=True, return_labels=True)
    torch.testing.assert_close(rest[0], cache["resid_pre", 0][:, -1])  # what block 0 reads
    assert labels == ["remainder"]
    assert cache.stack_neuron_results(layer=0).shape == (0, 2, 5, 48)


def test_generate_from_tokens_without_tokenizer_and_from_embeddings() -> None:
    model = HookedTransformer(tiny_cfg(attn_only=True))
    tokens = torch.zeros((1, 5), dtype=torch.long)  # id 0 everywhere: real tokens, not padding
    for kv in (True, False):
        out = model.generate(tokens, max_new_tokens=3, stop_at_eos=False, use_past_kv_cache=kv,
                             return_type="tokens", verbose=False)
        assert out.shape == (1, 8) and torch.equal(out[:, :5], tokens)
    with pytest.raises(AssertionError, match="eos_token_id"):  # TL's error type, which TL code catches
        model.generate(tokens, max_new_tokens=1, verbose=False)  # stop_at_eos needs an EOS id
    assert model.n_params_total == sum(p.numel() for p in model.parameters())
    greedy = model.generate(tokens, max_new_tokens=3, do_sample=False, stop_at_eos=False, verbose=False)
    embeds = model.embed(tokens)
    from_embeds = model.generate(embeds, max_new_tokens=3, do_sample=False, stop_at_eos=False,
                                 return_type="tokens", verbose=False)
    assert torch.equal(from_embeds, greedy[:, 5:])  # the same continuation from the embeddings
    out_embeds = model.generate(embeds, max_new_tokens=3, do_sample=False, stop_at_eos=False, verbose=False)
    torch.testing.assert_close(out_embeds, model.embed(greedy))
    torch.testing.assert_close(model(embeds), model(tokens), **FP32)  # float input = token embeddings


def test_shortformer_positions_feed_queries_and_keys_only() -> None:
    """A native config field: positions added to what q and k read, never to the residual stream."""
    model = HookedTransformer(tiny_cfg(positional_embedding_type="shortformer"))
    assert model.cfg.positional == "shortformer"
    x = random_tokens(2, 7)
    logits, cache = model.run_with_cache(x)
    torch.testing.assert_close(cache["resid_pre", 0], cache["hook_embed"])  # no positions in the residual
    attn = model.blocks[0].attn
    qk_in = cache["normalized", 0, "ln1"] + cache["hook_pos_embed"]
    torch.testing.assert_close(cache["q", 0], (qk_in @ attn.q_proj.weight.T + attn.q_proj.bias).view(2, 7, 4, 12),
                               **FP32)
    torch.testing.assert_close(cache["k", 0], (qk_in @ attn.k_proj.weight.T + attn.k_proj.bias).view(2, 7, 4, 12),
                               **FP32)
    v_in = cache["normalized", 0, "ln1"]
    torch.testing.assert_close(cache["v", 0], (v_in @ attn.v_proj.weight.T + attn.v_proj.bias).view(2, 7, 4, 12),
                               **FP32)
    torch.testing.assert_close(cache.decompose_resid().sum(0), cache["resid_post", -1], **FP32)
    kv = HookedTransformerKeyValueCache.init_cache(model.cfg, "cpu", batch_size=2)
    with torch.no_grad():
        steps = torch.cat([model(x[:, :4], past_kv_cache=kv), model(x[:, 4:], past_kv_cache=kv)], 1)
    torch.testing.assert_close(steps, logits.detach(), **FP32)
    tok_model = HookedTransformer(tiny_cfg(positional_embedding_type="shortformer"), tokenizer=word_tokenizer(),
                                  default_padding_side="left")
    embed, tokens, pos, mask = tok_model.input_to_embed(["w1 w2 w3", "w4"])
    assert pos is not None and mask.tolist() == [[1, 1, 1, 1], [0, 0, 1, 1]]
    from_embed = tok_model(embed, tokens=tokens, shortformer_pos_embed=pos, attention_mask=mask, start_at_layer=0,
                           return_type="loss")
    torch.testing.assert_close(from_embed, tok_model(["w1 w2 w3", "w4"], return_type="loss"))


def test_generate_returns_one_string_for_one_row_whatever_the_input() -> None:
    _, model = hf_and_compat("gpt2")
    tokens = model.to_tokens("w3 w4 w5")
    one = model.generate(tokens, max_new_tokens=3, do_sample=False, return_type="str", verbose=False)
    ids = model.generate(tokens, max_new_tokens=3, do_sample=False, return_type="tokens", verbose=False)
    assert isinstance(one, str) and one == model.to_string(ids[0])
    two = model.generate(torch.cat([tokens, tokens]), max_new_tokens=3, do_sample=False, return_type="str",
                         verbose=False)
    assert two == [one, one]
    from_embeds = model.generate(model.embed(tokens), max_new_tokens=3, do_sample=False, return_type="str",
                                 verbose=False)
    assert isinstance(from_embeds, str)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_generate_runs_the_lean_step_without_hooks_and_the_hooked_forward_with_them(family, monkeypatch) -> None:
    from hookscope.generation import lean

    steps: list[int] = []
    real = lean.LeanStep.__call__
    monkeypatch.setattr(lean.LeanStep, "__call__", lambda self, tokens, *a: steps.append(1) or real(self, tokens, *a))
    hf, model = hf_and_compat(family)
    prompt = random_tokens(2, 5, seed=3)
    out = model.generate(prompt, max_new_tokens=6, do_sample=False, stop_at_eos=False, verbose=False)
    with torch.no_grad():
        want = hf.generate(prompt, max_new_tokens=6, do_sample=False, eos_token_id=None)
    assert torch.equal(out, want) and len(steps) == 5  # every step after the prompt went through the lean step
    seen: list[int] = []
    model.add_hook("blocks.0.hook_resid_post", lambda t, hook: seen.append(t.shape[1]))
    hooked = model.generate(prompt, max_new_tokens=6, do_sample=False, stop_at_eos=False, verbose=False)
    assert torch.equal(hooked, want) and len(steps) == 5 and seen == [5] + [1] * 5


def test_a_subclass_of_the_compat_model_does_not_inherit_the_lean_step() -> None:
    from hookscope.generation import lean

    _, model = hf_and_compat("llama")
    assert lean.lean_step(model) is not None

    class Custom(HookedTransformer):  # its forward may compute something else
        pass

    model.__class__ = Custom
    assert lean.lean_step(model) is None


@pytest.mark.parametrize("name", ["gemma2", "gemma", "opt", "llama", "phi_qk_layernorm_gqa", "gptj"])
def test_model_rebuilt_from_a_pretrained_cfg_is_the_same_model(name: str) -> None:
    """``HookedTransformer(model.cfg)`` + the state dict: the same parameters and logits, Gemma's (1 + w) norms
    and OPT's offset position table included (TL's fields alone cannot say them)."""
    from tests.equivalence.decoder_configs import random_hf_model, random_tokens

    model = HookedTransformer.from_pretrained_no_processing(
        "gpt2", hf_model=random_hf_model(name), tokenizer=word_tokenizer(), device="cpu"
    )  # a tokenizer given: nothing is looked up on the hub
    rebuilt = HookedTransformer(model.cfg, tokenizer=model.tokenizer)  # else cfg.tokenizer_name is fetched
    rebuilt.load_state_dict(model.state_dict(), strict=True)
    tokens = random_tokens(2, 7)
    torch.testing.assert_close(rebuilt(tokens), model(tokens), rtol=0, atol=0)
    model.cfg.n_layers = 1  # a TL field changed afterwards still counts
    cut = HookedTransformer(model.cfg, tokenizer=model.tokenizer)
    assert cut.cfg.n_layers == 1 and len(cut.blocks) == 1
