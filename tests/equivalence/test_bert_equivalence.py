"""BERT / RoBERTa encoders equal their Hugging Face source: every layer, every attention pattern, every head.

Inputs have padding (right and left) and non-zero token types; padded positions are compared as HF
computes them (they still attend to the real tokens). Both our attention paths are checked: the explicit
one (a cache asks for the patterns) and the fused SDPA one (no hooks).
"""

from __future__ import annotations

import pytest
import torch

import hookscope
from hookscope.convert.bert_hf import bert_rules
from hookscope.convert.engine import convert_state_dict
from tests.equivalence.bert_configs import CLASSES, inputs, random_hf_model
from tests.helpers import TOLERANCES, first_divergence


def hf_heads(name: str, out: object) -> dict[str, torch.Tensor]:
    """return_type -> HF's tensor for it, for each head this HF class has."""
    if name.endswith("Model"):
        return {"hidden": out.last_hidden_state, "pooled": out.pooler_output}
    if name.endswith("MaskedLM"):
        return {"logits": out.logits}
    if name == "BertForPreTraining":
        return {"logits": out.prediction_logits, "nsp": out.seq_relationship_logits}
    return {"classification": out.logits}


def _pad_id(hf: torch.nn.Module) -> int:
    return int(hf.config.pad_token_id)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("name", list(CLASSES))
def test_every_hook_and_head_matches_hf(name: str, dtype: torch.dtype) -> None:
    hf = random_hf_model(name, dtype)
    model = hookscope.load(hf, dtype=dtype)
    assert model.cfg.architecture == name
    tokens, mask, types = inputs(_pad_id(hf))
    with torch.no_grad():
        out = hf(
            tokens,
            attention_mask=mask,
            token_type_ids=types,
            output_hidden_states=True,
            output_attentions=True,
        )
        heads = hf_heads(name, out)
        first = next(iter(heads))
        _, cache = model.run_with_cache(tokens, mask, types, return_type=first)
        fused = {rt: model(tokens, mask, types, return_type=rt) for rt in heads}  # no hooks: SDPA path
    n = model.cfg.n_layers
    pairs = [("hook_full_embed", cache["hook_full_embed"], out.hidden_states[0])]
    for i in range(n):
        pairs.append(
            (f"blocks.{i}.attn.hook_pattern", cache[f"blocks.{i}.attn.hook_pattern"], out.attentions[i])
        )
        pairs.append(
            (
                f"blocks.{i}.hook_normalized_resid_post",
                cache[f"blocks.{i}.hook_normalized_resid_post"],
                out.hidden_states[i + 1],
            )
        )
        if i + 1 < n:
            pairs.append(
                (
                    f"blocks.{i + 1}.hook_resid_pre",
                    cache[f"blocks.{i + 1}.hook_resid_pre"],
                    out.hidden_states[i + 1],
                )
            )
    pairs += [(f"{rt} (fused path)", fused[rt], ref) for rt, ref in heads.items()]
    atol, rtol = TOLERANCES[dtype]
    problem = first_divergence(pairs, atol, rtol)
    assert problem is None, f"{name} {dtype}: first divergence at {problem}"


@pytest.mark.parametrize(
    "name", ["BertForPreTraining", "RobertaForMaskedLM", "RobertaForSequenceClassification"]
)
def test_gradients_match_hf(name: str) -> None:
    """d(loss)/d(every parameter) equals HF's, mapped through the same conversion rules (fp64)."""
    dtype = torch.float64
    hf = random_hf_model(name, dtype)
    model = hookscope.load(hf, dtype=dtype)
    tokens, mask, types = inputs(_pad_id(hf))
    gen = torch.Generator().manual_seed(7)
    out = hf(tokens, attention_mask=mask, token_type_ids=types)
    heads = hf_heads(name, out)
    weights = {rt: torch.randn(t.shape, generator=gen, dtype=dtype) for rt, t in heads.items()}
    sum(((t * weights[rt]).sum() for rt, t in heads.items()), torch.zeros((), dtype=dtype)).backward()
    ours = sum(
        ((model(tokens, mask, types, return_type=rt) * weights[rt]).sum() for rt in heads),
        torch.zeros((), dtype=dtype),
    )
    ours.backward()
    hf_grads = {k: p.grad for k, p in hf.named_parameters(remove_duplicate=False)}  # tied names too
    rules = bert_rules(model.cfg, list(hf.state_dict()))
    expected = [n for n, _ in model.named_parameters()]
    mapped = convert_state_dict(hf_grads, rules, model.cfg.n_layers, expected)
    pairs = [(n, p.grad, mapped[n]) for n, p in model.named_parameters()]
    problem = first_divergence(pairs, *TOLERANCES[dtype])
    assert problem is None, f"{name} gradient differs: {problem}"


