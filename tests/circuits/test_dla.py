"""Logit-difference metrics and direct logit attribution: per-head and per-neuron attributions sum to the
attention / MLP output's attribution, which the model's own logits confirm; SVDInterpreter and test_prompt."""

from __future__ import annotations

import pytest
import torch

import hookscope
from hookscope.analysis import dla
from hookscope.analysis import prompt_report as PR
from hookscope.analysis.residual import decompose_resid
from hookscope.analysis.svd_interpreter import SVDInterpreter
from hookscope.factored_matrix import FactoredMatrix
from tests.circuits.fp64 import pure_float64
from tests.equivalence.decoder_configs import random_hf_model, random_tokens

EXACT = dict(atol=1e-9, rtol=1e-9)
ANSWERS = torch.tensor([[5, 7], [9, 3], [11, 12]])


@pytest.mark.parametrize("name", ["gpt2", "llama", "gemma2"])
def test_component_attributions_sum_to_the_logit_difference(name: str) -> None:
    model = pure_float64(hookscope.load(random_hf_model(name, torch.float64), dtype=torch.float64))
    # Gemma's norms: apply_ln_to_stack multiplies by (1 + w) in float32 as HF does, so sums through a Gemma norm
    # carry float32 rounding of that factor
    tol = dict(atol=1e-6, rtol=1e-6) if name.startswith("gemma") else EXACT
    tokens = random_tokens(3, 6)
    logits, cache = model.run_with_cache(tokens)
    stack, labels = decompose_resid(cache, return_labels=True)  # [component, batch, pos, d_model]
    per_component = dla.residual_stack_to_logit_diff(stack, cache, dla.logit_diff_directions(model, ANSWERS))
    # constant terms: the final norm's bias and b_U (no component owns them)
    bias = getattr(model.ln_final, "bias", None)
    dirs = dla.logit_diff_directions(model, ANSWERS)
    const = (dirs @ bias).mean() if bias is not None else 0.0
    b_u = model.b_U[ANSWERS[:, 0]] - model.b_U[ANSWERS[:, 1]]
    if model.cfg.final_softcap is None:
        want = dla.logit_diff(logits, ANSWERS)
        torch.testing.assert_close(per_component.sum() + const + b_u.mean(), want, **tol)
    heads = dla.head_logit_diff_attribution(cache, ANSWERS)
    assert heads.shape == (model.cfg.n_layers, model.cfg.n_heads)
    attn_index = [i for i, label in enumerate(labels) if label.endswith("attn_out")]
    b_o = torch.stack([model.blocks[i].attn.b_O for i in range(model.cfg.n_layers)])  # [layer, d_model]
    b_o_attr = dla.residual_stack_to_logit_diff(b_o[:, None, None, :].expand(-1, 3, 6, -1), cache, dirs)
    if model.cfg.post_norms:  # Gemma 2 has no b_O; ln1_post makes heads sum to attn_out as well
        b_o_attr = torch.zeros_like(b_o_attr)
    torch.testing.assert_close(heads.sum(-1) + b_o_attr, per_component[attn_index], **tol)
    mlp_index = [i for i, label in enumerate(labels) if label.endswith("mlp_out")]
    for layer in range(model.cfg.n_layers):
        neurons = dla.neuron_logit_diff_attribution(cache, layer, ANSWERS)
        b_out = model.blocks[layer].mlp.b_out
        b_attr = dla.residual_stack_to_logit_diff(b_out.expand(1, 3, 6, -1), cache, dirs)[0]
        if model.cfg.post_norms:
            b_attr = torch.zeros_like(b_attr)
        torch.testing.assert_close(neurons.sum() + b_attr, per_component[mlp_index[layer]], **tol)


def test_logit_diff_and_normalised_metric() -> None:
    logits = torch.randn(3, 4, 20, dtype=torch.float64)
    want = torch.stack([logits[i, -1, a] - logits[i, -1, b] for i, (a, b) in enumerate(ANSWERS.tolist())])
    torch.testing.assert_close(dla.logit_diff(logits, ANSWERS, per_prompt=True), want)
    metric = dla.normalized_logit_diff_metric(ANSWERS, clean_value=2.0, corrupted_value=-1.0)
    assert metric(logits).item() == pytest.approx((want.mean().item() + 1.0) / 3.0)
    with pytest.raises(ValueError, match=r"\[batch, 2\]"):
        dla.logit_diff(logits, torch.tensor([1, 2]))


def test_svd_interpreter_projects_top_singular_vectors_on_the_unembedding() -> None:
    model = hookscope.load(random_hf_model("gpt2", torch.float64), dtype=torch.float64)
    svd = SVDInterpreter(model)
    ov = svd.get_singular_vectors("OV", 1, num_vectors=3, head_index=2)
    assert ov.shape == (model.cfg.d_vocab, 1, 3)
    dense = (model.W_V[1, 2] @ model.W_O[1, 2])  # [d_model, d_model]
    _, _, vh = torch.linalg.svd(dense)
    for i in range(3):  # singular vectors are defined up to sign
        want = (vh[i] @ model.W_U).float()
        got = ov[:, 0, i]
        assert torch.allclose(got, want, atol=1e-4) or torch.allclose(got, -want, atol=1e-4)
    w_out = svd.get_singular_vectors("w_out", 0, num_vectors=2)
    want = torch.linalg.svd(model.W_out[0]).Vh[0] @ model.W_U
    assert torch.allclose(w_out[:, 0, 0], want.float(), atol=1e-4) or torch.allclose(w_out[:, 0, 0], -want.float(),
                                                                                        atol=1e-4)
    with pytest.raises(ValueError, match="Head index optional"):
        svd.get_singular_vectors("OV", 0)
    assert isinstance(model.OV, FactoredMatrix)


CHARS = " abcdefgh"


class _CharTokenizer:
    """One token per character (ids 3 + index in CHARS), enough for test_prompt's bookkeeping."""

    bos_token_id, eos_token_id, pad_token_id, bos_token = 1, 2, 0, "<s>"

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict:
        ids = [3 + CHARS.index(c) for c in text]
        return {"input_ids": ([1] if add_special_tokens else []) + ids}

    def decode(self, ids: list[int]) -> str:
        return "".join(CHARS[i - 3] if 3 <= i < 3 + len(CHARS) else f"<{i}>" for i in ids)


def test_prompt_reports_the_answer_rank_from_the_models_own_probabilities(capsys) -> None:
    model = hookscope.load(random_hf_model("llama", torch.float32))
    model.tokenizer = _CharTokenizer()
    report = PR.prompt_report("abc", "d", model, top_k=3)[0]  # answer " d": tokens " " and "d"
    tokens = torch.tensor([[1, *(3 + CHARS.index(c) for c in "abc d")]])
    with torch.no_grad():
        logits = model(tokens)[0]
    ranks = [int((logits[row].softmax(-1) > logits[row].softmax(-1)[tokens[0, row + 1]]).sum()) for row in (3, 4)]
    assert report.answer_ranks == [(" ", ranks[0]), ("d", ranks[1])]
    assert "Top 2th token" in report.text and "Ranks of the answer tokens" in report.text
    PR.test_prompt("abc", ["d", "e"], model, top_k=2)
    assert capsys.readouterr().out.count("Ranks of the answer tokens") == 2
