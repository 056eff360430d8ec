"""The induction probes measure what they say: a pattern forced onto the induction stripe scores 1, a
uniform causal pattern scores its by-hand mean, and the repeated-half loss splits the positions right."""

from __future__ import annotations

import pytest
import torch

from hookscope.models.decoder import Decoder
from hookscope.models.decoder_config import DecoderConfig
from hookscope.training.induction import (
    induction_scores,
    induction_stripe,
    repeat_spans,
    repeated_half_losses,
    repeated_random_tokens,
)

N = 6


def _model() -> Decoder:
    cfg = DecoderConfig(d_model=16, n_layers=2, n_heads=3, d_head=4, d_vocab=40, n_ctx=32, attn_only=True)
    return Decoder.from_config(cfg, seed=0)


def test_repeated_tokens_are_bos_then_a_half_twice() -> None:
    rows = repeated_random_tokens(N, batch=4, vocab=40, bos=0, low=2, seed=0)
    assert rows.shape == (4, 1 + 2 * N) and bool((rows[:, 0] == 0).all())
    assert torch.equal(rows[:, 1:1 + N], rows[:, 1 + N:]) and int(rows[:, 1:].min()) >= 2


def test_forced_induction_pattern_scores_one_and_uniform_scores_its_mean() -> None:
    model = _model()
    tokens = repeated_random_tokens(N, batch=2, vocab=40, bos=0, seed=1)
    n_pos = tokens.shape[1]
    stripe = torch.zeros(n_pos, n_pos)
    for q in range(n_pos):
        stripe[q, q - N + 1 if q >= 1 + N else 0] = 1.0

    def force(pattern: torch.Tensor, hook) -> torch.Tensor:
        return stripe.expand_as(pattern).clone()

    with model.hooks([("blocks.1.attn.hook_pattern", force)]):
        scores = induction_scores(model, tokens, N)
    assert scores.shape == (2, 3)
    torch.testing.assert_close(scores[1], torch.ones(3))
    uniform = torch.ones(n_pos, n_pos).tril()
    uniform = (uniform / uniform.sum(-1, keepdim=True))[None, None].expand(2, 3, -1, -1)
    want = sum(1.0 / (q + 1) for q in range(1 + N, 1 + 2 * N)) / N
    torch.testing.assert_close(induction_stripe(uniform, N, offset=1), torch.full((3,), want))


def test_repeated_half_losses_split_the_positions_by_hand() -> None:
    model = _model()
    tokens = repeated_random_tokens(N, batch=3, vocab=40, bos=0, seed=2)
    first, second = repeated_half_losses(model, tokens, N)
    logp = model(tokens).log_softmax(-1)
    nll = -logp[:, :-1].gather(-1, tokens[:, 1:, None])[..., 0]  # [batch, pos - 1]: position t predicts t + 1
    # first half: predicting tokens 2..N of the first copy; second: tokens 2..N of the repeat
    assert first == pytest.approx(nll[:, 1:N].mean().item(), rel=1e-5)
    assert second == pytest.approx(nll[:, 1 + N:].mean().item(), rel=1e-5)
    with pytest.raises(ValueError, match="positions"):
        induction_scores(model, tokens[:, :-1], N)


def test_agrees_with_the_analysis_head_detector() -> None:
    from hookscope.analysis.head_detection import induction_scores as detector_scores

    model = _model()
    tokens = repeated_random_tokens(N, batch=3, vocab=40, bos=0, seed=5)
    torch.testing.assert_close(induction_scores(model, tokens, N), detector_scores(model, tokens, N)["induction"])


def test_repeat_spans_copy_a_span_of_the_same_row_later_and_leave_other_rows_alone() -> None:
    rows = torch.arange(200 * 33).view(200, 33)  # every token distinct: a copy is found by value
    rows[:, 0] = -1  # BOS
    out, picked = repeat_spans(rows, 0.4, min_span=3, seed=7)
    assert out.shape == rows.shape and rows[0, 1] == 1  # the input is not modified
    assert 50 < int(picked.sum()) < 110  # about 40 % of 200 rows
    assert torch.equal(out[~picked], rows[~picked]) and bool((out[:, 0] == -1).all())
    for row, orig in zip(out[picked], rows[picked], strict=True):
        changed = (row != orig).nonzero().flatten()
        dest, span = int(changed[0]), len(changed)  # positions overwritten: one contiguous block
        assert torch.equal(changed, torch.arange(dest, dest + span)) and 3 <= span <= 16
        source = int((orig == row[dest]).nonzero())  # where the copied first token sits in the original
        assert source + span <= dest and torch.equal(row[dest:dest + span], orig[source:source + span])


def test_repeat_spans_reject_impossible_settings() -> None:
    rows = torch.zeros(4, 9, dtype=torch.long)
    with pytest.raises(ValueError, match="min_span"):
        repeat_spans(rows, 0.5, min_span=5)  # 8 positions after BOS hold at most two spans of 4
    with pytest.raises(ValueError, match="fraction"):
        repeat_spans(rows, 1.5)
    assert torch.equal(repeat_spans(rows, 0.0, min_span=2)[0], rows)


def test_probes_read_a_wrapped_hf_model_as_its_native_twin() -> None:
    transformers = pytest.importorskip("transformers")
    import hookscope

    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=53, n_embd=16, n_layer=11, n_head=2,
                                                              n_positions=40, bos_token_id=0, eos_token_id=0)).eval()
    wrapped, native = hookscope.wrap(hf), hookscope.load(hf)
    tokens = repeated_random_tokens(9, batch=3, vocab=53, bos=0, seed=2)
    scores = induction_scores(wrapped, tokens, 9)
    assert scores.shape == (11, 2)  # layers in numeric order (blocks.10 after blocks.9)
    torch.testing.assert_close(scores, induction_scores(native, tokens, 9), atol=1e-5, rtol=1e-5)
    assert repeated_half_losses(wrapped, tokens, 9) == pytest.approx(repeated_half_losses(native, tokens, 9), rel=1e-5)