def test_roberta_positions_skip_padding_like_hf() -> None:
    from transformers.models.roberta.modeling_roberta import RobertaEmbeddings

    from hookscope.models.bert import padding_offset_positions

    tokens, _, _ = inputs(pad_token_id=1)
    expected = RobertaEmbeddings.create_position_ids_from_input_ids(tokens, 1)
    assert torch.equal(padding_offset_positions(tokens, 1), expected)
    assert int(expected[3, 0]) == 1 and int(expected[3, 1]) == 2  # left padding: the first real token gets 2


def test_folder_round_trip_matches_hf(tmp_path) -> None:
    """A saved BertForMaskedLM folder (prefixed names, tied decoder) loads through load(folder)."""
    hf = random_hf_model("BertForMaskedLM")
    hf.save_pretrained(tmp_path)
    model = hookscope.load(tmp_path)
    tokens, mask, types = inputs(0)
    with torch.no_grad():
        ref = hf(tokens, attention_mask=mask, token_type_ids=types).logits
        got = model(tokens, mask, types)
    assert model.cfg.architecture == "BertForMaskedLM"
    assert model.unembed.weight is model.embed.embed.weight  # tied, as in HF
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


def test_untied_decoder_weight_is_converted() -> None:
    hf = random_hf_model("BertForMaskedLM", tie_word_embeddings=False)
    assert hf.cls.predictions.decoder.weight is not hf.bert.embeddings.word_embeddings.weight
    model = hookscope.load(hf)
    assert model.unembed.weight is not model.embed.embed.weight
    tokens, mask, types = inputs(0)
    with torch.no_grad():
        torch.testing.assert_close(
            model(tokens, mask, types),
            hf(tokens, attention_mask=mask, token_type_ids=types).logits,
            atol=1e-5,
            rtol=1e-5,
        )


def test_default_mask_and_types_match_hf() -> None:
    """No mask and no token types: every token attends and types are 0, as in HF."""
    hf = random_hf_model("RobertaForMaskedLM")
    model = hookscope.load(hf)
    tokens, _, _ = inputs(1)
    with torch.no_grad():
        torch.testing.assert_close(model(tokens), hf(tokens).logits, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(model(tokens[0]), hf(tokens[:1]).logits, atol=1e-5, rtol=1e-5)


def test_first_n_layers_only() -> None:
    """``load(..., n_layers=2)`` keeps blocks 0-1: its last hidden state is HF's hidden state 2."""
    hf = random_hf_model("BertForMaskedLM")
    model = hookscope.load(hf, n_layers=2)
    assert len(model.blocks) == 2
    tokens, mask, types = inputs(0)
    with torch.no_grad():
        ref = hf(tokens, attention_mask=mask, token_type_ids=types, output_hidden_states=True).hidden_states[
            2
        ]
        torch.testing.assert_close(
            model(tokens, mask, types, return_type="hidden"), ref, atol=1e-5, rtol=1e-5
        )


def test_bfloat16_smoke() -> None:
    """bfloat16 runs and stays close to float32 (a smoke test, as DESIGN.md asks: rounding differs)."""
    hf = random_hf_model("RobertaForMaskedLM")
    tokens, mask, types = inputs(1)
    with torch.no_grad():
        ref = hookscope.load(hf)(tokens, mask, types)
        low = hookscope.load(hf, dtype=torch.bfloat16)(tokens, mask, types)
    assert low.dtype == torch.bfloat16
    cos = torch.nn.functional.cosine_similarity(low.float().flatten(1), ref.flatten(1))
    assert float(cos.min()) > 0.99
