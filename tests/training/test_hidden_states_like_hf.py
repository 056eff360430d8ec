"""``output_hidden_states=True`` on the native decoder returns HF's hidden states (each block's input, then the
final norm's output), with their autograd graph, also under activation checkpointing."""

from __future__ import annotations

import pytest
import torch
import transformers

import hookscope


def _hf(kind: str) -> transformers.PreTrainedModel:
    torch.manual_seed(0)
    if kind == "gpt2":
        cfg = transformers.GPT2Config(n_embd=24, n_head=3, n_layer=3, vocab_size=53, n_positions=32)
        model = transformers.GPT2LMHeadModel(cfg)
    else:
        cfg = transformers.LlamaConfig(hidden_size=24, intermediate_size=40, num_hidden_layers=3,
                                       num_attention_heads=3, num_key_value_heads=1, vocab_size=53)
        model = transformers.LlamaForCausalLM(cfg)
    with torch.no_grad():  # re-drawn parameters: norms and biases away from their 1 / 0 start
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.2 + (1.0 if p.ndim == 1 else 0.0))
    return model.double().eval()


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_hidden_states_equal_hf_and_carry_gradients(kind: str) -> None:
    hf = _hf(kind)
    model = hookscope.load(hf, dtype=torch.float64, progress=False)
    tokens = torch.tensor([[5, 7, 11, 3, 2, 40], [1, 9, 9, 52, 0, 8]])
    want = hf(tokens, output_hidden_states=True).hidden_states
    out = model(input_ids=tokens, output_hidden_states=True)
    assert len(out.hidden_states) == len(want) == 4
    _, cache = model.run_with_cache(tokens)
    mine = [cache[f"blocks.{i}.hook_resid_pre"] for i in range(3)] + [cache["ln_final.hook_normalized"]]
    # HF's Llama rounds its softmax to float32 even in float64, hence 1e-6 against HF; exact against the cache
    for i, (ours, theirs, cached) in enumerate(zip(out.hidden_states, want, mine, strict=True)):
        torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=0, msg=f"hidden state {i}")
        torch.testing.assert_close(ours, cached, atol=0, rtol=0, msg=f"hidden state {i} vs the cache")
    torch.testing.assert_close(out.logits, hf(tokens).logits, atol=1e-6, rtol=0)
    out.hidden_states[1].pow(2).sum().backward()  # a loss on a hidden state reaches the weights below it
    assert model.blocks[0].attn.q_proj.weight.grad is not None
    assert model.blocks[2].attn.q_proj.weight.grad is None


def test_hidden_states_once_per_layer_under_activation_checkpointing() -> None:
    model = hookscope.load(_hf("llama"), dtype=torch.float64, progress=False).train()
    tokens = torch.tensor([[5, 7, 11, 3, 2, 40]])
    plain = model(input_ids=tokens, labels=tokens, output_hidden_states=True)
    model.activation_checkpointing_enable()
    checkpointed = model(input_ids=tokens, labels=tokens, output_hidden_states=True)
    checkpointed.loss.backward()
    assert len(checkpointed.hidden_states) == 4
    for a, b in zip(plain.hidden_states, checkpointed.hidden_states, strict=True):
        torch.testing.assert_close(a, b, atol=0, rtol=0)
    torch.testing.assert_close(plain.loss, checkpointed.loss, atol=0, rtol=0)


def test_hidden_states_refuse_a_partial_forward() -> None:
    model = hookscope.load(_hf("gpt2"), progress=False)
    with pytest.raises(ValueError, match="output_hidden_states"):
        model(torch.tensor([[1, 2, 3]]), stop_at_layer=1, output_hidden_states=True)
