"""Head detection on a hand-built model whose heads ARE previous-token / induction / uniform heads, and on a real
decoder against TransformerLens's per-head formulas written out with loops."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import hookscope
from hookscope.analysis import head_detection as H
from hookscope.hooks import HookedModule, HookPoint
from tests.equivalence.decoder_configs import random_hf_model


def hand_patterns(tokens: torch.Tensor) -> torch.Tensor:
    """``[batch, 3, pos, pos]``: head 0 previous-token, head 1 induction (else BOS), head 2 uniform causal."""
    b, n = tokens.shape
    p = torch.zeros(b, 3, n, n, dtype=torch.float64)
    for r in range(b):
        for i in range(n):
            p[r, 0, i, max(i - 1, 0)] = 1.0
            earlier = [j for j in range(i) if tokens[r, j] == tokens[r, i]]
            p[r, 1, i, earlier[-1] + 1 if earlier else 0] = 1.0
            p[r, 2, i, : i + 1] = 1.0 / (i + 1)
    return p


class HandBuilt(HookedModule):
    """Two layers of hand-set attention patterns; the logits are irrelevant here."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(nn.Module() for _ in range(2))
        for block in self.blocks:
            block.attn = nn.Module()
            block.attn.hook_pattern = HookPoint()
        self.setup_hooks()

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        tokens = tokens.reshape(-1, tokens.shape[-1])
        for block in self.blocks:
            block.attn.hook_pattern(hand_patterns(tokens))
        return torch.zeros(tokens.shape[0], tokens.shape[1], 5)


TOKENS = torch.tensor([0, 5, 6, 7, 8, 5, 6, 7, 8, 9])  # BOS, a repeated run, then a new token


def test_hand_built_heads_score_as_designed() -> None:
    model = HandBuilt()
    prev = H.detect_head(model, TOKENS, "previous_token_head")
    assert prev.shape == (2, 3)
    assert prev[0, 0] == pytest.approx(0.9) and prev[1, 0] == pytest.approx(0.9)  # row 0 can only attend itself
    assert H.detect_head(model, TOKENS, "previous_token_head", exclude_bos=True)[0, 0] == 1.0
    ind = H.detect_head(model, TOKENS, "induction_head", exclude_bos=True)
    assert ind[0, 1] == 1.0  # every non-BOS attention of the induction head is on an induction target
    assert ind[0, 1] > ind[0, 0] and ind[0, 1] > ind[0, 2]
    # the uniform head by hand: mean over rows of (#targets in the row) / (i + 1), rows weighted as TL's sum
    det = H.get_induction_head_detection_pattern(TOKENS)
    want = sum(det[i].sum().item() / (i + 1) for i in range(10)) / 10
    assert ind[0, 2].item() == pytest.approx(want * 10 / sum(1 - 1 / (i + 1) for i in range(10)), rel=1e-12)
    exact = H.detect_head(model, TOKENS, "previous_token_head", error_measure="abs")
    assert exact[0, 0] == pytest.approx(1 - round(1 / 10, 3))  # row 0 attends itself, not a previous token
    assert H.detect_head(model, TOKENS, "previous_token_head", heads=[(1, 2)])[0].eq(-1).all()


def test_detection_patterns_match_their_definitions() -> None:
    t = torch.tensor([3, 4, 3, 4, 4])
    dup = H.get_duplicate_token_head_detection_pattern(t)
    assert dup.tolist() == [[0, 0, 0, 0, 0], [0, 0, 0, 0, 0], [1, 0, 0, 0, 0], [0, 1, 0, 0, 0], [0, 1, 0, 1, 0]]
    ind = H.get_induction_head_detection_pattern(t)
    assert ind.tolist() == [[0, 0, 0, 0, 0], [0, 0, 0, 0, 0], [0, 1, 0, 0, 0], [0, 0, 1, 0, 0], [0, 0, 1, 0, 1]]
    prev = H.get_previous_token_head_detection_pattern(t)
    assert prev.sum() == 4 and prev[4, 3] == 1


@pytest.mark.parametrize("measure", ["mul", "abs"])
def test_real_decoder_scores_equal_tl_formulas_per_head(measure: str) -> None:
    model = hookscope.load(random_hf_model("llama", torch.float64), dtype=torch.float64)
    tokens = torch.tensor([1, 9, 17, 23, 9, 17, 23, 40])
    got = H.detect_head(model, tokens, "induction_head", exclude_bos=True, exclude_current_token=True,
                        error_measure=measure)
    _, cache = model.run_with_cache(tokens[None])
    det = H.get_induction_head_detection_pattern(tokens).double()
    for layer in range(3):
        for head in range(4):
            p = cache[f"blocks.{layer}.attn.hook_pattern"][0, head].clone()
            if measure == "mul":
                p[:, 0] = 0
                p.fill_diagonal_(0)
                want = ((p * det).sum() / p.sum()).item()
            else:
                d = (p - det).abs()
                d[:, 0] = 0
                d.fill_diagonal_(0)
                want = 1 - round((d.mean() * len(d)).item(), 3)
            assert got[layer, head].item() == pytest.approx(want, abs=1e-12)


def test_batched_induction_scores_equal_per_sequence_detection() -> None:
    model = HandBuilt()
    tokens = H.repeated_random_tokens(50, 6, batch=3, bos_token_id=0, seed=2, low=1)
    scores = H.induction_scores(model, tokens, seq_len=6)
    assert scores["induction"].shape == (2, 3)
    assert scores["induction"][0, 1] == 1.0 and scores["previous_token"][0, 0] == 1.0
    assert scores["induction"][0, 0] == 0.0


def test_bad_inputs_raise_clearly() -> None:
    model = HandBuilt()
    with pytest.raises(ValueError, match="one of"):
        H.detect_head(model, TOKENS, "copy_head")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="lower triangular"):
        H.detect_head(model, TOKENS, torch.ones(10, 10))
    with pytest.raises(ValueError, match="error_measure"):
        H.detect_head(model, TOKENS, "induction_head", error_measure="sq")  # type: ignore[arg-type]


def test_a_list_of_sequences_is_scored_in_one_batch_as_the_mean_of_each() -> None:
    model = hookscope.load(random_hf_model("llama", torch.float64), dtype=torch.float64)
    seqs = [torch.tensor([1, 9, 17, 23, 9, 17, 23, 40]), torch.tensor([1, 5, 6, 5, 6, 5, 6, 7]),
            torch.tensor([1, 50, 51, 52, 50, 51, 52, 53])]
    opts = dict(exclude_bos=True, error_measure="abs")
    together = H.detect_head(model, seqs, "induction_head", **opts)
    alone = torch.stack([H.detect_head(model, s, "induction_head", **opts) for s in seqs]).mean(0)
    torch.testing.assert_close(together, alone, atol=1e-12, rtol=0)
    mixed = H.detect_head(model, [*seqs, torch.tensor([1, 2, 3, 2, 3])], "previous_token_head")
    assert mixed.shape == (3, 4)
