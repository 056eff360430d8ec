"""compat.utils, compat.hook_points and the encoders: TransformerLens's helpers against independent results."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hookscope.compat import HookedEncoder, HookedEncoderDecoder, HookedRootModule, HookPoint, utils
from tests.compat.helpers import BOS, PAD, word_tokenizer
from tests.equivalence import bert_configs
from tests.equivalence.t5_cases import random_hf_t5

FP32 = dict(atol=1e-5, rtol=1e-5)


def test_get_act_name_compact_and_aliases() -> None:
    assert utils.get_act_name("scale2ln1") == "blocks.2.ln1.hook_scale"
    assert utils.get_act_name("resid_pre5") == "blocks.5.hook_resid_pre"
    assert utils.get_act_name("pattern", 3) == utils.get_act_name("attn", 3) == "blocks.3.attn.hook_pattern"
    assert utils.get_act_name("k", 1) == "blocks.1.attn.hook_k"
    assert utils.get_act_name("post", 0) == "blocks.0.mlp.hook_post"
    assert utils.get_act_name("scale") == "ln_final.hook_scale"
    assert utils.get_act_name("normalized", 1, "ln2") == "blocks.1.ln2.hook_normalized"
    assert utils.get_act_name("blocks.0.hook_resid_pre") == "blocks.0.hook_resid_pre"


def test_slice_semantics() -> None:
    t = torch.arange(24).view(2, 12)
    assert utils.Slice(3).apply(t, 1).tolist() == [3, 15]  # an int drops the axis
    assert torch.equal(utils.Slice((2, 5)).apply(t, 1), t[:, 2:5])  # a tuple is slice(*tuple)
    assert torch.equal(utils.Slice([0, 7]).apply(t, 1), t[:, [0, 7]])
    assert torch.equal(utils.Slice(None).apply(t, 1), t)
    assert utils.Slice((1, 8, 3)).indices(12).tolist() == [1, 4, 7]
    assert utils.Slice.unwrap(2).mode == "array"
    with pytest.raises(ValueError, match="invalid slice"):
        utils.Slice("a")


def test_losses_and_small_helpers() -> None:
    gen = torch.Generator().manual_seed(0)
    logits, tokens = torch.randn(2, 5, 11, generator=gen), torch.randint(0, 11, (2, 5), generator=gen)
    ref = F.cross_entropy(logits[:, :-1].reshape(-1, 11), tokens[:, 1:].reshape(-1), reduction="none").view(2, 4)
    torch.testing.assert_close(utils.lm_cross_entropy_loss(logits, tokens, per_token=True), ref, **FP32)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    masked = utils.lm_cross_entropy_loss(logits, tokens, mask)
    torch.testing.assert_close(masked, torch.cat([ref[0, :2], ref[1]]).mean(), **FP32)
    assert utils.lm_accuracy(logits, tokens, per_token=True).shape == (2, 4)
    assert isinstance(utils.to_numpy(torch.ones(2)), np.ndarray)
    assert utils.remove_batch_dim(torch.ones(1, 3)).shape == (3,)
    x = torch.linspace(-3, 3, 7)
    torch.testing.assert_close(utils.gelu_new(x), F.gelu(x, approximate="tanh"), **FP32)
    torch.testing.assert_close(utils.solu(x), x * x.softmax(-1), **FP32)


def test_get_attention_mask_left_and_right() -> None:
    tok = word_tokenizer()
    right = torch.tensor([[BOS, 5, 6], [BOS, 7, PAD]])
    assert utils.get_attention_mask(tok, right, True, "right").tolist() == [[1, 1, 1], [1, 1, 0]]
    left = torch.tensor([[BOS, 5, 6], [PAD, BOS, 7]])
    assert utils.get_attention_mask(tok, left, True, "left").tolist() == [[1, 1, 1], [0, 1, 1]]


class _Tiny(HookedRootModule):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 3)
        self.hook_in, self.hook_out = HookPoint(), HookPoint()
        self.setup()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.hook_out(self.lin(self.hook_in(x)))


def test_hooked_root_module_spellings() -> None:
    model = _Tiny()
    assert set(model.hook_dict) == {"hook_in", "hook_out"} and model.hook_dict["hook_in"].name == "hook_in"
    seen: list[str] = []
    model.add_hook("hook_in", lambda t, hook: seen.append(hook.name), is_permanent=True)
    model.reset_hooks()
    model(torch.ones(1, 3))
    assert seen == ["hook_in"]  # permanent hooks survive reset_hooks
    model.remove_all_hook_fns(including_permanent=True)
    store: dict = {}
    model.cache_all(store)
    out = model(torch.ones(1, 3))
    assert torch.equal(store["hook_out"], out) and set(store) == {"hook_in", "hook_out"}
    model.reset_hooks()
    doubled = model.run_with_hooks(torch.ones(1, 3), fwd_hooks=[("hook_out", lambda t, hook: 2 * t)])
    torch.testing.assert_close(doubled, 2 * out)
    with pytest.raises(ValueError, match="numbered block"):
        model.hook_dict["hook_in"].layer()


def test_hooked_encoder_equals_hf() -> None:
    hf = bert_configs.random_hf_model("BertForMaskedLM")
    model = HookedEncoder.from_pretrained("bert-base-cased", hf_model=hf)
    tokens, mask, types = bert_configs.inputs(0)
    with torch.no_grad():
        ref = hf(input_ids=tokens, attention_mask=mask, token_type_ids=types).logits
        ours, cache = model.run_with_cache(tokens, token_type_ids=types, one_zero_attention_mask=mask)
    torch.testing.assert_close(ours, ref, **FP32)
    assert cache["resid_pre", 0].shape == (*tokens.shape, 48)
    with pytest.raises(TypeError, match="d_head"):  # a config dict missing TL's required sizes
        HookedEncoder({"d_model": 4})


def test_hooked_encoder_decoder_equals_hf() -> None:
    hf = random_hf_t5("v1.1")
    model = HookedEncoderDecoder.from_pretrained("t5-small", hf_model=hf)
    gen = torch.Generator().manual_seed(0)
    enc = torch.randint(2, 50, (2, 6), generator=gen)
    dec = torch.randint(2, 50, (2, 4), generator=gen)
    with torch.no_grad():
        ref = hf(input_ids=enc, decoder_input_ids=dec).logits
        ours = model(enc, decoder_input=dec)
    torch.testing.assert_close(ours, ref, **FP32)


def test_reexports_run_on_a_compat_model(capsys: pytest.CaptureFixture[str]) -> None:
    from hookscope.compat import FactoredMatrix, HookedTransformer, SVDInterpreter, head_detector, patching
    from tests.compat.helpers import hf_and_compat

    _, model = hf_and_compat("gpt2")
    assert isinstance(model, HookedTransformer)
    tokens = model.to_tokens(["w1 w2 w3 w4", "w5 w6 w7 w8"])
    logits, cache = model.run_with_cache(tokens)

    def metric(out: torch.Tensor) -> torch.Tensor:
        return out[:, -1, 9].mean()

    patched = patching.get_act_patch_resid_pre(model, tokens, cache, metric)  # clean into clean: no change
    torch.testing.assert_close(patched, torch.full_like(patched, metric(logits).item()), **FP32)
    scores = head_detector.detect_head(model, tokens[0], "previous_token_head")
    assert scores.shape == (model.cfg.n_layers, model.cfg.n_heads)
    assert isinstance(model.OV, FactoredMatrix)
    torch.testing.assert_close(model.OV[0, 1].AB, model.W_V[0, 1] @ model.W_O[0, 1], **FP32)
    assert SVDInterpreter(model).get_singular_vectors("OV", 0, 3, head_index=1).shape == (model.cfg.d_vocab, 1, 3)
    utils.test_prompt("w1 w2", "w3", model, print_details=False)
    assert "w3" in capsys.readouterr().out
    rows = utils.tokenize_and_concatenate(["w1 w2 w3", "w4 w5"], word_tokenizer(), max_length=3)
    assert rows.shape[1] == 3 and int(rows[0, 0]) == BOS


def test_clear_huggingface_cache_deletes_the_hub_cache_folder(tmp_path, monkeypatch) -> None:
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    (cache / "models--x" / "blobs").mkdir(parents=True)
    (cache / "models--x" / "blobs" / "w").write_bytes(b"0")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    utils.clear_huggingface_cache()
    assert not cache.exists() and tmp_path.exists()


def test_encoder_predictions_are_the_top_tokens_at_the_mask_positions() -> None:
    hf = bert_configs.random_hf_model("BertForMaskedLM")
    tok = word_tokenizer()
    tok.add_special_tokens({"mask_token": "w7"})
    model = HookedEncoder.from_pretrained("bert-base-cased", hf_model=hf, tokenizer=tok)
    mask_id = tok.mask_token_id
    tokens = torch.tensor([[4, mask_id, 9, 12], [mask_id, 5, 6, 8]])
    with torch.no_grad():
        top = hf(input_ids=tokens).logits.argmax(-1)  # [batch, pos]
        both = model(tokens, return_type="predictions")
        one = model(tokens[:1], return_type="predictions")
    assert both == [f"Prediction 0: {tok.decode(int(top[0, 1]))}", f"Prediction 1: {tok.decode(int(top[1, 0]))}"]
    assert one == tok.decode(int(top[0, 1]))
    with pytest.raises(ValueError, match="MASK"):
        model(torch.tensor([[4, 5, 6]]), return_type="predictions")
