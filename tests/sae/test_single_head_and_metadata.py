"""Single-head SAEs on ``hook_z`` (SAELens's ``hook_head_index``), the sparse TopK training step, and the
SAELens metadata a training run records."""

from __future__ import annotations

import json

import pytest
import torch

import hookscope
from hookscope.sae import SAE, SAEConfig, SAETrainingConfig, evaluate_sae, harvest, load_sae, train_sae
from hookscope.sae.evaluate import reconstruction_metrics
from hookscope.sae.losses import LossWeights, sae_loss
from tests.equivalence.decoder_configs import random_hf_model, random_tokens

HOOK_Z = "blocks.1.attn.hook_z"
HEAD = 2


@pytest.fixture(scope="module")
def model() -> hookscope.Decoder:
    return hookscope.load(random_hf_model("llama", torch.float64), dtype=torch.float64)


def _head_sae(d_head: int, arch: str = "standard", k: int | None = None) -> SAE:
    sae = SAE(SAEConfig(d_in=d_head, d_sae=20, architecture=arch, k=k, hook_name=HOOK_Z, hook_head_index=HEAD,
                        dtype="float64"), seed=3)
    gen = torch.Generator().manual_seed(4)
    with torch.no_grad():
        sae.b_enc.copy_(torch.randn(20, generator=gen, dtype=torch.float64) * 0.1)
        sae.b_dec.copy_(torch.randn(d_head, generator=gen, dtype=torch.float64) * 0.1)
    return sae.eval()


def _by_hand(sae: SAE, z: torch.Tensor) -> torch.Tensor:
    """hook_z with head HEAD replaced by ReLU((z_h - b_dec) W_enc + b_enc) W_dec + b_dec, the others as they are."""
    zh = z[:, :, HEAD]
    recons = torch.relu((zh - sae.b_dec) @ sae.W_enc + sae.b_enc) @ sae.W_dec + sae.b_dec
    out = z.clone()
    out[:, :, HEAD] = recons
    return out


def test_a_spliced_single_head_sae_replaces_only_its_head_as_computed_by_hand(model) -> None:
    tokens = random_tokens(2, 6)
    d_head = model.cfg.d_head
    sae = _head_sae(d_head)
    _, cache = model.run_with_cache(tokens, names_filter=HOOK_Z)
    z = cache[HOOK_Z]  # [batch, pos, head_index, d_head]
    expected_z = _by_hand(sae, z).detach()
    expected = model.run_with_hooks(tokens, fwd_hooks=[(HOOK_Z, lambda act, hook: expected_z)])
    with model.saes(sae):
        out, spliced_cache = model.run_with_cache(tokens)
    torch.testing.assert_close(out, expected, atol=1e-10, rtol=1e-10)
    acts = spliced_cache[f"{HOOK_Z}.hook_sae_acts_post"]
    assert acts.shape == (2, 6, 20)
    torch.testing.assert_close(acts, torch.relu((z[:, :, HEAD] - sae.b_dec) @ sae.W_enc + sae.b_enc))
    clean = model(tokens)
    with model.saes(sae, use_error_term=True):
        assert torch.equal(model(tokens), clean)


def test_single_head_harvest_training_and_evaluation_read_that_head(model, tmp_path) -> None:
    tokens = random_tokens(4, 9)
    z = model.run_with_cache(tokens, names_filter=HOOK_Z)[1][HOOK_Z]
    rows = harvest(model, HOOK_Z, tokens, batch_size=2, head_index=HEAD, progress=False, dtype=torch.float64)
    torch.testing.assert_close(rows, z[:, :, HEAD].reshape(-1, model.cfg.d_head), atol=1e-12, rtol=1e-12)
    cfg = SAETrainingConfig(architecture="topk", d_sae=16, k=3, training_tokens=36 * 6, batch_size=36,
                            buffer_size=72, hook_head_index=HEAD, progress=False, dtype="float64")
    sae = train_sae(model, HOOK_Z, tokens, cfg)
    assert sae.cfg.d_in == model.cfg.d_head and sae.cfg.hook_head_index == HEAD
    # the metrics read the head from a raw hook_z activation the same as from its rows
    assert reconstruction_metrics(sae, z) == reconstruction_metrics(sae, z[:, :, HEAD])
    ev = evaluate_sae(model, sae, tokens)
    mean = z[:, :, HEAD].reshape(-1, model.cfg.d_head).mean(0)

    def only_head(value):
        def hook(act, hook):
            out = act.clone()
            out[:, :, HEAD] = value(act[:, :, HEAD])
            return out
        return hook

    for ablation, fill in (("zero_ablation_loss", torch.zeros_like), ("mean_ablation_loss", mean.expand_as)):
        with torch.no_grad():
            logits = model.run_with_hooks(tokens, fwd_hooks=[(HOOK_Z, only_head(fill))])
        by_hand = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                                    tokens[:, 1:].reshape(-1))
        assert getattr(ev, ablation) == pytest.approx(float(by_hand), rel=1e-9)
    sae.save(tmp_path)
    raw = json.loads((tmp_path / "cfg.json").read_text())
    assert raw["metadata"]["hook_head_index"] == HEAD and raw["reshape_activations"] == "none"
    back = load_sae(tmp_path, dtype="float64")
    assert back.cfg.hook_head_index == HEAD
    torch.testing.assert_close(back(z), sae(z))


