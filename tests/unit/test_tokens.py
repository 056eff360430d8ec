"""BOS handling of the tokenizer helpers: as the model's own HF tokenizer adds it, prepend_bos= overrides,
and never a silent double BOS (offline word-level tokenizers, with and without a BOS template)."""

from __future__ import annotations

import pytest
import torch
import transformers as T
from tokenizers import Tokenizer, models, pre_tokenizers, processors

import hookscope

WORDS = ["<unk>", "<s>", "</s>", "the", "cat", "sat"]
BOS, THE, CAT, SAT = 1, 3, 4, 5


def _tokenizer(adds_bos: bool) -> T.PreTrainedTokenizerFast:
    tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    if adds_bos:  # Llama-style: the tokenizer itself puts BOS first
        tk.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", BOS)])
    return T.PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


@pytest.fixture(scope="module")
def model() -> hookscope.Decoder:
    torch.manual_seed(0)
    hf = T.LlamaForCausalLM(T.LlamaConfig(vocab_size=len(WORDS), hidden_size=16, intermediate_size=24,
                                          num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1))
    return hookscope.load(hf.eval())


@pytest.mark.parametrize("adds_bos", [True, False])
def test_default_follows_the_tokenizer_and_prepend_bos_overrides(model: hookscope.Decoder, adds_bos: bool) -> None:
    model.tokenizer = _tokenizer(adds_bos)
    plain = [THE, CAT, SAT]
    default = model.to_tokens("the cat sat")[0].tolist()
    assert default == ([BOS, *plain] if adds_bos else plain)  # exactly what the HF tokenizer gives
    assert default == model.tokenizer("the cat sat")["input_ids"]
    assert model.to_tokens("the cat sat", prepend_bos=True)[0].tolist() == [BOS, *plain]
    assert model.to_tokens("the cat sat", prepend_bos=False)[0].tolist() == plain
    assert model.to_str_tokens("the cat sat", prepend_bos=True) == ["<s>", "the", "cat", "sat"]


@pytest.mark.parametrize("adds_bos", [True, False])
def test_text_that_brings_its_own_bos_gets_a_single_one(model: hookscope.Decoder, adds_bos: bool) -> None:
    model.tokenizer = _tokenizer(adds_bos)
    for prepend_bos in (None, True):
        assert model.to_tokens("<s> the cat", prepend_bos=prepend_bos)[0].tolist() == [BOS, THE, CAT]
    # prepend_bos=False removes only a BOS the tokenizer added, never one the user typed
    assert model.to_tokens("<s> the cat", prepend_bos=False)[0].tolist() == [BOS, THE, CAT]


def test_batched_text_is_left_padded_with_a_mask(model: hookscope.Decoder) -> None:
    model.tokenizer = _tokenizer(True)
    tokens, mask = model.to_tokens(["the cat sat", "cat"], return_mask=True)
    assert tokens[1, -2:].tolist() == [BOS, CAT] and mask.tolist() == [[1, 1, 1, 1], [0, 0, 1, 1]]
    with torch.no_grad():
        batched = model(["the cat sat", "cat"])
        alone = model("cat")
    torch.testing.assert_close(batched[1, -1], alone[0, -1], atol=1e-5, rtol=1e-5)
