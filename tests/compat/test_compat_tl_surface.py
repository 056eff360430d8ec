"""The parts of TransformerLens's module surface that TL code imports by name: ``head_detector``'s constants,
``utils``' small helpers (initialisers checked against torch's own initialisers in torch's layout)."""

from __future__ import annotations

import typing

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import hookscope
from hookscope.analysis.svd_interpreter import SVDInterpreter
from hookscope.compat import (
    HookedTransformer,
    HookedTransformerConfig,
    HookedTransformerKeyValueCache,
    head_detector,
    utils,
)
from hookscope.compat import loading_from_pretrained as loading
from hookscope.errors import ConversionError, InputCheckError, ShapeMismatchError
from hookscope.factored_matrix import FactoredMatrix
from tests.compat.helpers import word_tokenizer
from tests.equivalence.decoder_configs import random_hf_model, random_tokens


def test_head_detector_exposes_tl_names() -> None:
    assert head_detector.HEAD_NAMES == ("previous_token_head", "duplicate_token_head", "induction_head")
    assert set(typing.get_args(head_detector.ErrorMeasure)) == {"abs", "mul"}
    assert set(typing.get_args(head_detector.HeadName)) == set(head_detector.HEAD_NAMES)
    assert head_detector.get_supported_heads() == head_detector.HEAD_NAMES
    assert "%s" in head_detector.INVALID_HEAD_NAME_ERR and "%d" in head_detector.DET_PAT_NOT_SQUARE_ERR
    assert head_detector.is_lower_triangular(torch.eye(3))


@pytest.mark.parametrize("x, square, lower", [
    (torch.ones(3, 3), True, False), (torch.ones(3, 3).tril(), True, True), (torch.zeros(1, 1), True, True),
    (torch.ones(3, 3).triu().T, True, True), (torch.ones(2, 3).tril(), False, False), (torch.tensor(2.0), False, False),
    (torch.zeros(2), False, False), (torch.tensor([]), False, False), (torch.ones(2, 2, 2), False, False),
])
def test_is_square_and_is_lower_triangular(x: torch.Tensor, square: bool, lower: bool) -> None:
    assert utils.is_square(x) is square
    assert utils.is_lower_triangular(x) is lower


def test_fan_in_and_fan_out_in_tl_layout() -> None:
    assert utils.calc_fan_in_and_fan_out(torch.empty(7)) == (1, 7)
    assert utils.calc_fan_in_and_fan_out(torch.empty(5, 9)) == (5, 9)  # [d_in, d_out]
    assert utils.calc_fan_in_and_fan_out(torch.empty(4, 6, 3)) == (6, 12)  # [n_heads, d_model, d_head]
    for bad in (torch.tensor(1.0), torch.empty(2, 2, 2, 2)):
        with pytest.raises(ValueError, match="fan in and fan out"):
            utils.calc_fan_in_and_fan_out(bad)


@pytest.mark.parametrize("shape", [(5, 9), (4, 6, 3)])
@pytest.mark.parametrize("kind", ["xavier_uniform", "xavier_normal", "kaiming_uniform", "kaiming_normal"])
def test_initialisers_match_torch_in_torch_layout(shape: tuple[int, ...], kind: str) -> None:
    # TL's [d_in, d_out] / [n_heads, d_model, d_head] is torch's [d_out, d_in] / [n_heads * d_head, d_model]:
    # same fans, same number of draws in the same order, so the same seed gives the same numbers
    torch_shape = (shape[1], shape[0]) if len(shape) == 2 else (shape[0] * shape[2], shape[1])
    extra = {} if kind.startswith("xavier") else dict(a=0.1, nonlinearity="leaky_relu")
    torch.manual_seed(3)
    ours = getattr(utils, f"init_{kind}_")(torch.empty(shape), **extra)
    torch.manual_seed(3)
    ref = getattr(nn.init, f"{kind}_")(torch.empty(torch_shape), **extra)
    torch.testing.assert_close(ours.flatten(), ref.flatten(), atol=1e-6, rtol=1e-6)


