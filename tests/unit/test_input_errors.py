"""Bad inputs to the BERT, T5, ViT and Whisper forwards, generate() and names filters: clear errors that say
what was expected and what was given, instead of failures deep inside torch (or silently wrong results)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import hookscope
from tests.equivalence import bert_configs, t5_cases, vit_cases, whisper_cases
from tests.equivalence.decoder_configs import random_hf_model, random_tokens

META = "meta"  # a device no CPU model lives on: stands in for "another device than the model"


@pytest.fixture(scope="module")
def bert() -> torch.nn.Module:
    return hookscope.load(bert_configs.random_hf_model("BertForPreTraining"))


@pytest.fixture(scope="module")
def t5() -> torch.nn.Module:
    return hookscope.load(t5_cases.random_hf_t5("v1.1"))


@pytest.fixture(scope="module")
def vit() -> torch.nn.Module:
    return hookscope.load(vit_cases.make_hf("vit_cls"))


@pytest.fixture(scope="module")
def whisper() -> torch.nn.Module:
    return hookscope.load(whisper_cases.random_hf_whisper())


def test_bert_ids_positions_and_devices(bert) -> None:
    tokens, mask, types = bert_configs.inputs(0)
    with pytest.raises(TypeError, match=r"tokens must be integer ids, got torch\.bool"):
        bert(tokens > 3)  # was a RuntimeError from F.embedding
    with pytest.raises(TypeError, match=r"token_type_ids must be integer ids, got torch\.float32"):
        bert(tokens, mask, types.float())  # was "tensors used as indices must be long..."
    with pytest.raises(ValueError, match=r"position_ids has shape \(2, 3\) but the tokens have shape \(5, 7\)"):
        bert(tokens, position_ids=torch.zeros(2, 3, dtype=torch.long))  # was a broadcasting RuntimeError
    with pytest.raises(TypeError, match="position_ids must be integer ids"):
        bert(tokens, position_ids=torch.zeros(tokens.shape))
    with pytest.raises(ValueError, match="tokens are on meta but the model is on cpu"):
        bert(tokens.to(META))  # was "Tensor.item() cannot be called on meta tensors"
    with pytest.raises(ValueError, match="attention_mask is on meta but the tokens are on cpu"):
        bert(tokens, mask.to(META))
    with pytest.raises(TypeError, match=r"text input must be .*got int \(token ids go in as a tensor"):
        bert(5)  # was "this model has no tokenizer"
    # valid forms still work: positions [pos] shared by every row, 1-D tokens with a 1-D mask
    pos = torch.arange(tokens.shape[1])
    with torch.no_grad():
        torch.testing.assert_close(bert(tokens, position_ids=pos), bert(tokens), atol=0, rtol=0)
        assert bert(tokens[0], mask[0]).shape == (1, 7, bert_configs.VOCAB)


def test_t5_ids_masks_and_batches(t5) -> None:
    ids, mask, dec, dec_mask = t5_cases.inputs(0)
    with pytest.raises(TypeError, match=r"input must be integer token ids, got torch\.float32"):
        t5(ids.float(), dec)  # was an IndexError from the embedding
    with pytest.raises(TypeError, match=r"decoder_input_ids must be integer token ids"):
        t5(ids, dec.float())
    with pytest.raises(ValueError, match=r"input must be \[batch, pos\] or \[pos\], got shape \(1, 5, 9\)"):
        t5(ids[None], dec)  # was an einsum RuntimeError
    with pytest.raises(ValueError, match=r"decoder_input_ids have 2 rows but the encoder input has 5"):
        t5(ids, dec[:2])
    with pytest.raises(ValueError, match=r"attention_mask has shape \(5, 3\) but the input ids have shape \(5, 9\)"):
        t5(ids, dec, mask[:, :3])
    with pytest.raises(ValueError, match=r"decoder_attention_mask has shape \(5, 3\)"):
        t5(ids, dec, mask, dec_mask[:, :3])  # was silently accepted
    with pytest.raises(ValueError, match="return_type must be 'logits' or None, got 'loss'"):
        t5(ids, dec, return_type="loss")  # was silently ignored (logits returned)
    with pytest.raises(ValueError, match=r"encoder_output must be \[batch, enc_pos, 48\].*\(5, 9, 3\)"):
        t5(None, dec, encoder_output=torch.randn(5, 9, 3))
    with pytest.raises(TypeError, match=r"encoder_output is torch\.float64 but the model is torch\.float32"):
        t5(None, dec, encoder_output=torch.randn(5, 9, 48, dtype=torch.float64))
    with pytest.raises(ValueError, match="input is on meta but the model is on cpu"):
        t5.encode(ids.to(META))
    with pytest.raises(TypeError, match="input must be integer token ids"):
        t5.generate(ids.float(), max_new_tokens=2)
    with torch.no_grad():  # one decoder row for every encoder row is still broadcast, as HF does
        assert t5(ids, dec[:1], mask).shape == (5, 6, 101)


def test_vit_pixels_and_residual(vit) -> None:
    pixels = vit_cases.pixels_for(torch.float32)
    with pytest.raises(ValueError, match=r"pixel_values must be \[batch, 3, height, width\], got shape \(35, 35\)"):
        vit(pixels[0, 0])  # was "not enough values to unpack"
    with pytest.raises(ValueError, match=r"got shape \(1, 2, 3, 35, 35\)"):
        vit(pixels[None])  # was "too many values to unpack"
    with pytest.raises(ValueError, match=r"the image \(5x5\) is smaller than one 7x7 patch"):
        vit(pixels[..., :5, :5], interpolate_pos_encoding=True)  # was a Conv2d RuntimeError
    with pytest.raises(TypeError, match=r"integer images must be uint8 .* got int64"):
        vit(torch.randint(0, 255, (3, 35, 35)))  # was "float images must hold values in [0, 1]"
    with pytest.raises(ValueError, match=r"residual stream \[batch, pos, 40\]; got shape \(2, 26, 7\)"):
        vit(torch.randn(2, 26, 7), start_at_layer=1)  # was a layer_norm RuntimeError
    with pytest.raises(TypeError, match=r"the residual stream is torch\.float64 but the model is torch\.float32"):
        vit(torch.randn(2, 26, 40, dtype=torch.float64), start_at_layer=1)
    # a stack of uint8 images [batch, C, H, W] is a batch of images (it was refused as one image)
    images = torch.randint(0, 256, (2, 3, 35, 35), dtype=torch.uint8)
    with torch.no_grad():
        torch.testing.assert_close(vit(images), vit(list(images)), atol=0, rtol=0)


def test_whisper_features_tokens_and_outputs(whisper) -> None:
    feats, tokens = whisper_cases.inputs(2, 5)
    with pytest.raises(ValueError, match=r"log-mel features \[batch, 11, 26\] .* got shape \(2, 80, 26\)"):
        whisper(torch.randn(2, 80, 26), tokens)  # was a Conv1d channel RuntimeError
    with pytest.raises(TypeError, match=r"log-mel features must be a float tensor, got torch\.int64"):
        whisper(feats.long(), tokens)  # was silently cast
    with pytest.raises(ValueError, match="features are on meta but the model is on cpu"):
        whisper.encode(feats.to(META))
    with pytest.raises(TypeError, match=r"decoder_input_ids must be integer token ids, got torch\.float32"):
        whisper(feats, tokens.float())
    with pytest.raises(ValueError, match=r"decoder_input_ids must be \[batch, pos\] or \[pos\]"):
        whisper(feats, tokens[None])
    with pytest.raises(ValueError, match="decoder_input_ids have 3 rows but there are 2 audio clips"):
        whisper(feats, tokens[:1].expand(3, -1))
    with pytest.raises(ValueError, match="return_type must be 'logits', 'loss', 'both' or None, got 'probs'"):
        whisper(feats, tokens, return_type="probs")  # was silently treated as 'both'
    with pytest.raises(ValueError, match=r"encoder_output must be \[batch, n_audio_ctx, 48\]"):
        whisper(None, tokens, encoder_output=torch.randn(2, 13, 5))
    with pytest.raises(TypeError, match=r"prompt must be a list of integer token ids, got \[1\.5\]"):
        whisper.generate(feats, max_new_tokens=2, prompt=[1.5])  # was truncated to 1 silently


def test_transcribe_bad_audio(whisper, tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        whisper.transcribe(tmp_path / "missing.wav")
    with pytest.raises(IsADirectoryError, match="is a folder; pass the path of one audio file"):
        whisper.transcribe(tmp_path)  # was "does not exist"
    garbage = tmp_path / "garbage.wav"
    garbage.write_bytes(b"not audio" * 50)
    with pytest.raises(ValueError, match=r"could not read .* as audio"):
        whisper.transcribe(garbage)
    with pytest.raises(ValueError, match="got an empty waveform"):
        whisper.transcribe(np.zeros(0, dtype=np.float32), sample_rate=16_000)
    with pytest.raises(ValueError, match="pass sample_rate= with a waveform array"):
        whisper.transcribe(np.zeros(100, dtype=np.float32))
    with pytest.raises(ValueError, match="NaN or infinite samples"):
        whisper.transcribe(np.full(100, np.nan, dtype=np.float32), sample_rate=16_000)
    with pytest.raises(TypeError, match="a waveform must be an array of numbers"):
        whisper.transcribe(["a", "b"], sample_rate=16_000)  # was numpy's "could not convert string to float"


def test_generate_arguments_and_names_filter() -> None:
    model = hookscope.load(random_hf_model("gpt2"))
    tokens = random_tokens(2, 5)
    with pytest.raises(ValueError, match="length_penalty must be a number"):
        model.generate(tokens, 2, num_beams=2, length_penalty="a")
    with pytest.raises(ValueError, match="seed must be an integer or None, got 'a'"):
        model.generate(tokens, 2, do_sample=True, seed="a")  # was a RuntimeError from manual_seed
    with pytest.raises(ValueError, match=r"a prompt's token ids must be integers, got torch\.float32"):
        model.generate([[1.5, 2]], 2)  # was truncated to [1, 2] silently
    with pytest.raises(ValueError, match="beam sampling is not supported"):
        model.generate(tokens, 2, do_sample=True, num_beams=2)
    with pytest.raises(KeyError, match=r"did you mean 'blocks\.0\.hook_resid_pre'"):
        model.generate(tokens, 2, return_cache=["blocks.0.hook_resid_pree"])
    with pytest.raises(TypeError, match="names_filter must be None, a hook name, a list of hook names"):
        model.run_with_cache(tokens, names_filter=5)  # was "'int' object is not iterable"
    wrapped = hookscope.wrap(random_hf_model("gpt2"))
    with pytest.raises(TypeError, match="names_filter must be None"):
        wrapped.run_with_cache(tokens, names_filter=5)
    with pytest.raises(TypeError, match=r"wrap\(\) takes a torch\.nn\.Module, got dict"):
        hookscope.wrap({"weight": torch.zeros(1)})
