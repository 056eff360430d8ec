"""The compiled CPU decode step's products: ``streaming_linear`` is F.linear up to rounding (and F.linear itself
wherever it does not apply), and ``generate(compile=True)`` re-lays a hookscope-laid model's linears row-major,
keeps tokens equal to HF's at batch 1 (where the reduction runs) and leaves other models' layouts alone."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import hookscope
from hookscope.components.layout import stream_layout, streaming_linear
from tests.equivalence.decoder_configs import random_hf_model, random_tokens


def _hf_greedy(hf: torch.nn.Module, tokens: torch.Tensor, new: int) -> torch.Tensor:
    with torch.no_grad():
        return hf.generate(tokens, max_new_tokens=new, do_sample=False, eos_token_id=None)


@pytest.mark.parametrize(("dtype", "rtol"), [(torch.float64, 1e-12), (torch.float32, 1e-5), (torch.bfloat16, 1e-2)])
@pytest.mark.parametrize("bias", [False, True])
def test_streaming_linear_of_one_row_equals_f_linear_up_to_rounding(
    dtype: torch.dtype, rtol: float, bias: bool
) -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 1, 37, generator=gen, dtype=torch.float64).to(dtype)
    weight = torch.randn(53, 37, generator=gen, dtype=torch.float64).to(dtype)  # row-major [out, in]
    b = torch.randn(53, generator=gen, dtype=torch.float64).to(dtype) if bias else None
    got = streaming_linear(x, weight, b)
    exact = F.linear(x.double(), weight.double(), None if b is None else b.double())  # the independent product
    assert got.shape == (1, 1, 53) and got.dtype == dtype
    torch.testing.assert_close(got.double(), exact, rtol=rtol, atol=rtol * exact.abs().max().item())


def test_streaming_linear_is_f_linear_for_more_rows_and_column_major_weights() -> None:
    gen = torch.Generator().manual_seed(1)
    weight = torch.randn(20, 12, generator=gen)
    column_major = weight.t().contiguous().t()
    rows, row = torch.randn(3, 2, 12, generator=gen), torch.randn(1, 1, 12, generator=gen)
    assert torch.equal(streaming_linear(rows, weight), F.linear(rows, weight))  # [3, 2] rows: MKL's product
    assert torch.equal(streaming_linear(row, column_major), F.linear(row, column_major))


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_compile_relays_linears_row_major_and_batch_one_tokens_equal_hf(name: str, compilations: list[int]) -> None:
    hf = random_hf_model(name)
    model = hookscope.load(hf)
    assert model.decode_layout == "eager" and not model.blocks[0].attn.q_proj.weight.is_contiguous()
    unembed_strides = model.unembed.weight.stride()
    tokens = random_tokens(1, 5, seed=3)
    eager = model.generate(tokens, 10, eos_token_id=[])
    out = model.generate(tokens, 10, eos_token_id=[], compile=True)
    assert torch.equal(out, _hf_greedy(hf, tokens, 10)) and torch.equal(out, eager) and compilations
    assert model.decode_layout == "compiled"
    linears = [m.weight for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert linears and all(w.is_contiguous() for w in linears)
    assert model.unembed.weight.stride() == unembed_strides  # the unembedding keeps MKL's layout
    assert torch.equal(model.generate(tokens, 10, eos_token_id=[]), eager)  # eager after it: the same tokens
    stream_layout(model)  # the eager layout back
    assert model.decode_layout == "eager" and not model.blocks[0].attn.q_proj.weight.is_contiguous()


def test_compile_keeps_the_layout_of_models_hookscope_did_not_lay_out(compilations: list[int]) -> None:
    hf = random_hf_model("gpt2")
    plain = hookscope.load(hf, decode_layout=False)  # GPT-2's Conv1D weights stay column-major
    before = {name: p.stride() for name, p in plain.named_parameters()}
    tokens = random_tokens(1, 4)
    assert torch.equal(plain.generate(tokens, 8, eos_token_id=[], compile=True), _hf_greedy(hf, tokens, 8))
    assert plain.decode_layout is None and {name: p.stride() for name, p in plain.named_parameters()} == before


def test_load_decode_layout_compiled_and_a_bad_value() -> None:
    model = hookscope.load(random_hf_model("llama"), decode_layout="compiled")
    assert model.decode_layout == "compiled"
    assert all(m.weight.is_contiguous() for m in model.modules() if isinstance(m, torch.nn.Linear))
    assert model.unembed.weight.t().is_contiguous()  # [d_vocab, d_model] column-major, as for "eager"
    with pytest.raises(ValueError, match="decode_layout must be"):
        hookscope.load(random_hf_model("llama"), decode_layout="fast")
    with pytest.raises(ValueError, match="mode must be"):
        stream_layout(model, "fast")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["gpt2", "llama", "gemma2"])
def test_inductor_streaming_products_give_hf_tokens_at_batch_one(name: str) -> None:
    torch._dynamo.reset()
    hf = random_hf_model(name)
    model = hookscope.load(hf)
    tokens = random_tokens(1, 6, seed=4)
    assert torch.equal(model.generate(tokens, 14, eos_token_id=[], compile=True), _hf_greedy(hf, tokens, 14))
    assert model.decode_layout == "compiled"