def test_a_saelens_folder_with_hook_head_index_loads_and_splices(model, tmp_path) -> None:
    d_head = model.cfg.d_head
    sae = _head_sae(d_head)
    sae.save(tmp_path)
    raw = json.loads((tmp_path / "cfg.json").read_text())
    raw["metadata"] = {"sae_lens_version": "6.54.12", "hook_name": HOOK_Z, "hook_head_index": 1}
    (tmp_path / "cfg.json").write_text(json.dumps(raw))
    loaded = load_sae(tmp_path, dtype="float64")
    assert loaded.cfg.hook_head_index == 1
    z = torch.randn(2, 3, model.cfg.n_heads, d_head, dtype=torch.float64)
    out = loaded(z)
    torch.testing.assert_close(out[:, :, [0, 2, 3]], z[:, :, [0, 2, 3]], atol=0, rtol=0)
    torch.testing.assert_close(out[:, :, 1], loaded(z[:, :, 1]))
    raw["metadata"]["hook_head_index"] = "two"
    (tmp_path / "cfg.json").write_text(json.dumps(raw))
    with pytest.raises(ValueError, match="is not a head number"):
        load_sae(tmp_path)


def test_single_head_errors_say_what_is_wrong(model) -> None:
    sae = _head_sae(model.cfg.d_head)
    with pytest.raises(ValueError, match="reads head 2 of a"):
        sae(torch.zeros(1, 2, 2, model.cfg.d_head, dtype=torch.float64))  # only two heads
    with pytest.raises(ValueError, match="head_index=2 needs a"):
        harvest(model, "blocks.0.hook_resid_post", random_tokens(1, 4), head_index=2, progress=False)
    with pytest.raises(ValueError, match="hook_head_index must be"):
        SAEConfig(d_in=4, d_sae=8, hook_head_index=-1)


@pytest.mark.parametrize("dead_count", [0, 5, 40])
def test_the_sparse_topk_training_step_equals_the_dense_formula_ranking_by_decoder_norms(dead_count: int) -> None:
    gen = torch.Generator().manual_seed(0)
    sae = SAE(SAEConfig(d_in=24, d_sae=64, architecture="topk", k=5, dtype="float64"), seed=1).train()
    with torch.no_grad():
        sae.b_enc.copy_(torch.randn(64, generator=gen, dtype=torch.float64) * 0.3)
        sae.b_dec.copy_(torch.randn(24, generator=gen, dtype=torch.float64) * 0.3)
        sae.W_dec.mul_(torch.rand(64, 1, generator=gen, dtype=torch.float64) * 20 + 0.5)  # unequal row norms
    x = torch.randn(33, 24, generator=gen, dtype=torch.float64)
    dead = torch.zeros(64, dtype=torch.bool)
    dead[torch.randperm(64, generator=gen)[:dead_count]] = True
    weights = LossWeights(aux_k=0.25, aux_k_size=12)
    loss, parts = sae_loss(sae, x, weights, dead)
    grads = torch.autograd.grad(loss, [sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec])

    # by hand, dense, as SAELens trains TopK: rank by pre-activation x |W_dec[i]|, decode along the unit row;
    # aux: the top k_aux dead latents (same ranking) reconstruct the residual
    norms = sae.W_dec.norm(dim=-1)
    pre = ((x - sae.b_dec) @ sae.W_enc + sae.b_enc) * norms
    values, idx = pre.topk(5, dim=-1)
    acts = torch.zeros_like(pre).scatter(-1, idx, torch.relu(values))
    recons = (acts / norms) @ sae.W_dec + sae.b_dec
    expected = (x - recons).pow(2).sum(-1).mean()
    if dead_count:
        k_aux = min(12, dead_count)
        dead_pre = pre.masked_fill(~dead, float("-inf"))
        v, i = dead_pre.topk(k_aux, dim=-1)
        aux = (torch.zeros_like(pre).scatter(-1, i, torch.relu(v)) / norms) @ sae.W_dec
        residual = (x - recons).detach()
        expected = expected + 0.25 * min(dead_count / 12, 1.0) * (aux - residual).pow(2).sum(-1).mean()
    expected_grads = torch.autograd.grad(expected, [sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec])
    torch.testing.assert_close(loss, expected, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(parts["acts"], acts.detach(), atol=1e-10, rtol=1e-10)
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-10)


