"""Export back to transformers on every native family: HF -> hookscope -> HF gives the same class, the same
parameters bit for bit, and the same outputs; ``model.to_hf()`` and ``hookscope.to_hf(model)`` agree."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

import hookscope
from tests.equivalence import bert_configs, decoder_configs, t5_cases, vit_cases, whisper_cases


def _decoder(name: str) -> Callable[[], Any]:
    return lambda: decoder_configs.random_hf_model(name)


def _t5(variant: str) -> Callable[[], Any]:
    return lambda: t5_cases.random_hf_encoder() if variant == "encoder" else t5_cases.random_hf_t5(variant)


CASES: dict[str, Callable[[], Any]] = {
    **{f"decoder-{n}": _decoder(n) for n in ("gpt2", "neox", "llama", "gemma2")},
    **{f"bert-{n}": (lambda n=n: bert_configs.random_hf_model(n)) for n in bert_configs.CLASSES},
    **{f"t5-{v}": _t5(v) for v in ("v1.0", "v1.1", "encoder")},
    **{f"vit-{v}": (lambda v=v: vit_cases.make_hf(v)) for v in vit_cases.VARIANTS},
    "whisper": lambda: whisper_cases.random_hf_whisper(),
}


def _outputs(hf: Any) -> torch.Tensor:
    """One deterministic output of any of these HF models on small inputs."""
    with torch.no_grad():
        if hf.config.model_type == "whisper":
            feats, tokens = whisper_cases.inputs(batch=2)
            return hf(input_features=feats, decoder_input_ids=tokens).logits
        if hf.main_input_name == "pixel_values":
            out = hf(pixel_values=vit_cases.pixels_for(torch.float32))
        elif hf.config.model_type == "t5" and hasattr(hf, "decoder"):
            ids, mask, dec, _ = t5_cases.inputs()
            out = hf(input_ids=ids, attention_mask=mask, decoder_input_ids=dec)
        else:
            out = hf(input_ids=decoder_configs.random_tokens(2, 7))
    for field in ("logits", "image_embeds", "prediction_logits", "last_hidden_state"):
        if getattr(out, field, None) is not None:
            return getattr(out, field)
    raise AssertionError(f"no output to compare in {type(out).__name__}")


@pytest.mark.parametrize("case", sorted(CASES))
def test_round_trip_gives_back_the_same_hf_model(case: str) -> None:
    hf = CASES[case]()
    model = hookscope.load(hf)
    back = model.to_hf()
    assert type(back) is type(hf)
    ours, theirs = back.state_dict(), hf.state_dict()
    assert set(ours) == set(theirs)
    for name, tensor in theirs.items():
        assert torch.equal(ours[name], tensor), name
    torch.testing.assert_close(_outputs(back), _outputs(hf), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("name", "n_layers_attr"), [("llama", "num_hidden_layers"), ("gpt_neo", "num_layers"),
                                                          ("gptj", "n_layer"), ("phi", "num_hidden_layers")])
def test_first_n_layers_export_as_a_smaller_hf_model(name: str, n_layers_attr: str) -> None:
    model = hookscope.load(decoder_configs.random_hf_model(name), n_layers=2)
    back = hookscope.to_hf(model)
    assert getattr(back.config, n_layers_attr) == 2
    tokens = decoder_configs.random_tokens(2, 7)
    with torch.no_grad():
        torch.testing.assert_close(back(tokens).logits, model(tokens), atol=1e-5, rtol=1e-5)


def test_export_of_something_else_is_a_clear_error() -> None:
    with pytest.raises(hookscope.ConversionError, match="native hookscope models"):
        hookscope.to_hf(torch.nn.Linear(2, 2))
    cfg = hookscope.DecoderConfig(d_model=8, n_layers=1, n_heads=2, d_head=4, d_mlp=8, d_vocab=11, n_ctx=8)
    with pytest.raises(hookscope.ConversionError, match=r"built by hookscope\.load"):
        hookscope.Decoder(cfg).to_hf()
