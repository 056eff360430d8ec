"""The shared input checks: one wording for every family, naming what the user passed."""

from __future__ import annotations

import pytest
import torch

from hookscope.models.input_checks import (
    batched_ids,
    check_device,
    check_encoder_output,
    check_integer_ids,
    check_residual,
    check_same_device,
    check_same_shape,
)

WEIGHT = torch.zeros(7, 12)


def test_ids_must_be_an_integer_tensor_of_rank_one_or_two() -> None:
    with pytest.raises(TypeError, match=r"input must be a tensor of integer ids, got list"):
        check_integer_ids("input", [1, 2])
    with pytest.raises(TypeError, match=r"tokens must be integer token ids, got torch\.bool; convert with \.long\(\)"):
        check_integer_ids("tokens", torch.ones(2, dtype=torch.bool))
    assert batched_ids("input", torch.arange(3)).shape == (1, 3)
    with pytest.raises(ValueError, match=r"input must be \[batch, pos\] or \[pos\], got shape \(1, 2, 3\)"):
        batched_ids("input", torch.zeros(1, 2, 3, dtype=torch.long))


def test_device_errors_name_the_input_and_skip_dispatched_models() -> None:
    meta = torch.zeros(2, device="meta")
    with pytest.raises(ValueError, match=r"^input is on meta but the model is on cpu; move it with \.to\(\)$"):
        check_device("input", meta, WEIGHT)
    with pytest.raises(ValueError, match=r"^features are on meta but the model is on cpu; move them with \.to\(\)$"):
        check_device("features", meta, WEIGHT)
    check_device("input", meta, WEIGHT, dispatched=True)  # accelerate moves inputs itself
    with pytest.raises(ValueError, match=r"^attention_mask is on meta but the tokens are on cpu$"):
        check_same_device("attention_mask", meta, "tokens", torch.zeros(2))


def test_shapes_and_dtypes_of_masks_residual_streams_and_encoder_outputs() -> None:
    with pytest.raises(ValueError, match=r"mask has shape \(2, 3\) but the tokens have shape \(2, 4\); they must"):
        check_same_shape("mask", torch.ones(2, 3), (2, 4), "the tokens")
    with pytest.raises(ValueError, match=r"residual stream \[batch, pos, 12\]; got shape \(2, 3\)"):
        check_residual(torch.zeros(2, 3), WEIGHT)
    with pytest.raises(ValueError, match=r"residual stream \[batch, pos, 12\]; got str"):
        check_residual("x", WEIGHT)
    with pytest.raises(TypeError, match=r"the residual stream is torch\.float64 but the model is torch\.float32"):
        check_residual(torch.zeros(1, 2, 12, dtype=torch.float64), WEIGHT)
    with pytest.raises(ValueError, match=r"encoder_out must be \[batch, n_audio_ctx, 12\] .* got shape \(1, 5\)"):
        check_encoder_output("encoder_out", torch.zeros(1, 5), WEIGHT, pos_axis="n_audio_ctx")
    with pytest.raises(TypeError, match=r"encoder_output is torch\.float16 but the model is torch\.float32"):
        check_encoder_output("encoder_output", torch.zeros(1, 5, 12, dtype=torch.float16), WEIGHT)
