"""Text in and text out on every family that takes a tokenizer: decoder, BERT, T5, Whisper and wrap().

Each model gets a small word-level tokenizer built offline; the text path must give exactly what the
token-id path gives for the ids the tokenizer produces (so a text helper that is shadowed, skipped or
mis-padded fails here).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers as T
from tokenizers import Tokenizer, models, pre_tokenizers, processors

import hookscope
from hookscope.audio import log_mel

SPECIAL = ["<pad>", "</s>", "<unk>", "<s>", "[CLS]", "[SEP]", "[MASK]"]
WORDS = ["the", "cat", "sat", "on", "mat", "a", "dog", "ran", "translate", "to", "German:"]
VOCAB = SPECIAL + WORDS + [f"w{i}" for i in range(101 - len(SPECIAL) - len(WORDS))]
ID = {w: i for i, w in enumerate(VOCAB)}


def _word_tokenizer(template: str | None, vocab: list[str] = VOCAB, **special: str) -> T.PreTrainedTokenizerFast:
    """A whitespace word-level tokenizer; ``template`` (e.g. ``"$A </s>"``) adds special tokens around text."""
    ids = {w: i for i, w in enumerate(vocab)}
    tk = Tokenizer(models.WordLevel(ids, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    if template is not None:
        used = [t for t in template.split() if t in ids]
        tk.post_processor = processors.TemplateProcessing(single=template, special_tokens=[(t, ids[t]) for t in used])
    return T.PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", **special)


@pytest.fixture(scope="module")
def decoder() -> hookscope.Decoder:
    torch.manual_seed(0)
    hf = T.LlamaForCausalLM(T.LlamaConfig(vocab_size=len(VOCAB), hidden_size=24, intermediate_size=20,
                                          num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2))
    model = hookscope.load(hf.eval())
    model.tokenizer = _word_tokenizer("<s> $A", bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    return model


def test_decoder_text_forward_equals_token_forward(decoder: hookscope.Decoder) -> None:
    tokens = decoder.to_tokens("the cat sat")
    assert tokens[0].tolist() == [ID["<s>"], ID["the"], ID["cat"], ID["sat"]]
    assert decoder.to_str_tokens("the cat sat") == ["<s>", "the", "cat", "sat"]
    with torch.no_grad():
        assert torch.equal(decoder("the cat sat"), decoder(tokens))


def test_decoder_text_generation_decodes_the_token_generation(decoder: hookscope.Decoder) -> None:
    ids = decoder.generate("the cat", 4)
    text = decoder.generate("the cat", 4, return_type="str")
    assert isinstance(text, str)
    assert text == decoder.tokenizer.decode(ids[0].tolist(), skip_special_tokens=True)


def _t5() -> hookscope.T5:
    torch.manual_seed(0)
    cfg = T.T5Config(vocab_size=len(VOCAB), d_model=16, d_kv=4, d_ff=24, num_layers=2, num_decoder_layers=1,
                     num_heads=3, relative_attention_num_buckets=8, dropout_rate=0.0, decoder_start_token_id=0,
                     pad_token_id=0, eos_token_id=ID["</s>"])
    model = hookscope.load(T.T5ForConditionalGeneration._from_config(cfg).eval())
    # T5's tokenizer appends </s> and adds no BOS; padding is id 0
    model.tokenizer = _word_tokenizer("$A </s>", eos_token="</s>", pad_token="<pad>")
    return model


def test_t5_takes_text_in_every_entry_point() -> None:
    model = _t5()
    tokens = model.to_tokens("translate the cat to German:")
    assert tokens[0].tolist() == [ID[w] for w in "translate the cat to German:".split()] + [ID["</s>"]]
    assert model.to_str_tokens("the cat")[-1] == "</s>"
    with torch.no_grad():
        assert torch.equal(model("the cat sat"), model(model.to_tokens("the cat sat")))
        assert torch.equal(model.encode("the cat sat"), model.encode(model.to_tokens("the cat sat")))
        # several strings are right-padded with a mask: each row equals its own unpadded run
        batch = model(["the cat sat on the mat", "a dog"])
        alone = model("a dog")
    assert torch.allclose(batch[1], alone[0], atol=1e-5, rtol=1e-5)
    out = model.generate("the cat sat", 5)
    assert torch.equal(out, model.generate(model.to_tokens("the cat sat"), 5))
    assert isinstance(model.to_string(out[0]), str)


def test_bert_text_forward_equals_token_forward() -> None:
    torch.manual_seed(0)
    cfg = T.BertConfig(vocab_size=len(VOCAB), hidden_size=24, num_hidden_layers=2, num_attention_heads=4,
                       intermediate_size=20, max_position_embeddings=16, pad_token_id=0)
    model = hookscope.load(T.BertForMaskedLM(cfg).eval())
    model.tokenizer = _word_tokenizer("[CLS] $A [SEP]", cls_token="[CLS]", sep_token="[SEP]",
                                      mask_token="[MASK]", pad_token="<pad>")
    ids = torch.tensor([[ID[w] for w in "[CLS] the cat sat [SEP]".split()]])
    with torch.no_grad():
        assert torch.equal(model("the cat sat"), model(ids))
    predictions = model.predict_masked("the [MASK] sat", top_k=3)
    assert len(predictions) == 3
    assert all(isinstance(p[0], str) for p in predictions)


def test_whisper_transcribe_returns_the_decoded_generation() -> None:
    torch.manual_seed(0)
    vocab = [*VOCAB[:-3], "<|endoftext|>", "<|startoftranscript|>", "<|notimestamps|>"]
    eos, start, no_ts = len(vocab) - 3, len(vocab) - 2, len(vocab) - 1
    cfg = T.WhisperConfig(vocab_size=len(vocab), num_mel_bins=80, d_model=16, encoder_layers=1, decoder_layers=1,
                          encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=20,
                          decoder_ffn_dim=20, max_source_positions=1500, max_target_positions=12,
                          decoder_start_token_id=start, eos_token_id=eos, pad_token_id=eos, bos_token_id=eos,
                          suppress_tokens=[], begin_suppress_tokens=[])
    model = hookscope.load(T.WhisperForConditionalGeneration(cfg).eval())
    tok = _word_tokenizer(None, vocab, eos_token="<|endoftext|>")
    tok.add_special_tokens({"additional_special_tokens": ["<|startoftranscript|>", "<|notimestamps|>"]})
    model.tokenizer = tok
    wave = np.random.default_rng(0).standard_normal(16000).astype(np.float32) * 0.1
    text = model.transcribe(wave, sample_rate=16000, max_new_tokens=6)
    features = log_mel(wave)[None]
    ids = model.generate(features, 6, prompt=[start, no_ts])
    assert text == tok.decode(ids[0, 2:].tolist(), skip_special_tokens=True).strip()


def test_wrapped_model_text_helpers_follow_its_tokenizer() -> None:
    torch.manual_seed(0)
    hf = T.GPT2LMHeadModel(T.GPT2Config(vocab_size=len(VOCAB), n_embd=24, n_layer=1, n_head=4, n_positions=16))
    tok = _word_tokenizer(None, eos_token="</s>", pad_token="<pad>")
    wrapped = hookscope.wrap(hf.eval(), tokenizer=tok)
    tokens = wrapped.to_tokens("the cat sat")
    assert tokens[0].tolist() == [ID["the"], ID["cat"], ID["sat"]]
    assert wrapped.to_str_tokens("the cat sat") == ["the", "cat", "sat"]
    assert wrapped.to_single_token("dog") == ID["dog"]
    with torch.no_grad():
        _, cache = wrapped.run_with_cache(tokens)
    assert cache["blocks.0.hook_resid_post"].shape == (1, 3, 24)