def test_initialiser_gain_mode_and_in_place() -> None:
    w = torch.empty(400, 300)
    out = utils.init_kaiming_normal_(w, nonlinearity="linear", gain=2.0, mode="fan_out")
    assert out is w
    assert abs(w.std().item() - 2.0 / 300 ** 0.5) < 0.01 * 2.0 / 300 ** 0.5 * 5
    utils.init_xavier_uniform_(w, gain=0.5)
    assert w.abs().max().item() <= 0.5 * (6 / 700) ** 0.5
    with pytest.raises(ValueError, match="mode"):
        utils.init_kaiming_uniform_(w, mode="fan_sideways")


def test_small_tl_helpers() -> None:
    x = torch.randn(2, 3, 4, 5)
    assert torch.equal(utils.transpose(x), x.permute(0, 1, 3, 2))
    assert utils.override_or_use_default_value(True, override=False) is False
    assert utils.override_or_use_default_value(False) is False and utils.override_or_use_default_value(1, None) == 1
    assert utils.is_library_available("torch") and utils.is_library_available("sys")
    assert not utils.is_library_available("no_such_module_for_hookscope_tests")
    with pytest.raises(TypeError, match="cannot read the parameters"):
        utils.select_compatible_kwargs({"dim": 0}, torch.cumsum)
    assert utils.select_compatible_kwargs({"a": 1, "b": 2}, lambda a, c=0: a) == {"a": 1}
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    assert utils.get_offset_position_ids(0, mask).tolist() == [[0, 0, 0, 1, 2], [0, 1, 2, 3, 4]]
    assert utils.get_offset_position_ids(3, mask).tolist() == [[1, 2], [3, 4]]
    t = torch.tensor([[1, 2, 3]])
    assert utils.get_cumsum_along_dim(t, 1).tolist() == [[1, 3, 6]]
    assert utils.get_cumsum_along_dim(t, 1, reverse=True).tolist() == [[6, 5, 3]]
    r = torch.randn(2, 3, 4)
    rep = utils.repeat_along_head_dimension(r, 5)
    assert rep.shape == (2, 3, 5, 4) and all(torch.equal(rep[:, :, h], r) for h in range(5))
    rep[0, 0, 0, 0] = 100.0
    assert r[0, 0, 0] != 100.0  # a copy, not a view of r


def test_nested_attrs_and_activation_table() -> None:
    m = nn.Sequential(nn.Linear(2, 2))
    assert utils.get_nested_attr(m, "0.weight") is m[0].weight
    utils.set_nested_attr(m, "0.bias", None)
    assert m[0].bias is None
    x = torch.randn(4, 6)
    torch.testing.assert_close(utils.ACTIVATION_FN_DICT["solu_ln"](x), x * x.softmax(-1))
    torch.testing.assert_close(utils.ACTIVATION_FN_DICT["gelu_pytorch_tanh"](x), F.gelu(x, approximate="tanh"))
    assert utils.ACTIVATION_FN_DICT["relu"] is F.relu and utils.ACTIVATION_FN_DICT["silu"] is F.silu


def test_tl_asserted_checks_raise_errors_catchable_as_both_types() -> None:
    fm = FactoredMatrix(torch.randn(3, 4), torch.randn(4, 6))
    bad = [lambda: fm @ torch.randn(5, 6), lambda: torch.randn(2, 5) @ fm, lambda: fm * torch.ones(2),
           lambda: fm.BA, lambda: fm.eigenvalues, lambda: fm @ FactoredMatrix(torch.randn(5, 2), torch.randn(2, 2))]
    for make in bad:
        for kind in (ValueError, AssertionError, InputCheckError):
            with pytest.raises(kind):
                make()
    for kind in (ValueError, RuntimeError, ShapeMismatchError):
        with pytest.raises(kind, match=r"[Mm]ismatch"):
            FactoredMatrix(torch.ones(9, 5, 3), torch.ones(2, 4, 3, 7))
        with pytest.raises(kind):
            FactoredMatrix(torch.randn(2, 3, 4), torch.randn(2, 4, 6)) @ torch.randn(4, 6, 7)

    model = hookscope.load(random_hf_model("gpt2", torch.float32))
    svd = SVDInterpreter(model)
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    with pytest.raises(AssertionError, match=f"Layer index must be between 0 and {n_layers - 1} but got {n_layers}"):
        svd.get_singular_vectors("w_in", layer_index=n_layers)
    with pytest.raises(AssertionError, match="Head index optional only for w_in and w_out, got OV"):
        svd.get_singular_vectors("OV", layer_index=0)
    with pytest.raises(ValueError, match=f"Head index must be between 0 and {n_heads - 1}"):
        svd.get_singular_vectors("OV", layer_index=0, head_index=n_heads)
    tokens = torch.arange(1, 7)
    with pytest.raises(AssertionError, match="lower triangular"):
        head_detector.detect_head(model, tokens, torch.ones(6, 6))
    with pytest.raises(AssertionError, match="the sequence must have"):
        head_detector.detect_head(model, tokens[:1], "previous_token_head")
    with pytest.raises(AssertionError, match="error_measure"):
        head_detector.detect_head(model, tokens, "previous_token_head", error_measure="max")


