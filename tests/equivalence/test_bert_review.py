"""Review regression: a BERT config the native family does not model says so and points to wrap()."""

from __future__ import annotations

import pytest

import hookscope
from hookscope.convert.engine import ConversionError
from tests.equivalence.bert_configs import random_hf_model


@pytest.mark.parametrize("kind", ["relative_key", "relative_key_query"])
def test_relative_positions_are_refused_with_a_pointer_to_wrap(kind: str) -> None:
    hf = random_hf_model("BertForMaskedLM", position_embedding_type=kind)
    with pytest.raises(ConversionError, match=rf"position_embedding_type='{kind}'.*hookscope\.wrap"):
        hookscope.load(hf)
    wrapped = hookscope.wrap(hf)  # and wrap() does run it, hooks included
    assert "bert.encoder.layer.0.attention" in wrapped.hook_dict
