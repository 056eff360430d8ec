"""T5, ViT and Whisper loading and Whisper decoding on configs the main tests do not use (each was a bug).

- Whisper with ``decoder_start_token_id=0`` (a valid id) used to start decoding at 50257 (``or`` instead of
  ``is None``), out of a small vocabulary.
- HF classes a family does not model (sequence classification, masked-image modelling, audio
  classification) used to fail as a list of unconverted tensors; now they name the class, the supported
  ones, and point to ``wrap()``.
"""

from __future__ import annotations

import pytest
import torch
import transformers as T

import hookscope
from hookscope.convert.engine import ConversionError
from tests.equivalence.test_whisper import _hf_generate
from tests.equivalence.whisper_cases import BEGIN_SUPPRESS, SUPPRESS, inputs, random_hf_whisper


def test_whisper_start_token_zero_decodes_like_hf_generate() -> None:
    hf = random_hf_whisper(start=0)
    model = hookscope.load(hf)
    assert model.cfg.decoder_start_token_id == 0
    feats, _ = inputs(batch=3)
    ours = model.generate(feats, 8)
    with torch.no_grad():
        # WhisperForConditionalGeneration.generate returns the generated tokens without the decoder prompt
        ref = hf.generate(
            input_features=feats, max_new_tokens=8, suppress_tokens=SUPPRESS,
            begin_suppress_tokens=BEGIN_SUPPRESS,
        )
    assert ours[:, 0].eq(0).all()
    assert ours[:, 1:].tolist() == ref.tolist()


def test_whisper_without_pad_id_pads_with_eos() -> None:
    hf = random_hf_whisper()
    hf.config.pad_token_id = None
    model = hookscope.load(hf)
    assert model.cfg.pad_token_id == model.cfg.eos_token_id


def _t5_seq_cls() -> T.PreTrainedModel:
    cfg = T.T5Config(vocab_size=31, d_model=16, d_kv=4, d_ff=12, num_layers=1, num_heads=2, num_labels=3)
    return T.T5ForSequenceClassification(cfg)


def _vit_mim() -> T.PreTrainedModel:
    cfg = T.ViTConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=12,
                      image_size=8, patch_size=4, encoder_stride=4)
    return T.ViTForMaskedImageModeling(cfg)


def _whisper_audio_cls() -> T.PreTrainedModel:
    cfg = T.WhisperConfig(vocab_size=31, num_mel_bins=5, d_model=16, encoder_layers=1, decoder_layers=1,
                          encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=12,
                          decoder_ffn_dim=12, max_source_positions=6, max_target_positions=8,
                          pad_token_id=1, eos_token_id=2, bos_token_id=2, decoder_start_token_id=3)
    return T.WhisperForAudioClassification(cfg)


@pytest.mark.parametrize(
    ("make", "name"),
    [
        (_t5_seq_cls, "T5ForSequenceClassification"),
        (_vit_mim, "ViTForMaskedImageModeling"),
        (_whisper_audio_cls, "WhisperForAudioClassification"),
    ],
)
def test_unsupported_task_classes_are_named_with_the_supported_ones(make: object, name: str) -> None:
    with pytest.raises(ConversionError, match=rf"{name} is not supported natively; supported .*wrap\(hf_model\)"):
        hookscope.load(make())  # type: ignore[operator]


def test_whisper_generate_stops_on_any_of_several_eos_ids() -> None:
    hf = random_hf_whisper()
    model = hookscope.load(hf)
    feats, _ = inputs(batch=1)
    free = model.generate(feats, 10)[0].tolist()  # prompt + 10 tokens, no EOS among them
    stop_at = next(i for i in range(2, len(free)) if free[i] not in free[1:i])  # a first occurrence
    eos = [model.cfg.eos_token_id, free[stop_at]]
    stopped = model.generate(feats, 10, eos_token_id=eos)[0].tolist()
    assert stopped[: stop_at + 1] == free[: stop_at + 1]
    assert all(t == model.cfg.pad_token_id for t in stopped[stop_at + 1 :])
    with torch.no_grad():
        ref = _hf_generate(hf, feats, 10, eos=eos)  # type: ignore[arg-type]
    assert stopped == ref[0].tolist()