@pytest.mark.parametrize("arch, name", [("gpt2", "gpt2-small"), ("llama", "Llama-3.2-1B"), ("neox", "pythia-70m")])
def test_pretrained_model_config_equals_the_loaded_models_cfg(arch: str, name: str, tmp_path) -> None:
    hf = random_hf_model(arch)
    model = HookedTransformer.from_pretrained_no_processing(name, hf_model=hf, tokenizer=word_tokenizer(),
                                                            device="cpu")
    hf.config.save_pretrained(tmp_path)
    from_folder = loading.get_pretrained_model_config(str(tmp_path), device="cpu")
    from_dict = loading.get_pretrained_model_config(name, hf_cfg=hf.config.to_dict(), device="cpu")
    skip = {"model_name", "tokenizer_name", "init_weights", "n_params", "tokenizer_prepends_bos"}  # tokenizer-made
    want = {k: v for k, v in model.cfg.to_dict().items() if k not in skip}
    for cfg in (from_folder, from_dict):
        assert {k: v for k, v in cfg.to_dict().items() if k not in skip} == want
        assert cfg.init_weights is False
    assert from_dict.model_name == model.cfg.model_name and from_dict.tokenizer_name == model.cfg.tokenizer_name
    folded = loading.get_pretrained_model_config(name, hf_cfg=hf.config.to_dict(), fold_ln=True,
                                                 first_n_layers=1, n_ctx=7)
    assert folded.normalization_type == model.cfg.normalization_type + "Pre"
    assert (folded.n_layers, folded.n_ctx, folded.d_model) == (1, 7, model.cfg.d_model)
    basic = loading.get_basic_config(name, hf_cfg=hf.config.to_dict())
    assert (basic.d_model, basic.n_layers, basic.d_vocab, basic.layer_norm_eps, basic.init_range) == (
        model.cfg.d_model, model.cfg.n_layers, model.cfg.d_vocab, model.cfg.eps, model.cfg.initializer_range)
    assert loading.convert_hf_model_config(str(tmp_path))["d_head"] == model.cfg.d_head


def test_pretrained_model_config_refuses_what_it_cannot_read() -> None:
    bert = {"model_type": "bert", "vocab_size": 50, "hidden_size": 16, "num_hidden_layers": 1,
            "num_attention_heads": 2, "intermediate_size": 32}
    with pytest.raises(ConversionError, match="not supported natively"):
        loading.get_pretrained_model_config("bert-tiny", hf_cfg=bert)
    gpt2 = random_hf_model("gpt2").config.to_dict()
    with pytest.raises(ValueError, match="no published training checkpoints"):
        loading.get_pretrained_model_config("gpt2", hf_cfg=gpt2, checkpoint_index=3)
    with pytest.raises(ValueError, match="first_n_layers"):
        loading.get_pretrained_model_config("gpt2", hf_cfg=gpt2, first_n_layers=99)
    with pytest.raises(ValueError, match="trust_remote_code"):
        loading.get_pretrained_model_config("gpt2", hf_cfg=gpt2, trust_remote_code=True)
    assert "gpt2" in loading.OFFICIAL_MODEL_NAMES and "gpt2-small" in loading.MODEL_ALIASES["gpt2"]


