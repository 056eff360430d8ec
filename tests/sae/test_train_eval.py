"""Tiny end-to-end SAE trainings per modality; evaluation metrics against independent computations; harvesting."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
import torch.nn.functional as F

import hookscope
from hookscope.models.vit_config import ViTConfig
from hookscope.sae import SAE, SAEConfig, SAETrainingConfig, evaluate_sae, harvest, train_sae
from hookscope.sae.evaluate import classification_change, reconstruction_metrics, word_error_rate
from hookscope.sae.store import ActivationStore, read_shards
from tests.equivalence.decoder_configs import random_hf_model, random_tokens
from tests.equivalence.whisper_cases import random_hf_whisper


def _config(arch: str, **kw) -> SAETrainingConfig:
    base = dict(architecture=arch, d_sae=64, k=8, training_tokens=64 * 80, batch_size=64, lr=3e-3,
                buffer_size=512, log_every=10, progress=False, dead_feature_window=20, l1_coefficient=0.5,
                l0_coefficient=1e-2, seed=0)
    return SAETrainingConfig(**{**base, **kw})


def _mse_fell(sae: SAE) -> bool:
    first, last = sae.history[0], sae.history[-1]
    return last["mse"] < 0.6 * first["mse"] and last["explained_variance"] > first["explained_variance"]


@pytest.fixture(scope="module")
def text_model() -> hookscope.Decoder:
    return hookscope.load(random_hf_model("llama"))


@pytest.mark.parametrize("arch", ["standard", "topk", "batchtopk", "jumprelu"])
def test_training_on_a_text_model_lowers_the_reconstruction_error(text_model, arch: str) -> None:
    tokens = random_tokens(48, 11)
    sae = train_sae(text_model, "blocks.1.hook_resid_post", tokens, _config(arch))
    assert _mse_fell(sae), sae.history
    assert sae.hook_name == "blocks.1.hook_resid_post" and not sae.training
    if arch in ("topk", "batchtopk"):
        torch.testing.assert_close(sae.W_dec.norm(dim=-1), torch.ones(64))
    acts = harvest(text_model, "blocks.1.hook_resid_post", tokens, progress=False)
    assert reconstruction_metrics(sae, acts)["explained_variance"] > 0.5


def test_training_is_reproducible_with_a_seed(text_model) -> None:
    tokens = random_tokens(16, 9)
    cfg = _config("topk", training_tokens=64 * 10)
    a = train_sae(text_model, "blocks.0.hook_mlp_out", tokens, cfg)
    b = train_sae(text_model, "blocks.0.hook_mlp_out", tokens, cfg)
    assert torch.equal(a.W_dec, b.W_dec) and torch.equal(a.b_enc, b.b_enc)


def test_training_on_a_speech_encoder_lowers_the_reconstruction_error() -> None:
    model = hookscope.load(random_hf_whisper())
    features = torch.randn(24, 11, 26, generator=torch.Generator().manual_seed(0))
    cfg = _config("topk", harvest_batch_size=4)
    sae = train_sae(model, "encoder.1.hook_resid_post", [(f,) for f in features.split(4)], cfg)
    assert _mse_fell(sae), sae.history


def _tiny_vit(seed: int = 0) -> hookscope.ViT:
    torch.manual_seed(seed)
    cfg = ViTConfig(d_model=24, n_layers=2, n_heads=2, d_head=12, d_mlp=40, image_size=(8, 8), patch_size=2,
                    n_channels=1, head="class", n_classes=10, norm_eps=1e-6)
    return hookscope.ViT(cfg).eval()


def test_training_on_a_vision_model_lowers_the_reconstruction_error() -> None:
    model = _tiny_vit()
    images = torch.randn(40, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    sae = train_sae(model, "blocks.0.hook_resid_post", images, _config("jumprelu", harvest_batch_size=8))
    assert _mse_fell(sae), sae.history
    labels = model(images).argmax(-1)
    change = classification_change(model, sae, images, labels)
    assert change["accuracy_clean"] == 1.0 and change["accuracy_change"] <= 0


def test_evaluation_equals_an_independent_computation(text_model) -> None:
    tokens = random_tokens(6, 9)
    name = "blocks.1.hook_resid_post"
    sae = train_sae(text_model, name, tokens, _config("topk", training_tokens=64 * 5))
    ev = evaluate_sae(text_model, sae, tokens, batch_size=4)
    resid = text_model(tokens, stop_at_layer=2)  # the residual stream after block 1

    def loss(resid_at_hook: torch.Tensor) -> torch.Tensor:
        logits = text_model(resid_at_hook, start_at_layer=2, tokens=tokens)
        return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).double(), tokens[:, 1:].reshape(-1))

    clean, spliced = loss(resid), loss(sae(resid))
    zero, mean = loss(torch.zeros_like(resid)), loss(resid.mean((0, 1)).expand_as(resid).contiguous())
    clean, spliced, zero, mean = (float(v.detach()) for v in (clean, spliced, zero, mean))
    assert math.isclose(ev.clean_loss, clean, rel_tol=1e-5)
    assert math.isclose(ev.spliced_loss, spliced, rel_tol=1e-5)
    assert math.isclose(ev.zero_ablation_loss, zero, rel_tol=1e-5)
    assert math.isclose(ev.mean_ablation_loss, mean, rel_tol=1e-5)
    assert math.isclose(ev.loss_recovered, (zero - spliced) / (zero - clean), rel_tol=1e-4)
    p = F.log_softmax(text_model(tokens).double(), -1)
    q = F.log_softmax(text_model(sae(resid), start_at_layer=2, tokens=tokens).double(), -1)
    kl = float((p.exp() * (p - q)).sum(-1)[:, :-1].mean().detach())
    assert math.isclose(ev.kl_div, kl, rel_tol=1e-4, abs_tol=1e-7)
    x = resid.detach().reshape(-1, 48)
    with torch.no_grad():
        xh = sae(x)
    assert math.isclose(ev.explained_variance, 1 - ((x - xh) ** 2).sum() / ((x - x.mean(0)) ** 2).sum(), rel_tol=1e-4)
    assert math.isclose(ev.l0, (sae.encode(x) > 0).sum(-1).float().mean(), rel_tol=1e-6)


def test_word_error_rate_counts_edits_per_reference_word() -> None:
    assert word_error_rate(["the cat sat"], ["The cat sat."]) == 0.0
    assert word_error_rate(["the cat sat on the mat"], ["the bat sat the mat now"]) == 3 / 6
    assert word_error_rate(["a b", "c"], ["", "c d"]) == 3 / 3


def test_harvest_stops_at_the_hook_and_matches_the_cache(text_model, monkeypatch) -> None:
    tokens = random_tokens(5, 7)
    ran = []
    monkeypatch.setattr(text_model.blocks[2], "forward", lambda *a, **k: ran.append(1))
    acts = harvest(text_model, "blocks.1.hook_resid_post", tokens, batch_size=2, progress=False)
    monkeypatch.undo()
    _, cache = text_model.run_with_cache(tokens, names_filter="blocks.1.hook_resid_post")
    assert not ran
    torch.testing.assert_close(acts, cache["blocks.1.hook_resid_post"].reshape(-1, 48), atol=1e-5, rtol=1e-5)


def test_shards_written_once_are_read_back_by_a_second_run(text_model, tmp_path, monkeypatch) -> None:
    tokens = random_tokens(5, 7)
    first = harvest(text_model, "blocks.0.hook_resid_post", tokens, batch_size=2, shard_dir=tmp_path,
                    progress=False, dtype=torch.float16)
    assert len(list(tmp_path.glob("batch_*.safetensors"))) == 3 and first.dtype == torch.float16
    monkeypatch.setattr(type(text_model), "forward", lambda *a, **k: (_ for _ in ()).throw(AssertionError))
    again = harvest(text_model, "blocks.0.hook_resid_post", tokens, batch_size=2, shard_dir=tmp_path,
                    progress=False, dtype=torch.float16)
    assert torch.equal(first, again) and torch.equal(read_shards(tmp_path), first)


def test_the_store_serves_every_row_once_per_pass_shuffled() -> None:
    rows = torch.arange(100.0)[:, None].expand(100, 3)
    served = list(ActivationStore(rows, batch_size=8, buffer_size=32, seed=1, loop=False))
    values = torch.cat(served)[:, 0]
    assert sorted(values.tolist()) == list(range(100)) and not torch.equal(values, torch.arange(100.0))


def test_training_on_a_tensor_of_activations_and_config_errors() -> None:
    acts = torch.randn(512, 10) @ torch.randn(10, 10)
    sae = train_sae(None, None, acts, _config("standard", training_tokens=64 * 30))
    assert isinstance(sae, SAE) and _mse_fell(sae)
    with pytest.raises(ValueError, match="less than one batch"):
        SAETrainingConfig(training_tokens=10, batch_size=64)
    with pytest.raises(ValueError, match=r"\[rows, d_in\]"):
        train_sae(None, None, torch.zeros(4, 5, 6), _config("topk"))
    with pytest.raises(ValueError, match="checkpoint_dir"):
        SAETrainingConfig(checkpoint_every=5)
    with pytest.raises(ValueError, match="max_grad_norm"):
        SAETrainingConfig(max_grad_norm=0.0)
    with pytest.raises(ValueError, match="b_dec_init"):
        SAETrainingConfig(b_dec_init="median")
    assert SAEConfig(d_in=3, d_sae=4).architecture == "standard"


def test_evaluation_can_leave_the_first_position_unspliced(text_model) -> None:
    tokens = random_tokens(4, 8)
    name = "blocks.1.hook_resid_post"
    sae = train_sae(text_model, name, tokens, _config("topk", training_tokens=64 * 3))
    ev = evaluate_sae(text_model, sae, tokens, skip_first_positions=1)
    resid = text_model(tokens, stop_at_layer=2).detach()
    with torch.no_grad():
        patched = torch.cat([resid[:, :1], sae(resid[:, 1:])], dim=1)
        logits = text_model(patched, start_at_layer=2, tokens=tokens)
    expected = F.cross_entropy(logits[:, 1:-1].reshape(-1, logits.shape[-1]).double(), tokens[:, 2:].reshape(-1))
    assert math.isclose(ev.spliced_loss, float(expected), rel_tol=1e-5)


def test_gradient_clipping_bounds_the_update_before_adam() -> None:
    # one step: Adam moves each weight by about lr whatever the gradient's scale, unless clipping shrinks the
    # gradient below Adam's eps (1e-8), where the step vanishes; without clipping the weights move by ~lr
    acts = torch.randn(64, 10) @ torch.randn(10, 10)

    def one_step(**kw) -> SAE:
        return train_sae(None, None, acts, _config("standard", training_tokens=64, **kw))

    still = one_step(lr=1e-12)
    clipped, free = one_step(max_grad_norm=1e-14), one_step(max_grad_norm=None)
    assert (clipped.W_dec - still.W_dec).abs().max() < 3e-3 * 1e-4
    assert (free.W_dec - still.W_dec).abs().max() > 0.5 * 3e-3
    assert (one_step(max_grad_norm=1.0).W_dec - still.W_dec).abs().max() > 0.5 * 3e-3


def test_the_decoder_bias_starts_at_the_data_mean_or_at_zero() -> None:
    row = torch.randn(10) + 3.0
    acts = row + 1e-3 * torch.randn(256, 10)  # whichever rows the first batch holds, their mean is ~row
    still = {"lr": 1e-12, "training_tokens": 64}
    mean = train_sae(None, None, acts, _config("standard", **still))
    zeros = train_sae(None, None, acts, _config("standard", b_dec_init="zeros", **still))
    torch.testing.assert_close(mean.b_dec, row, atol=1e-3, rtol=0)
    assert zeros.b_dec.abs().max() < 1e-6


def test_checkpoints_are_loadable_saelens_folders(tmp_path) -> None:
    acts = torch.randn(256, 12, generator=torch.Generator().manual_seed(0))
    cfg = _config("jumprelu", training_tokens=64 * 6, checkpoint_every=3, checkpoint_dir=str(tmp_path), log_every=3)
    train_sae(None, "blocks.0.hook_resid_post", acts, cfg)
    folders = sorted(p.name for p in tmp_path.iterdir())
    assert folders == ["step_0000003", "step_0000006"]
    loaded = SAE.load(tmp_path / "step_0000006")
    assert loaded.cfg.architecture == "jumprelu" and loaded.hook_name == "blocks.0.hook_resid_post"
    state = json.loads((tmp_path / "step_0000006" / "trainer_state.json").read_text())
    assert state["step"] == 6 and [e["step"] for e in state["history"]] == [0, 3, 5]


def _assert_same_sae(a: SAE, b: SAE) -> None:
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(x, y), name


@pytest.mark.parametrize("arch,extra", [
    ("standard", {"resample_every": 4}), ("topk", {}), ("batchtopk", {}), ("jumprelu", {"resample_every": 4}),
])
def test_resuming_from_a_checkpoint_continues_bit_exactly(tmp_path, arch: str, extra: dict) -> None:
    gen = torch.Generator().manual_seed(4)
    acts = torch.randn(300, 12, generator=gen) @ torch.randn(12, 12, generator=gen)
    # a small mixing buffer, warmups, a decay and dead latents: every piece of trainer state matters
    common = dict(training_tokens=32 * 9, batch_size=32, buffer_size=64, log_every=1, dead_feature_window=2,
                  lr_warmup_steps=2, lr_decay_steps=4, l1_warmup_steps=5, **extra)
    straight = train_sae(None, None, acts, _config(arch, **common))
    cfg = _config(arch, checkpoint_every=3, checkpoint_dir=str(tmp_path), **common)
    train_sae(None, None, acts, cfg)
    for step in ("step_0000006", "step_0000009"):  # as if the run had died after step 3
        shutil.rmtree(tmp_path / step)
    resumed = train_sae(None, None, acts, cfg)
    assert resumed.history == straight.history  # steps 0-2 from the checkpoint's log, 3-8 recomputed
    _assert_same_sae(resumed, straight)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_0000003", "step_0000006", "step_0000009"]


def test_resuming_a_harvesting_run_replays_the_stream_to_the_checkpoint(text_model, tmp_path) -> None:
    tokens = random_tokens(16, 9)
    common = dict(training_tokens=24 * 6, batch_size=24, buffer_size=48, harvest_batch_size=4, log_every=1)
    straight = train_sae(text_model, "blocks.1.hook_resid_post", tokens, _config("topk", **common))
    cfg = _config("topk", checkpoint_every=2, checkpoint_dir=str(tmp_path), **common)
    train_sae(text_model, "blocks.1.hook_resid_post", tokens, cfg)
    shutil.rmtree(tmp_path / "step_0000006")
    resumed = train_sae(text_model, "blocks.1.hook_resid_post", tokens, cfg)
    assert resumed.history == straight.history
    _assert_same_sae(resumed, straight)


def test_resuming_with_other_settings_or_resume_off(tmp_path) -> None:
    acts = torch.randn(128, 12, generator=torch.Generator().manual_seed(0))
    cfg = _config("topk", training_tokens=64 * 4, checkpoint_every=2, checkpoint_dir=str(tmp_path))
    first = train_sae(None, None, acts, cfg)
    with pytest.raises(ValueError, match=r"other settings \(\['lr'\]\)"):
        train_sae(None, None, acts, _config("topk", training_tokens=64 * 4, checkpoint_every=2,
                                            checkpoint_dir=str(tmp_path), lr=1e-3))
    with pytest.raises(ValueError, match=r"other settings \(\['max_grad_norm'\]\)"):
        train_sae(None, None, acts, _config("topk", training_tokens=64 * 4, checkpoint_every=2,
                                            checkpoint_dir=str(tmp_path), max_grad_norm=None))
    # the decoder bias's start is overwritten by the checkpoint: changing it resumes the same run
    resumed = train_sae(None, None, acts, _config("topk", training_tokens=64 * 4, checkpoint_every=2,
                                                  checkpoint_dir=str(tmp_path), b_dec_init="zeros"))
    _assert_same_sae(first, resumed)
    # resume=False trains from scratch (and gives the same SAE: same seed, same data)
    again = train_sae(None, None, acts, _config("topk", training_tokens=64 * 4, checkpoint_every=2,
                                                checkpoint_dir=str(tmp_path), resume=False))
    _assert_same_sae(first, again)


def test_resampling_revives_dead_latents_of_a_standard_sae() -> None:
    gen = torch.Generator().manual_seed(0)
    acts = torch.randn(512, 10, generator=gen) @ torch.randn(10, 10, generator=gen)
    # an L1 this strong kills most latents; resampling every 20 steps gives them new directions
    common = dict(training_tokens=64 * 60, l1_coefficient=50.0, dead_feature_window=10, log_every=59)
    dead = train_sae(None, None, acts, _config("standard", **common))
    revived = train_sae(None, None, acts, _config("standard", resample_every=20, **common))
    assert revived.history[-1]["dead_fraction"] < dead.history[-1]["dead_fraction"]


@pytest.mark.parametrize("norm", ["layer_norm", "constant_norm_rescale"])
def test_training_with_a_per_input_normalisation_keeps_it_at_inference(tmp_path, norm: str) -> None:
    gen = torch.Generator().manual_seed(1)
    acts = (torch.randn(512, 12, generator=gen) @ torch.randn(12, 12, generator=gen)) * 5 + 3
    sae = train_sae(None, None, acts, _config("topk", normalize_activations=norm, training_tokens=64 * 60))
    assert sae.cfg.normalize_activations == norm and float(sae.norm_scaling_factor) == 1.0
    assert _mse_fell(sae)
    sae.save(tmp_path)
    assert json.loads((tmp_path / "cfg.json").read_text())["normalize_activations"] == norm
    torch.testing.assert_close(SAE.load(tmp_path)(acts), sae(acts))
