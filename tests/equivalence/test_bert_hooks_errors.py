"""BERT-family hooks (ablation, each hook once, patching identity, split inputs) and errors for people."""

from __future__ import annotations

import pytest
import torch

import hookscope
from hookscope.convert.engine import ConversionError
from hookscope.names import shape_of
from tests.equivalence.bert_configs import N_CTX, N_TYPES, inputs, random_hf_model


@pytest.fixture(scope="module")
def pretraining() -> tuple[torch.nn.Module, torch.nn.Module]:
    hf = random_hf_model("BertForPreTraining")
    return hf, hookscope.load(hf)


def test_zero_ablating_one_head_changes_only_through_that_head(pretraining) -> None:
    hf, model = pretraining
    tokens, mask, types = inputs(0)

    def ablate(z: torch.Tensor, hook: object) -> torch.Tensor:
        z = z.clone()
        z[:, :, 2] = 0.0  # head 2
        return z

    with torch.no_grad():
        clean = model(tokens, mask, types)
        ablated = model.run_with_hooks(tokens, mask, types, fwd_hooks=[("blocks.1.attn.hook_z", ablate)])
        # Reference: the same ablation on HF, by zeroing head 2's columns of layer 1's output projection.
        dense = hf.bert.encoder.layer[1].attention.output.dense
        saved = dense.weight.clone()
        d_head = model.cfg.d_head
        dense.weight[:, 2 * d_head : 3 * d_head] = 0.0
        ref = hf(tokens, attention_mask=mask, token_type_ids=types).prediction_logits
        dense.weight.copy_(saved)
    assert (ablated - clean).abs().max() > 1e-3
    torch.testing.assert_close(ablated, ref, atol=1e-5, rtol=1e-5)


def test_every_hook_fires_once_and_has_its_documented_rank(pretraining) -> None:
    _, model = pretraining
    tokens, mask, types = inputs(0)
    counts: dict[str, int] = {}
    ranks: dict[str, int] = {}

    def count(t: torch.Tensor, hook: object) -> None:
        counts[hook.name] = counts.get(hook.name, 0) + 1
        ranks[hook.name] = t.ndim

    with torch.no_grad():
        for return_type in ("logits", "nsp"):  # the two runs between them reach every head
            counts.clear()
            model.run_with_hooks(
                tokens, mask, types, return_type=return_type, fwd_hooks=[(lambda n: True, count)]
            )
            assert set(counts.values()) == {1}, {n: c for n, c in counts.items() if c != 1}
    assert set(model.hook_dict) == set(ranks)  # no point that can never fire (BERT has no rotary hooks)
    for name, ndim in ranks.items():
        axes = shape_of(name)
        assert axes is not None, f"{name} is not in the name table"
        assert len(axes.split()) == ndim, f"{name}: table says {axes}, tensor has {ndim} axes"


def test_patching_a_clean_cache_back_is_the_identity(pretraining) -> None:
    _, model = pretraining
    tokens, mask, types = inputs(0)
    with torch.no_grad():
        clean, cache = model.run_with_cache(tokens, mask, types, names_filter=lambda n: "resid" in n)
        hooks = [(name, lambda t, hook, c=cache: c[hook.name]) for name in cache]
        patched = model.run_with_hooks(tokens, mask, types, fwd_hooks=hooks)
    torch.testing.assert_close(patched, clean, atol=0, rtol=0)


def test_split_qkv_inputs_give_the_same_numbers(pretraining) -> None:
    _, model = pretraining
    tokens, mask, types = inputs(0)
    with torch.no_grad():
        clean = model(tokens, mask, types)
        split = model.run_with_hooks(
            tokens, mask, types, fwd_hooks=[("blocks.0.hook_q_input", lambda t, hook: None)]
        )
    torch.testing.assert_close(split, clean, atol=1e-5, rtol=1e-5)


def test_stop_at_layer_returns_the_residual_entering_that_block(pretraining) -> None:
    _, model = pretraining
    tokens, mask, types = inputs(0)
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, mask, types, names_filter="blocks.2.hook_resid_pre")
        early = model(tokens, mask, types, stop_at_layer=2)
    torch.testing.assert_close(early, cache["blocks.2.hook_resid_pre"], atol=0, rtol=0)


