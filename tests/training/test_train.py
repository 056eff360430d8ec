"""hookscope.training.train: the loss falls, runs are reproducible, resume is bit-exact, accumulation and
schedules are what they claim, and BERT (masked LM) and wrap()'ed HF models train too."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch

from hookscope.models.decoder import Decoder
from hookscope.models.decoder_config import DecoderConfig
from hookscope.training import (
    MaskedLMCollator,
    TrainingConfig,
    batch_indices,
    lr_factor,
    ngram_losses,
    token_rows,
    train,
)

VOCAB = 29


def _rows(n: int = 24, pos: int = 12, seed: int = 0) -> torch.Tensor:
    """Rows of a simple language: each token is often the previous one plus 1 (learnable, not trivial)."""
    gen = torch.Generator().manual_seed(seed)
    start = torch.randint(0, VOCAB, (n, 1), generator=gen)
    steps = torch.where(torch.rand(n, pos, generator=gen) < 0.8, 1, torch.randint(0, VOCAB, (n, pos), generator=gen))
    return (start + steps.cumsum(1)) % VOCAB


def _model(seed: int = 0, dtype: torch.dtype = torch.float32) -> Decoder:
    cfg = DecoderConfig(d_model=24, n_layers=1, n_heads=2, d_head=12, d_mlp=20, d_vocab=VOCAB, n_ctx=16)
    return Decoder.from_config(cfg, seed=seed).to(dtype)


def _config(**kw) -> TrainingConfig:
    return TrainingConfig(**{"steps": 6, "batch_size": 8, "lr": 3e-3, "warmup_steps": 2, "progress": False, **kw})


def test_loss_falls_below_the_ngram_baselines_and_outputs_are_written(tmp_path) -> None:
    rows = _rows()
    baselines = ngram_losses(rows)
    model = _model()
    result = train(model, rows, _config(steps=60, lr=1e-2, out_dir=str(tmp_path), eval_every=20),
                   eval_data=_rows(8, seed=1), baselines=baselines)
    assert result.losses[0] > baselines["unigram"] > baselines["bigram"]
    assert result.losses[-1] < baselines["bigram"]  # past the bigram level: it uses more than the last token
    assert [s for s, _ in result.eval_losses] == [20, 40, 60]
    logged = json.loads((tmp_path / "log.json").read_text())
    assert logged["log"] == result.log and logged["baselines"] == baselines
    assert (tmp_path / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert all(e["tokens_per_s"] > 0 for e in result.log)
    assert result.log[-1]["tokens"] == 60 * 8 * 12


def test_same_seed_same_run_other_seed_other_run() -> None:
    rows = _rows()
    runs = [train(_model(), rows, _config(seed=s)) for s in (0, 0, 1)]
    assert runs[0].losses == runs[1].losses and runs[0].losses != runs[2].losses


def test_resume_from_a_checkpoint_is_bit_exact(tmp_path) -> None:
    rows = _rows()
    straight = _model()
    reference = train(straight, rows, _config(steps=6, grad_accum_steps=2))
    cfg = _config(steps=6, grad_accum_steps=2, out_dir=str(tmp_path), checkpoint_every=3)
    train(_model(), rows, cfg)
    shutil.rmtree(tmp_path / "checkpoints" / "step_0000006")  # as if the run had died after step 3
    resumed_model = _model(seed=123)  # different weights: all must come from the checkpoint
    resumed = train(resumed_model, rows, cfg)
    assert resumed.losses == reference.losses  # steps 1-3 from the log, 4-6 recomputed
    for (name, a), b in zip(straight.state_dict().items(), resumed_model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_gradient_accumulation_equals_one_big_batch_in_float64() -> None:
    rows = _rows()
    one, four = _model(dtype=torch.float64), _model(dtype=torch.float64)
    a = train(one, rows, _config(grad_accum_steps=1))
    b = train(four, rows, _config(grad_accum_steps=4))
    assert a.losses == pytest.approx(b.losses, rel=1e-12)
    for p, q in zip(one.parameters(), four.parameters(), strict=True):
        torch.testing.assert_close(p, q, atol=1e-12, rtol=1e-12)


def test_learning_rate_follows_warmup_then_cosine() -> None:
    cfg = _config(steps=10, warmup_steps=4, lr=1.0, min_lr_ratio=0.1)
    factors = [lr_factor(s, cfg) for s in range(10)]
    assert factors[:4] == [0.25, 0.5, 0.75, 1.0]
    assert factors[4] == 1.0
    assert factors[7] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 3 / 6)))
    logged = [e["lr"] for e in train(_model(), _rows(), cfg).log]
    assert logged == pytest.approx(factors)


def test_batches_cover_every_row_once_per_epoch() -> None:
    seen = torch.cat([batch_indices(10, s, 4, seed=3) for s in range(5)])  # 20 rows = 2 epochs
    assert sorted(seen[:10].tolist()) == list(range(10)) and sorted(seen[10:].tolist()) == list(range(10))
    assert not torch.equal(seen[:10], seen[10:])


def test_bf16_autocast_trains() -> None:
    result = train(_model(), _rows(), _config(steps=20, lr=1e-2, bf16=True))
    assert result.losses[-1] < result.losses[0] - 0.5


def test_bert_trains_with_the_masked_lm_collator() -> None:
    import transformers as T

    import hookscope

    torch.manual_seed(0)
    hf = T.BertForMaskedLM(T.BertConfig(vocab_size=VOCAB + 1, hidden_size=24, num_hidden_layers=1,
                                        num_attention_heads=2, intermediate_size=20, max_position_embeddings=16))
    model = hookscope.load(hf)
    collator = MaskedLMCollator(mask_token_id=VOCAB, vocab_size=VOCAB + 1, mask_prob=0.3)
    rows = torch.randint(0, VOCAB, (48, 1), generator=torch.Generator().manual_seed(0)).expand(48, 12)
    # each row repeats one token: a masked token is read off its neighbours (bidirectional attention)
    result = train(model, rows, _config(steps=40, lr=1e-2, warmup_steps=5), collator=collator)
    assert sum(result.losses[-10:]) / 10 < sum(result.losses[:10]) / 10 - 0.4


def test_masked_lm_collator_corrupts_as_documented() -> None:
    rows = torch.randint(2, 50, (200, 50), generator=torch.Generator().manual_seed(0))
    rows[:, 0] = 0  # a special token, never chosen
    out = MaskedLMCollator(mask_token_id=1, vocab_size=50, special_token_ids=(0,))(rows, torch.Generator())
    chosen = out["targets"] != -100
    assert not chosen[:, 0].any()
    assert chosen.float().mean().item() == pytest.approx(0.15 * 49 / 50, abs=0.01)
    assert torch.equal(out["targets"][chosen], rows[chosen])
    masked = (out["input_ids"] == 1) & chosen
    assert masked.sum().item() / chosen.sum().item() == pytest.approx(0.8, abs=0.03)
    assert torch.equal(out["input_ids"][~chosen], rows[~chosen])


def test_a_wrapped_hf_model_trains() -> None:
    import transformers as T

    import hookscope

    torch.manual_seed(0)
    hf = T.GPT2LMHeadModel(T.GPT2Config(vocab_size=VOCAB, n_embd=24, n_layer=1, n_head=2, n_positions=16))
    result = train(hookscope.wrap(hf), _rows(), _config(steps=30, lr=1e-2))
    assert result.losses[-1] < result.losses[0] - 0.5


def test_bad_training_input_raises_clearly() -> None:
    with pytest.raises(ValueError, match="multiple of grad_accum_steps"):
        TrainingConfig(steps=2, batch_size=6, grad_accum_steps=4)
    with pytest.raises(ValueError, match="warmup_steps"):
        TrainingConfig(steps=2, warmup_steps=3)
    with pytest.raises(ValueError, match="checkpoint_every needs out_dir"):
        TrainingConfig(steps=2, checkpoint_every=1)
    with pytest.raises(ValueError, match="integer tensor"):
        token_rows(torch.rand(3, 4))
    with pytest.raises(TypeError, match="same length"):
        token_rows([[1, 2], [3]])
    with pytest.raises(TypeError, match="token rows"):
        train(_model(), "some text", _config())


def test_loss_curve_draws_each_logged_probe_value_in_its_own_panel() -> None:
    from hookscope.viz.training_plot import plot_loss_curve, probe_keys

    log = [{"step": s, "loss": 3.0 - s / 10, "lr": 1e-3, "tokens": 64 * s, "tokens_per_s": 9.0} for s in range(1, 11)]
    for entry in log[4::5]:
        entry.update(induction_score=entry["step"] / 20, repeated_half_drop=entry["step"] / 5)
    assert probe_keys(log) == ["induction_score", "repeated_half_drop"]
    fig = plot_loss_curve(log, {"unigram": 2.5})
    _, score_ax, drop_ax = fig.axes
    assert [line.get_label() for line in score_ax.lines + drop_ax.lines] == ["induction_score", "repeated_half_drop"]
    assert list(score_ax.lines[0].get_xdata()) == [320, 640] and list(score_ax.lines[0].get_ydata()) == [0.25, 0.5]
    assert list(drop_ax.lines[0].get_ydata()) == [1.0, 2.0]
    assert len(plot_loss_curve(log[:4]).axes) == 1  # no probe logged: the loss panel alone
