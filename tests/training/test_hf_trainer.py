"""The native decoder is a drop-in for Hugging Face training code: ``Trainer`` takes steps on it."""

from __future__ import annotations

import pytest
import torch

from hookscope.models.decoder import Decoder
from hookscope.models.decoder_config import DecoderConfig


class _Rows(torch.utils.data.Dataset):
    def __init__(self, tokens: torch.Tensor) -> None:
        self.tokens = tokens

    def __len__(self) -> int:
        return len(self.tokens)

    def __getitem__(self, i: int) -> dict:
        return {"input_ids": self.tokens[i], "attention_mask": torch.ones_like(self.tokens[i]),
                "labels": self.tokens[i]}


def test_hf_trainer_steps_reduce_the_loss_and_match_the_models_own_loss(tmp_path) -> None:
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    cfg = DecoderConfig(d_model=32, n_layers=1, n_heads=2, d_head=16, d_vocab=23, n_ctx=16, attn_only=True)
    model = Decoder.from_config(cfg, seed=0)
    tokens = torch.arange(12).repeat(8, 1) % 23  # a pattern a 1-layer model learns quickly
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=12, learning_rate=1e-2,
        logging_steps=1, save_strategy="no", report_to=[], use_cpu=True, seed=0, disable_tqdm=True,
    )
    before = model(tokens, return_type="loss").item()
    trainer = transformers.Trainer(model=model, args=args, train_dataset=_Rows(tokens))
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 12
    assert losses[0] == pytest.approx(before, rel=1e-4)  # the Trainer read our .loss
    assert model(tokens, return_type="loss").item() < before - 1.0
