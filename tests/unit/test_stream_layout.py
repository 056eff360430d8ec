"""The decoding weight layout: loaded models store their wide matrices column-major, with the same parameters,
values and ties, and compute the same function as before (products of 8+ rows bit for bit); they checkpoint and
resume."""

from __future__ import annotations

import pytest
import torch
import transformers
from torch import nn

import hookscope
from hookscope.components.layout import relayout_target, stream_layout


def _gpt2(tied: bool = True) -> transformers.GPT2LMHeadModel:
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_embd=48, n_head=4, n_layer=2, vocab_size=101, n_positions=64,
                                  tie_word_embeddings=tied)
    return transformers.GPT2LMHeadModel(cfg).eval()


def test_loaded_model_stores_wide_matrices_column_major_and_narrow_ones_row_major() -> None:
    model = hookscope.load(_gpt2(), progress=False)
    up, down = model.blocks[0].mlp.up_proj.weight, model.blocks[0].mlp.down_proj.weight  # [192, 48], [48, 192]
    assert up.shape == (192, 48) and up.t().is_contiguous() and not up.is_contiguous()
    # GPT-2's Conv1D weights arrive column-major: the narrow one is made row-major
    assert down.shape == (48, 192) and down.is_contiguous()
    q = model.blocks[1].attn.q_proj.weight  # square, a slice of c_attn: made column-major
    assert q.t().is_contiguous()
    assert model.unembed.weight.t().is_contiguous()


def test_decode_layout_false_keeps_the_arriving_layout_and_a_relaid_model_checkpoints_and_reloads(tmp_path) -> None:
    from hookscope.training.checkpoint import load_model_tensors, save_model_tensors

    plain = hookscope.load(_gpt2(), progress=False, decode_layout=False)
    relaid = hookscope.load(_gpt2(), progress=False)
    # GPT-2's Conv1D weights arrive column-major: left so, or made row-major where that streams faster
    assert not plain.blocks[0].mlp.down_proj.weight.is_contiguous()
    assert relaid.blocks[0].mlp.down_proj.weight.is_contiguous()
    assert not relaid.blocks[0].mlp.up_proj.weight.is_contiguous()
    save_model_tensors(relaid, tmp_path / "m.safetensors")  # tied unembedding saved once, strided ones copied
    load_model_tensors(plain, tmp_path / "m.safetensors")
    assert plain.unembed.weight is plain.embed.weight  # the tie survives the round trip
    for (name, a), b in zip(plain.state_dict().items(), relaid.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    tokens = torch.tensor([[3, 1, 4, 1, 5, 9, 2, 6]])
    torch.testing.assert_close(plain(tokens), relaid(tokens), atol=1e-5, rtol=0)


def test_relaid_parameters_keep_identity_values_and_ties() -> None:
    torch.manual_seed(1)
    model = hookscope.Decoder(hookscope.DecoderConfig(
        n_layers=1, d_model=24, n_heads=2, d_head=12, d_mlp=40, d_vocab=57, n_ctx=32, tie_embeddings=True))
    params = dict(model.named_parameters())
    before = {name: p.detach().clone() for name, p in params.items()}
    assert model.embed.weight is model.unembed.weight
    n = stream_layout(model)
    assert n == 6  # q, k, v, o (square), up (40 x 24), the tied table once; down (24 x 40) stays row-major
    assert model.blocks[0].mlp.down_proj.weight.is_contiguous()
    after = dict(model.named_parameters())
    assert all(after[name] is params[name] for name in params)
    assert all(torch.equal(before[name], after[name]) for name in params)
    assert model.embed.weight is model.unembed.weight and model.unembed.weight.t().is_contiguous()
    assert stream_layout(model) == 0  # already laid out


def test_in_place_weight_writes_keep_the_layout_and_are_seen_by_the_forward() -> None:
    model = hookscope.load(_gpt2(), progress=False)
    tokens = torch.randint(0, 101, (2, 9))
    with torch.no_grad():
        before = model(tokens)
        model.blocks[0].mlp.up_proj.weight[5] = 0.0
        model.blocks[0].mlp.up_proj.weight.mul_(1.5)
        after = model(tokens)
    assert model.blocks[0].mlp.up_proj.weight.t().is_contiguous()
    assert not torch.allclose(before, after)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_relaid_model_matches_the_model_before_within_rounding(dtype: torch.dtype) -> None:
    hf = _gpt2(tied=False)
    laid = hookscope.load(hf, progress=False, dtype=dtype)
    plain = hookscope.load(hf, progress=False, dtype=dtype)
    with torch.no_grad():
        for p in plain.parameters():
            p.data = p.data.contiguous()
        tol = 1e-6 if dtype == torch.float32 else 1e-13
        for shape in ((2, 8), (1, 1)):
            tokens = torch.randint(0, 101, shape)
            torch.testing.assert_close(laid(tokens), plain(tokens), rtol=tol, atol=tol)


def test_wide_cpu_float_matrices_go_column_major_and_narrow_ones_row_major() -> None:
    assert relayout_target(torch.empty(8, 4)) == "column"
    assert relayout_target(torch.empty(4, 4)) == "column"
    assert relayout_target(torch.empty(4, 8, dtype=torch.float64).t()) is None  # already column-major
    assert relayout_target(torch.empty(8, 4).t()) == "row"
    assert relayout_target(torch.empty(4, 8)) is None
    assert relayout_target(torch.empty(8, 4, dtype=torch.bfloat16)) is None  # no faster there (compute-bound)
    assert relayout_target(torch.empty(8)) is None
    assert relayout_target(torch.empty(8, 4, device="meta")) is None


def test_conv_and_embedding_only_modules_are_left_alone() -> None:
    module = nn.Sequential(nn.Conv1d(4, 8, 3), nn.Embedding(10, 4))
    assert stream_layout(module) == 0
    assert all(p.is_contiguous() for p in module.parameters())


def test_a_loaded_model_with_strided_weights_checkpoints_and_resumes_exactly(tmp_path) -> None:
    import shutil

    from hookscope.training import TrainingConfig, train

    rows = torch.randint(0, 101, (16, 12), generator=torch.Generator().manual_seed(0))
    config = TrainingConfig(steps=4, batch_size=4, lr=1e-2, out_dir=str(tmp_path), checkpoint_every=2, progress=False)
    model = hookscope.load(_gpt2(), progress=False)
    assert not model.blocks[0].mlp.up_proj.weight.is_contiguous()
    straight = train(model, rows, config).losses
    shutil.rmtree(tmp_path / "checkpoints" / "step_0000004")  # as if the run had stopped after step 2
    model = hookscope.load(_gpt2(), progress=False)
    resumed = train(model, rows, config)
    assert resumed.losses == straight