def test_fill_missing_keys_adds_only_the_missing_entries(caplog: pytest.LogCaptureFixture) -> None:
    class Tiny(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.W_in = nn.Parameter(torch.randn(2, 3))
            self.b_in = nn.Parameter(torch.randn(3))

    model = Tiny()
    given = {"b_in": torch.zeros(3)}
    with caplog.at_level("WARNING"):
        out = loading.fill_missing_keys(model, given)
    assert out is given and set(out) == {"W_in", "b_in"}
    assert torch.equal(out["W_in"], model.W_in.detach()) and torch.equal(out["b_in"], torch.zeros(3))
    assert "W_in" in caplog.text


def test_kv_cache_entries_hold_each_layers_keys_and_values() -> None:
    hf = random_hf_model("gpt2")
    model = HookedTransformer.from_pretrained_no_processing("gpt2", hf_model=hf, tokenizer=word_tokenizer(),
                                                            device="cpu")
    x = random_tokens(2, 7)
    kv = HookedTransformerKeyValueCache.init_cache(model.cfg, "cpu", batch_size=2)
    assert [e.past_keys.shape for e in kv.entries] == [(2, 0, model.cfg.n_heads, model.cfg.d_head)] * model.cfg.n_layers
    with torch.no_grad():
        model(x[:, :5], past_kv_cache=kv)
        model(x[:, 5:], past_kv_cache=kv)
        _, cache = model.run_with_cache(x)
    assert len(kv.entries) == model.cfg.n_layers
    for layer, entry in enumerate(kv.entries):
        torch.testing.assert_close(entry.past_keys, cache["k", layer], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(entry.past_values, cache["v", layer], atol=1e-5, rtol=1e-5)
        keys, values = kv[layer]
        assert keys is not None and torch.equal(values, entry.past_values)
    kv.freeze()
    with torch.no_grad():
        model(x[:, :1], past_kv_cache=kv)
    assert all(e.frozen and e.past_keys.shape[1] == 7 for e in kv.entries)
    with pytest.raises(IndexError, match="out of range"):
        kv[model.cfg.n_layers]


def test_test_prompt_prints_tokenisation_as_tl_calls(monkeypatch: pytest.MonkeyPatch) -> None:
    model = HookedTransformer.from_pretrained_no_processing("gpt2", hf_model=random_hf_model("gpt2"),
                                                            tokenizer=word_tokenizer(), device="cpu")
    calls: list[tuple] = []
    monkeypatch.setattr("builtins.print", lambda *args, **kw: calls.append(args))
    utils.test_prompt("w1 w2 w5", "w3 w4", model)
    assert calls[0] == ("Tokenized prompt:", model.to_str_tokens("w1 w2 w5"))
    assert calls[1] == ("Tokenized answer:", model.to_str_tokens(" w3 w4", prepend_bos=False))
    assert len(calls) == 3 and calls[2][0].endswith("]") and "Ranks of the answer tokens" in calls[2][0]
    calls.clear()
    utils.test_prompt("w1 w2 w5", "w3", model, print_details=False)
    assert len(calls) == 1 and calls[0][0].startswith("Ranks of the answer tokens: [('w3', ")


def test_d_vocab_comes_from_the_tokenizer_named_in_the_config(tmp_path) -> None:
    tokenizer = word_tokenizer()
    tokenizer.save_pretrained(tmp_path)
    sizes = dict(n_layers=1, d_mlp=10, d_model=10, d_head=5, n_heads=2, n_ctx=20, act_fn="relu")
    by_name = HookedTransformer(HookedTransformerConfig(**sizes, tokenizer_name=str(tmp_path)))
    given = HookedTransformer(HookedTransformerConfig(**sizes), tokenizer=tokenizer)
    want = max(tokenizer.get_vocab().values()) + 1
    for model in (by_name, given):
        assert model.cfg.d_vocab == model.cfg.d_vocab_out == want
        assert model.W_E.shape == (want, 10) and model.W_U.shape == (10, want)
    assert by_name.to_str_tokens("w1 w2", prepend_bos=False) == ["w1", "w2"]
    out_set = HookedTransformer(HookedTransformerConfig(**sizes, d_vocab_out=7), tokenizer=tokenizer)
    assert (out_set.cfg.d_vocab, out_set.cfg.d_vocab_out) == (want, 7)

