"""wrap() equals the native models on configurations the generic wrap tests do not cover (each was a bug):

- GPT-2, BERT, T5 and Whisper take their eager softmax in the activations' dtype: the hooked attention
  took it in float32 (Llama's way), so float64 patterns were off by ~1e-7.
- Canonical names meant something else than the native model's: Qwen3/OLMo 2 ``hook_q``/``hook_k`` were
  after the q/k-norm, Whisper's ``hook_q`` was pre-scaled and its decoder ``ln2`` was the MLP norm,
  BERT's ``hook_resid_post`` was after the post-LN (TransformerLens: before it).
- Wrapping a model twice silently disconnected the first wrapper's attention hooks.
- Per-step caches of a sliding-window model (Mistral, Gemma 2) concatenated keys at wrong positions.
"""

from __future__ import annotations

import pytest
import torch
import transformers as T

import hookscope
from hookscope.bridge import concat_steps, wrap
from tests.bridge import models as M
from tests.helpers import TOLERANCES, first_divergence, redraw_parameters


def _assert_caches_equal(wrapped_cache, native_cache, names: list[str]) -> None:
    pairs = [(n, wrapped_cache[n], native_cache[n]) for n in names]
    problem = first_divergence(pairs, *TOLERANCES[torch.float32])
    assert problem is None, problem


@pytest.mark.parametrize("family", ["gpt2", "bert"])
def test_float64_patterns_equal_hf_softmax_in_activation_dtype(family: str) -> None:
    hf = (M.decoder("gpt2") if family == "gpt2" else M.bert()).double()
    ids = M.tokens()
    with torch.no_grad():
        ref = hf(ids, output_hidden_states=True, output_attentions=True)
        _, cache = wrap(hf).run_with_cache(ids, names_filter=lambda n: n.endswith("hook_pattern"))
    pairs = [(f"blocks.{i}.attn.hook_pattern", cache[f"blocks.{i}.attn.hook_pattern"], a)
             for i, a in enumerate(ref.attentions)]
    problem = first_divergence(pairs, *TOLERANCES[torch.float64])
    assert problem is None, problem


def _qwen3_tokens() -> tuple[torch.nn.Module, torch.Tensor]:
    cfg = T.Qwen3Config(hidden_size=48, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                        head_dim=12, intermediate_size=37, vocab_size=101, pad_token_id=0)
    torch.manual_seed(0)
    hf = T.AutoModelForCausalLM.from_config(cfg, attn_implementation="eager")
    return redraw_parameters(hf).eval(), M.tokens()


def test_qwen3_wrapped_cache_equals_native_including_q_k_and_their_norms() -> None:
    hf, ids = _qwen3_tokens()
    native, wrapped = hookscope.load(hf), wrap(hf)
    names = [n for n in wrapped.hook_dict if n in native.hook_dict]
    assert {"blocks.1.attn.hook_q", "blocks.1.attn.q_norm.hook_normalized", "blocks.1.attn.hook_rot_k"} <= set(names)
    with torch.no_grad():
        _, ours = wrapped.run_with_cache(ids, names_filter=names)
        _, theirs = native.run_with_cache(ids, names_filter=names)
    _assert_caches_equal(ours, theirs, names)


def test_olmo2_hook_q_is_the_projection_and_q_norm_is_mapped_per_head() -> None:
    hf = M.decoder("olmo2")
    ids = M.tokens()
    attn = hf.model.layers[1].self_attn
    with torch.no_grad():
        _, cache = wrap(hf).run_with_cache(ids, names_filter=lambda n: n.startswith("blocks.1.attn."))
        x = cache["blocks.1.attn.hook_q"].flatten(2)  # [batch, pos, heads * d_head]
        torch.testing.assert_close(cache["blocks.1.attn.q_norm.hook_normalized"],
                                   attn.q_norm(x).unflatten(-1, (M.HEADS, M.D_HEAD)))
    assert cache["blocks.1.attn.hook_k"].shape == (M.BATCH, M.POS, M.KV, M.D_HEAD)