def test_topk_in_bfloat16_trains_on_the_dense_path_with_the_same_ranking() -> None:
    gen = torch.Generator().manual_seed(3)
    sae = SAE(SAEConfig(d_in=16, d_sae=48, architecture="topk", k=4, dtype="bfloat16"), seed=1).train()
    with torch.no_grad():
        sae.W_dec.mul_((torch.rand(48, 1, generator=gen) * 20 + 0.5).to(torch.bfloat16))
    x = torch.randn(20, 16, generator=gen).to(torch.bfloat16)
    loss, parts = sae_loss(sae, x, LossWeights(), None)
    w = {n: getattr(sae, n).detach().double() for n in ("W_enc", "b_enc", "W_dec", "b_dec")}
    norms = w["W_dec"].norm(dim=-1)
    pre = ((x.double() - w["b_dec"]) @ w["W_enc"] + w["b_enc"]) * norms
    values, idx = pre.topk(4, dim=-1)
    acts = torch.zeros_like(pre).scatter(-1, idx, torch.relu(values))
    expected = (x.double() - (acts / norms) @ w["W_dec"] - w["b_dec"]).pow(2).sum(-1).mean()
    assert float(loss.detach()) == pytest.approx(float(expected), rel=5e-2)
    assert torch.equal((parts["acts"] != 0).sum(-1), torch.full((20,), 4))


@pytest.mark.parametrize("sparse", [True, False])
def test_the_standard_training_step_equals_the_dense_formula_sparse_or_not(sparse: bool) -> None:
    gen = torch.Generator().manual_seed(2)
    sae = SAE(SAEConfig(d_in=24, d_sae=300, architecture="standard", dtype="float64"), seed=1).train()
    with torch.no_grad():  # a very negative encoder bias leaves few latents firing: the sparse path
        sae.b_enc.copy_(torch.randn(300, generator=gen, dtype=torch.float64) * 0.1 - (0.25 if sparse else 0.0))
        sae.b_dec.copy_(torch.randn(24, generator=gen, dtype=torch.float64) * 0.3)
        sae.W_dec.mul_(torch.rand(300, 1, generator=gen, dtype=torch.float64) * 3 + 0.5)
    x = torch.randn(40, 24, generator=gen, dtype=torch.float64)
    params = [sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec]
    loss, parts = sae_loss(sae, x, LossWeights(l1=0.7), None)
    grads = torch.autograd.grad(loss, params)
    acts = torch.relu((x - sae.b_dec) @ sae.W_enc + sae.b_enc)
    density = float((acts > 0).float().mean())
    assert (density < 0.08) == sparse and 0 < density
    recons = acts @ sae.W_dec + sae.b_dec
    expected = (x - recons).pow(2).sum(-1).mean() + 0.7 * (acts * sae.W_dec.norm(dim=-1)).sum(-1).mean()
    torch.testing.assert_close(loss, expected, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(parts["acts"], acts.detach(), atol=1e-10, rtol=1e-10)
    for got, want in zip(grads, torch.autograd.grad(expected, params)):
        torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-10)


class _CharTokenizer:
    bos_token_id, eos_token_id = 1, 2

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict:
        return {"input_ids": [3 + ord(c) % 90 for c in text]}


def test_training_records_saelens_metadata_of_its_data(tmp_path) -> None:
    model = hookscope.load(random_hf_model("llama"))
    model.tokenizer = _CharTokenizer()
    base = dict(architecture="topk", d_sae=16, k=2, batch_size=32, training_tokens=64, buffer_size=64,
                progress=False)
    sae = train_sae(model, "blocks.0.hook_resid_post", ["some text to pack"] * 20,
                    SAETrainingConfig(context_size=16, skip_first_positions=1, **base))
    sae.save(tmp_path / "texts")
    meta = json.loads((tmp_path / "texts" / "cfg.json").read_text())["metadata"]
    assert meta["context_size"] == 16 and meta["prepend_bos"] is True and meta["seqpos_slice"] == [1, None]
    assert meta["sequence_separator_token"] == "eos" and meta["disable_concat_sequences"] is False
    ids = random_tokens(4, 12)
    sae = train_sae(model, "blocks.0.hook_resid_post", ids, SAETrainingConfig(**base))
    assert sae.cfg.metadata["context_size"] == 12 and sae.cfg.metadata["prepend_bos"] is False
    assert "seqpos_slice" not in sae.cfg.metadata
    ids[:, 0] = 1
    given = SAETrainingConfig(**base, metadata={"dataset_path": "my/data", "context_size": 99})
    sae = train_sae(model, "blocks.0.hook_resid_post", ids, given)
    assert sae.cfg.metadata["prepend_bos"] is True
    assert sae.cfg.metadata["dataset_path"] == "my/data" and sae.cfg.metadata["context_size"] == 99
