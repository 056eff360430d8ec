"""wrap(): the lens on a wrapped model with a text prompt and no decoder= given,
its last row equal to the HF model's own output (including Gemma 2's final logit soft-cap), and the
tokenizer helpers the lens calls (``to_str_tokens``, ``to_single_token``)."""

from __future__ import annotations

import pytest
import torch
import transformers as T
from tokenizers import Tokenizer, models, pre_tokenizers

import hookscope
from tests.bridge.models import decoder, tokens

WORDS = ["[UNK]", "[PAD]", "the", "capital", "of", "france", "is", "paris", "rome"]


def word_tokenizer(vocab_size: int) -> T.PreTrainedTokenizerFast:
    """An offline whitespace tokenizer over :data:`WORDS` (ids 0..8), padded up to ``vocab_size`` ids."""
    vocab = {w: i for i, w in enumerate(WORDS)}
    vocab.update({f"w{i}": i for i in range(len(WORDS), vocab_size)})
    tk = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    return T.PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="[UNK]", pad_token="[PAD]")


@pytest.mark.parametrize("layout", ["gpt2", "llama", "gemma2"])
def test_lens_on_a_wrapped_model_needs_no_decoder_and_ends_at_the_output(layout: str) -> None:
    hf = decoder(layout)
    wrapped = hookscope.wrap(hf)
    ids = tokens(1, 6)
    result = hookscope.logit_lens(wrapped, ids, target=7)
    with torch.no_grad():
        logits = hf(ids).logits[0]  # gemma2: after its final soft-cap
    assert len(result.row_labels) == hf.config.num_hidden_layers + 1
    torch.testing.assert_close(
        result.top_probs[-1, :, 0], logits.softmax(-1).max(-1).values, atol=1e-5, rtol=1e-5
    )
    assert torch.equal(result.target_rank[-1], (logits > logits[:, 7:8]).sum(-1))


def test_lens_reads_a_text_prompt_through_the_wrapped_tokenizer() -> None:
    hf = decoder("llama")
    wrapped = hookscope.wrap(hf, tokenizer=word_tokenizer(hf.config.vocab_size))
    result = hookscope.logit_lens(wrapped, "the capital of france is", target="paris")
    assert result.str_tokens == ["the", "capital", "of", "france", "is"]
    assert result.target_id == WORDS.index("paris")
    assert wrapped.to_str_tokens(torch.tensor([[2, 3]])) == ["the", "capital"]
    with pytest.raises(ValueError, match="not a single token"):
        wrapped.to_single_token("paris rome")


def test_lens_on_an_unmapped_module_asks_for_a_decoder() -> None:
    net = torch.nn.Sequential(torch.nn.Embedding(11, 8), torch.nn.Linear(8, 11))
    with pytest.raises(ValueError, match="pass decoder="):
        hookscope.logit_lens(hookscope.wrap(net), torch.tensor([[1, 2, 3]]), names=["0", "1"])


def test_backward_hook_fires_when_the_output_is_modified_in_place() -> None:
    class InPlace(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.mlp = torch.nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = self.mlp(x)
            out += x  # as Falcon's parallel block adds the attention output in place
            return out

    wrapped = hookscope.wrap(InPlace())
    grads: list[torch.Tensor] = []
    wrapped.add_hook("mlp", lambda g, hook: grads.append(g), dir="bwd")
    wrapped(torch.randn(2, 4)).sum().backward()
    wrapped.reset_hooks()
    assert len(grads) == 1