# ---------------------------------------------------------------------- errors
def test_sequence_longer_than_the_position_table(pretraining) -> None:
    _, model = pretraining
    with pytest.raises(ValueError, match=rf"{N_CTX + 1} tokens .* at most {N_CTX}"):
        model(torch.ones(1, N_CTX + 1, dtype=torch.long))
    model(torch.ones(1, N_CTX, dtype=torch.long))  # the longest allowed runs


def test_roberta_position_limit_counts_the_padding_offset() -> None:
    model = hookscope.load(random_hf_model("RobertaForMaskedLM"))
    limit = N_CTX - 2  # pad_token_id 1: rows 0 and 1 are never used by real tokens
    assert model.cfg.max_tokens == limit
    model(torch.full((1, limit), 5))
    with pytest.raises(ValueError, match=rf"at most {limit}"):
        model(torch.full((1, limit + 1), 5))


def test_mismatched_token_type_ids_and_mask(pretraining) -> None:
    _, model = pretraining
    tokens, mask, types = inputs(0)
    with pytest.raises(
        ValueError, match=r"token_type_ids has shape \(5, 6\) but the tokens have shape \(5, 7\)"
    ):
        model(tokens, mask, types[:, :6])
    with pytest.raises(ValueError, match=r"attention_mask has shape \(4, 7\)"):
        model(tokens, mask[:4], types)
    with pytest.raises(ValueError, match=rf"token_type_ids must lie in \[0, {N_TYPES}\)"):
        model(tokens, mask, types + N_TYPES)


def test_missing_head_and_bad_return_type_say_what_exists() -> None:
    model = hookscope.load(random_hf_model("BertModel"))
    tokens, mask, types = inputs(0)
    with pytest.raises(
        ValueError, match=r"masked-LM head, which this model \(BertModel\) does not have.*'pooled'"
    ):
        model(tokens, mask, types)
    with pytest.raises(ValueError, match="return_type must be one of"):
        model(tokens, return_type="probs")
    with pytest.raises(ValueError, match="no tokenizer"):
        model("some text", return_type="hidden")
    with pytest.raises(ValueError, match="only with token ids"):
        model("some text", mask)


def test_config_promising_a_missing_head_is_refused() -> None:
    hf = random_hf_model("BertModel")
    hf.config.architectures = ["BertForMaskedLM"]
    with pytest.raises(
        ConversionError, match="names BertForMaskedLM, but the weights have no masked-LM head"
    ):
        hookscope.load(hf)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"is_decoder": True}, "is_decoder"),
        ({"position_embedding_type": "relative_key"}, "position_embedding_type"),
    ],
)
def test_unmodelled_config_is_refused(override: dict, message: str) -> None:
    hf = random_hf_model("BertModel")
    for k, v in override.items():
        setattr(hf.config, k, v)
    with pytest.raises(ConversionError, match=message):
        hookscope.load(hf)


def test_token_classification_is_refused_with_a_pointer_to_wrap() -> None:
    import transformers as T

    from tests.equivalence.bert_configs import hf_config

    hf = T.BertForTokenClassification(hf_config("BertModel"))
    with pytest.raises(ConversionError, match="wrap"):
        hookscope.load(hf)


def test_in_memory_multiple_choice_model_is_refused_not_loaded_as_classifier() -> None:
    """Its classifier weights look like a 1-label sequence classifier; the HF class says otherwise."""
    import transformers as T

    from tests.equivalence.bert_configs import hf_config

    hf = T.BertForMultipleChoice(hf_config("BertModel"))
    with pytest.raises(ConversionError, match="BertForMultipleChoice is not supported"):
        hookscope.load(hf)


@pytest.mark.parametrize("kind", ["relative_key", "relative_key_query"])
def test_relative_positions_are_refused_with_a_pointer_to_wrap(kind: str) -> None:
    hf = random_hf_model("BertForMaskedLM", position_embedding_type=kind)
    with pytest.raises(ConversionError, match=rf"position_embedding_type='{kind}'.*hookscope\.wrap"):
        hookscope.load(hf)
    wrapped = hookscope.wrap(hf)  # and wrap() does run it, hooks included
    assert "bert.encoder.layer.0.attention" in wrapped.hook_dict
