"""One exception hierarchy: `except hookscope.LoadError` catches every way load() can fail, and each error
still is the built-in exception callers caught before (ValueError, FileNotFoundError, TypeError, KeyError)."""

from __future__ import annotations

import pytest
import torch
import transformers as T

import hookscope
from hookscope.convert.ctranslate2 import CTranslate2Error
from tests.equivalence.decoder_configs import random_hf_model


def _bloom() -> torch.nn.Module:  # an architecture with no native family (ALiBi positions)
    cfg = T.BloomConfig(hidden_size=16, n_layer=1, n_head=2, vocab_size=50)
    return T.AutoModelForCausalLM.from_config(cfg)


def _truncated_folder(tmp_path):
    random_hf_model("gpt2").save_pretrained(tmp_path / "m")
    weights = tmp_path / "m" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    return tmp_path / "m"


def _bad_json_folder(tmp_path):
    (tmp_path / "j").mkdir()
    (tmp_path / "j" / "config.json").write_text("{not json")
    return tmp_path / "j"


FAILURES = {
    "missing folder": (lambda tmp: tmp / "nowhere", FileNotFoundError),
    "folder without config": (lambda tmp: (tmp / "empty").mkdir() or tmp / "empty", FileNotFoundError),
    "missing gguf": (lambda tmp: tmp / "model.gguf", FileNotFoundError),
    "not a source": (lambda tmp: 42, TypeError),
    "unsupported architecture": (lambda tmp: _bloom(), ValueError),
    "truncated weights": (_truncated_folder, ValueError),
    "invalid config.json": (_bad_json_folder, ValueError),
}


@pytest.mark.parametrize("case", sorted(FAILURES))
def test_every_load_failure_is_a_load_error(case: str, tmp_path) -> None:
    make_source, builtin = FAILURES[case]
    source = make_source(tmp_path)
    with pytest.raises(hookscope.LoadError) as info:
        hookscope.load(source)
    assert isinstance(info.value, builtin), type(info.value).__mro__
    assert isinstance(info.value, hookscope.HookscopeError)


def test_bad_load_arguments_are_load_errors() -> None:
    hf = random_hf_model("gpt2")
    with pytest.raises(hookscope.LoadError, match="unknown dtype"):
        hookscope.load(hf, dtype="float17")
    with pytest.raises(hookscope.LoadError, match="n_layers"):
        hookscope.load(hf, n_layers=0)


def test_conversion_errors_are_load_errors_and_value_errors() -> None:
    assert issubclass(hookscope.ConversionError, hookscope.LoadError)
    assert issubclass(hookscope.ConversionError, ValueError)
    assert issubclass(CTranslate2Error, hookscope.ConversionError)
    from hookscope.convert.engine import ConversionError

    assert ConversionError is hookscope.ConversionError  # the old import path names the same class


def test_invalid_config_raises_config_error() -> None:
    with pytest.raises(hookscope.ConfigError, match="d_model"):
        hookscope.DecoderConfig(d_model=0, n_layers=1, n_heads=1, d_head=4, d_mlp=8, d_vocab=10, n_ctx=8)
    assert issubclass(hookscope.ConfigError, ValueError)


def test_weight_processing_errors_are_hookscope_errors() -> None:
    from hookscope.models.weight_processing import WeightProcessingError

    assert WeightProcessingError is hookscope.WeightProcessingError
    assert issubclass(WeightProcessingError, hookscope.HookscopeError) and issubclass(WeightProcessingError, ValueError)


def test_hook_errors_share_the_base_class() -> None:
    model = hookscope.load(random_hf_model("gpt2"))
    tokens = torch.tensor([[1, 2, 3]])
    with pytest.raises(hookscope.HookNameError, match="hook_resid_post") as info, model.hooks(
        [("blocks.0.hook_resid_pots", lambda t, hook: t)]
    ):
        pass
    assert isinstance(info.value, KeyError) and isinstance(info.value, hookscope.HookscopeError)
    assert "'" not in str(info.value)[:1]  # the message is not shown as a quoted key

    def wrong_shape(t: torch.Tensor, hook) -> torch.Tensor:
        return t[..., :3]

    with pytest.raises(hookscope.HookError, match=r"blocks\.0\.hook_resid_post"):
        model.run_with_hooks(tokens, fwd_hooks=[("blocks.0.hook_resid_post", wrong_shape)])
    assert issubclass(hookscope.HookError, hookscope.HookscopeError)


def test_input_check_errors_are_caught_as_value_and_assertion_errors() -> None:
    for cls, bases in ((hookscope.InputCheckError, (ValueError, AssertionError)),
                       (hookscope.ShapeMismatchError, (ValueError, RuntimeError))):
        assert issubclass(cls, hookscope.HookscopeError) and all(issubclass(cls, b) for b in bases)
    fm = hookscope.FactoredMatrix(torch.randn(3, 4), torch.randn(4, 5))
    with pytest.raises(AssertionError, match="inner dims"):
        fm @ torch.randn(6, 2)
    with pytest.raises(ValueError, match="inner dims"):
        fm @ torch.randn(6, 2)
