"""The conversion engine's one alias-normalising step: older layouts read as the names the rules use."""

from __future__ import annotations

import pytest
import torch

from hookscope.convert.engine import ConversionError, RuleSet, aliased_keys, convert_state_dict, rename

ALIASES = ((r"^bert\.", ""), (r"LayerNorm\.gamma$", "LayerNorm.weight"))


def test_aliases_apply_in_order_and_remember_each_source_key() -> None:
    keys = ["bert.ln.LayerNorm.gamma", "head.weight"]
    assert aliased_keys(keys, ALIASES) == {"ln.LayerNorm.weight": keys[0], "head.weight": keys[1]}


def test_conversion_reads_aliased_sources_under_their_original_keys() -> None:
    state = {"bert.ln.LayerNorm.gamma": torch.ones(3), "bert.w": torch.zeros(2)}
    rules = RuleSet((rename("ln.LayerNorm.weight", "norm.w"), rename("w", "lin.w")), aliases=ALIASES)
    out = convert_state_dict(state, rules, n_layers=1, expected_targets=["norm.w", "lin.w"])
    assert torch.equal(out["norm.w"], torch.ones(3)) and torch.equal(out["lin.w"], torch.zeros(2))


def test_two_source_tensors_reading_as_one_name_are_an_error() -> None:
    with pytest.raises(ConversionError, match="both read as 'w'"):
        aliased_keys(["bert.w", "w"], ALIASES)