def test_bert_resid_post_is_before_the_post_ln_as_in_the_native_model() -> None:
    hf = M.bert()
    ids = M.tokens()
    mask = torch.ones_like(ids)
    mask[1, -3:] = 0
    native, wrapped = hookscope.load(hf), wrap(hf)
    names = [n for n in wrapped.hook_dict if n in native.hook_dict]
    assert "blocks.0.hook_normalized_resid_post" in names
    with torch.no_grad():
        _, ours = wrapped.run_with_cache(ids, attention_mask=mask, names_filter=names)
        _, theirs = native.run_with_cache(ids, attention_mask=mask, return_type="hidden", names_filter=names)
        ref = hf(ids, attention_mask=mask, output_hidden_states=True).hidden_states
    _assert_caches_equal(ours, theirs, names)
    torch.testing.assert_close(ours["blocks.1.hook_normalized_resid_post"], ref[2], atol=1e-5, rtol=1e-5)
    # an edit of the (pre-LN) residual is a full edit: the next block reads LayerNorm(edited residual)
    shift = torch.randn(M.D, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        with wrapped.hooks([("blocks.0.hook_resid_post", lambda t, hook: t + shift)]):
            _, edited = wrapped.run_with_cache(ids, attention_mask=mask, names_filter=["blocks.1.hook_resid_pre"])
        expected = hf.encoder.layer[0].output.LayerNorm(ours["blocks.0.hook_resid_post"] + shift)
    torch.testing.assert_close(edited["blocks.1.hook_resid_pre"], expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(expected, ours["blocks.1.hook_resid_pre"], atol=1e-3)


@pytest.mark.parametrize("family", ["t5", "whisper"])
def test_encoder_decoder_wrapped_cache_equals_native(family: str) -> None:
    hf = M.t5() if family == "t5" else M.whisper()
    dec = M.tokens(2, 4, seed=5)
    if family == "t5":
        inputs = {"input_ids": M.tokens(2, 6), "decoder_input_ids": dec}
        native_inputs = {"input": inputs["input_ids"], "decoder_input_ids": dec}
    else:
        inputs = {"input_features": torch.randn(2, 8, 12, generator=torch.Generator().manual_seed(0)),
                  "decoder_input_ids": dec}
        native_inputs = inputs
    native, wrapped = hookscope.load(hf), wrap(hf)
    names = [n for n in wrapped.hook_dict if n in native.hook_dict]
    assert {"decoder.1.ln2.hook_normalized", "decoder.1.ln3.hook_normalized", "encoder.1.ln2.hook_normalized",
            "decoder.1.attn.hook_q", "decoder.1.cross_attn.hook_q"} <= set(names)
    with torch.no_grad():
        _, ours = wrapped.run_with_cache(**inputs, names_filter=names)
        _, theirs = native.run_with_cache(**native_inputs, names_filter=names)
    _assert_caches_equal(ours, theirs, names)


def test_whisper_decoder_with_other_head_count_than_encoder() -> None:
    cfg = T.WhisperConfig(d_model=48, encoder_layers=1, decoder_layers=1, encoder_attention_heads=4,
                          decoder_attention_heads=3, encoder_ffn_dim=37, decoder_ffn_dim=37, vocab_size=101,
                          num_mel_bins=8, max_source_positions=6, max_target_positions=32, pad_token_id=0,
                          bos_token_id=1, eos_token_id=2, decoder_start_token_id=1)
    cfg._attn_implementation = "eager"
    hf = redraw_parameters(T.WhisperForConditionalGeneration(cfg)).eval()
    feats, dec = torch.randn(2, 8, 12), M.tokens(2, 4)
    with torch.no_grad():
        _, cache = wrap(hf).run_with_cache(input_features=feats, decoder_input_ids=dec,
                                           names_filter=lambda n: n.endswith("attn.hook_q"))
    assert cache["encoder.0.attn.hook_q"].shape == (2, 6, 4, 12)
    assert cache["decoder.0.attn.hook_q"].shape == cache["decoder.0.cross_attn.hook_q"].shape == (2, 4, 3, 16)


def test_a_model_wrapped_twice_keeps_both_wrappers_attention_hooks() -> None:
    hf = M.decoder("llama")
    ids = M.tokens()
    first, second = wrap(hf), wrap(hf)
    with torch.no_grad():
        _, a = first.run_with_cache(ids, names_filter="blocks.0.attn.hook_pattern")
        _, b = second.run_with_cache(ids, names_filter="blocks.0.attn.hook_pattern")
        ref = hf(ids, output_attentions=True).attentions[0]
    torch.testing.assert_close(a["blocks.0.attn.hook_pattern"], ref)
    torch.testing.assert_close(b["blocks.0.attn.hook_pattern"], ref)


@pytest.mark.parametrize("layout,attn", [("mistral", "sdpa"), ("gemma2", "eager")])
def test_sliding_window_per_step_patterns_concatenate_to_the_full_forward(layout: str, attn: str) -> None:
    hf = M.decoder(layout, attn=attn)  # sliding window 4 < 6 prompt tokens + 3 generated
    wrapped = wrap(hf)
    names = [f"blocks.{i}.attn.hook_pattern" for i in range(M.LAYERS)] + ["blocks.1.hook_resid_post"]
    with torch.no_grad():
        out, steps = wrapped.generate(M.tokens(2, 6), max_new_tokens=4, min_new_tokens=4, do_sample=False,
                                      names_filter=names)
        assert steps[1]["blocks.0.attn.hook_pattern"].shape[-1] < 7  # the cache kept only the window
        merged = concat_steps(steps)
        _, full = wrapped.run_with_cache(out[:, :-1], names_filter=names)
    _assert_caches_equal(merged, full, names)


def test_two_wrappers_hooking_attention_in_interleaved_order_restore_the_implementation() -> None:
    hf = M.decoder("llama", attn="sdpa")
    ids = M.tokens()
    first, second = wrap(hf), wrap(hf)
    seen: list[str] = []

    def record(t: torch.Tensor, hook) -> None:
        seen.append(hook.name)

    with torch.no_grad():
        first.add_hook("blocks.0.attn.hook_pattern", record)
        second.add_hook("blocks.1.attn.hook_pattern", record)
        first.reset_hooks()  # the first lets go while the second still listens
        second(ids)
        second.reset_hooks()
    assert seen == ["blocks.1.attn.hook_pattern"]
    assert hf.config._attn_implementation == "sdpa"
