"""Every family config checks its fields with one wording, and ``to_dict`` round-trips without ``hf_config``."""

from __future__ import annotations

import pytest

from hookscope.errors import ConfigError
from hookscope.models.bert_config import BertConfig
from hookscope.models.decoder_config import DecoderConfig
from hookscope.models.dit_config import DiTConfig
from hookscope.models.t5_config import T5Config
from hookscope.models.vit_config import ViTConfig
from hookscope.models.whisper_config import WhisperConfig

VALID = {
    DecoderConfig: {"d_model": 8, "n_layers": 1, "n_heads": 2, "d_head": 4, "d_mlp": 9, "d_vocab": 11, "n_ctx": 16},
    BertConfig: {"d_model": 8, "n_layers": 1, "n_heads": 2, "d_head": 4, "d_mlp": 9, "d_vocab": 11, "n_ctx": 16},
    T5Config: {"d_model": 8, "n_heads": 2, "d_head": 4, "d_mlp": 9, "d_vocab": 11, "n_encoder_layers": 1,
               "n_decoder_layers": 1},
    ViTConfig: {"d_model": 8, "n_layers": 1, "n_heads": 2, "d_head": 4, "d_mlp": 9, "image_size": (8, 8),
                "patch_size": 4},
    DiTConfig: {"n_layers": 1, "n_heads": 2, "d_head": 4, "in_channels": 3, "out_channels": 6, "sample_size": 8,
                "patch_size": 2, "n_classes": 5},
    WhisperConfig: {"n_mels": 4, "d_model": 8, "n_audio_ctx": 6, "n_text_ctx": 5, "d_vocab": 11,
                    "n_encoder_layers": 1, "n_decoder_layers": 1, "n_encoder_heads": 2, "n_decoder_heads": 2,
                    "d_encoder_mlp": 9, "d_decoder_mlp": 9},
}


@pytest.mark.parametrize("cls", list(VALID), ids=lambda c: c.__name__)
def test_a_zero_size_and_an_unknown_activation_are_rejected_with_one_wording(cls: type) -> None:
    size = "d_head" if cls is DiTConfig else "d_model"
    with pytest.raises(ConfigError, match=rf"^{cls.__name__}\.{size} must be positive, got 0$"):
        cls(**{**VALID[cls], size: 0})
    with pytest.raises(ConfigError, match=rf"^{cls.__name__}\.{size} must be an integer, got 4\.0$"):
        cls(**{**VALID[cls], size: 4.0})
    with pytest.raises(ConfigError, match=r"^unknown act_fn 'swish3'; choose one of \["):
        cls(**{**VALID[cls], "act_fn": "swish3"})


@pytest.mark.parametrize("cls", list(VALID), ids=lambda c: c.__name__)
def test_to_dict_rebuilds_the_config_and_leaves_out_the_source_config(cls: type) -> None:
    source = {} if cls is DiTConfig else {"hf_config": {"model_type": "x"}}  # DiT is built here, not converted
    cfg = cls(**VALID[cls], **source)
    fields = cfg.to_dict()
    assert "hf_config" not in fields
    assert cls(**fields) == cfg
