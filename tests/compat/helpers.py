"""Offline models and tokenizers for the compat tests: random HF models, a word-level tokenizer over their vocab."""

from __future__ import annotations

import torch
import transformers as T
from tokenizers import Tokenizer, models, pre_tokenizers, processors

from tests.equivalence.decoder_configs import VOCAB, random_hf_model

SPECIAL = ["<unk>", "<s>", "</s>", "<pad>"]
WORDS = [*SPECIAL, *(f"w{i}" for i in range(VOCAB - len(SPECIAL)))]  # ids 0..VOCAB-1
UNK, BOS, EOS, PAD = 0, 1, 2, 3


def word_tokenizer(adds_bos: bool = False, pad: bool = True) -> T.PreTrainedTokenizerFast:
    """Whitespace-split words ``w0 w1 ...``; ``adds_bos``: the tokenizer itself puts ``<s>`` first (Llama-style)."""
    tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    if adds_bos:
        tk.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", BOS)])
    extra = {"pad_token": "<pad>"} if pad else {}
    return T.PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                     **extra)


def hf_and_compat(arch: str, dtype: torch.dtype = torch.float32, processing: bool = False, **kwargs):
    """(HF reference, compat HookedTransformer) of one random model, offline via ``hf_model=`` and a tokenizer."""
    from hookscope.compat import HookedTransformer

    hf = random_hf_model(arch, dtype)
    load = HookedTransformer.from_pretrained if processing else HookedTransformer.from_pretrained_no_processing
    name = {"gpt2": "gpt2", "llama": "Llama-3.2-1B", "neox": "pythia-70m", "gemma2": "gemma-2-2b",
            "qwen2": "qwen2-0.5b", "mistral": "mistral-7b"}[arch]
    model = load(name, hf_model=hf, tokenizer=word_tokenizer(), dtype=dtype, device="cpu", **kwargs)
    return hf, model
