"""Tiny end-to-end SAE trainings per modality; evaluation metrics against independent computations; harvesting."""

from __future__ import annotations

import math

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


def test_checkpoints_are_loadable_saelens_folders(tmp_path) -> None:
    acts = torch.randn(256, 12, generator=torch.Generator().manual_seed(0))
    cfg = _config("jumprelu", training_tokens=64 * 6, checkpoint_every=3, checkpoint_dir=str(tmp_path), log_every=3)
    train_sae(None, "blocks.0.hook_resid_post", acts, cfg)
    folders = sorted(p.name for p in tmp_path.iterdir())
    assert folders == ["step_0000003", "step_0000006"]
    loaded = SAE.load(tmp_path / "step_0000006")
    assert loaded.cfg.architecture == "jumprelu" and loaded.hook_name == "blocks.0.hook_resid_post"
    state = torch.load(tmp_path / "step_0000006" / "trainer_state.pt", weights_only=True)
    assert state["step"] == 6


def test_resampling_revives_dead_latents_of_a_standard_sae() -> None:
    gen = torch.Generator().manual_seed(0)
    acts = torch.randn(512, 10, generator=gen) @ torch.randn(10, 10, generator=gen)
    # an L1 this strong kills most latents; resampling every 20 steps gives them new directions
    common = dict(training_tokens=64 * 60, l1_coefficient=50.0, dead_feature_window=10, log_every=59)
    dead = train_sae(None, None, acts, _config("standard", **common))
    revived = train_sae(None, None, acts, _config("standard", resample_every=20, **common))
    assert revived.history[-1]["dead_fraction"] < dead.history[-1]["dead_fraction"]
