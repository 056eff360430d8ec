"""load() and conversion fail with messages a person can act on."""

from __future__ import annotations

import pytest
import torch
import transformers as T

import hookscope
from hookscope.convert.engine import ConversionError, RuleSet, convert_state_dict, rename
from tests.equivalence.decoder_configs import random_hf_model, random_tokens


def test_folder_round_trip_and_truncated_file(tmp_path) -> None:
    hf = random_hf_model("qwen3")
    hf.save_pretrained(tmp_path / "m")
    model = hookscope.load(tmp_path / "m")
    tokens = random_tokens(2, 5)
    with torch.no_grad():
        torch.testing.assert_close(model(tokens), hf(tokens).logits, atol=1e-5, rtol=1e-5)
    weights = tmp_path / "m" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ConversionError, match="corrupt or truncated"):
        hookscope.load(tmp_path / "m")


def test_unsupported_architecture_points_to_wrap() -> None:
    hf = T.AutoModelForCausalLM.from_config(T.BloomConfig(hidden_size=16, n_layer=1, n_head=2, vocab_size=50))
    with pytest.raises(ConversionError, match=r"supported: .*gpt2.*wrap\(hf_model\)"):
        hookscope.load(hf)


def test_unmodelled_config_attribute_is_named() -> None:
    cfg = T.GPT2Config(n_embd=16, n_layer=1, n_head=2, vocab_size=50, n_positions=8,
                       scale_attn_by_inverse_layer_idx=True)
    with pytest.raises(ConversionError, match="scale_attn_by_inverse_layer_idx"):
        hookscope.load(T.GPT2LMHeadModel(cfg))
    llama = T.LlamaConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8,
                          vocab_size=50, rope_parameters={"rope_type": "yarn", "rope_theta": 1e4, "factor": 2.0})
    with pytest.raises(ConversionError, match="yarn"):
        hookscope.load(T.LlamaForCausalLM(llama))


def test_missing_sources(tmp_path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"config\.json"):
        hookscope.load(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="hub could not provide it"):
        hookscope.load("no-such-org/no-such-model-hookscope")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        hookscope.load(tmp_path / "missing.gguf")


def test_bad_dtype_and_device() -> None:
    hf = random_hf_model("gpt2")
    with pytest.raises(hookscope.LoadError, match="floating-point"):
        hookscope.load(hf, dtype=torch.int32)
    with pytest.raises(hookscope.LoadError, match="unknown dtype"):
        hookscope.load(hf, dtype="float17")
    if not torch.cuda.is_available():
        with pytest.raises(hookscope.LoadError, match="CUDA is not available"):
            hookscope.load(hf, device="cuda")


def test_engine_accounts_for_every_tensor() -> None:
    rules = RuleSet((rename("a", "x"), rename("b", "y")))
    state = {"a": torch.zeros(1), "b": torch.zeros(1), "c": torch.zeros(1)}
    with pytest.raises(ConversionError, match="no rule consumes: c"):
        convert_state_dict(state, rules, 1, ["x", "y"])
    with pytest.raises(ConversionError, match="no rule fills: z"):
        convert_state_dict({"a": state["a"], "b": state["b"]}, rules, 1, ["x", "y", "z"])
    with pytest.raises(ConversionError, match="missing in the source: b"):
        convert_state_dict({"a": state["a"]}, rules, 1, ["x", "y"])


def test_forward_input_errors() -> None:
    model = hookscope.load(random_hf_model("gpt2"))
    with pytest.raises(IndexError, match=r"token ids must lie in \[0, 101\)"):
        model(torch.tensor([[5, 500]]))
    with pytest.raises(IndexError, match="beyond the model's 64 positions"):
        model(torch.ones(1, 65, dtype=torch.long))
    with pytest.raises(ValueError, match="no tokenizer"):
        model("text")
    with pytest.raises(TypeError, match=r"token ids must be an integer tensor, got torch\.float32"):
        model(torch.randn(2, 3))
    with pytest.raises(ValueError, match=r"token ids must be \[batch, pos\] or \[pos\], got shape \(2, 3, 4\)"):
        model(torch.zeros(2, 3, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="return_type must be 'logits', 'loss', 'both' or None, got 'probs'"):
        model(torch.tensor([[1, 2]]), return_type="probs")
    d_model = model.cfg.d_model
    with pytest.raises(ValueError, match=rf"residual stream \[batch, pos, {d_model}\]; got shape \(1, 2, 3\)"):
        model(torch.randn(1, 2, 3), start_at_layer=1)
    with pytest.raises(TypeError, match=r"the residual stream is torch\.float64 but the model is torch\.float32"):
        model(torch.randn(1, 2, d_model, dtype=torch.float64), start_at_layer=1)
    with pytest.raises(ValueError, match="input is on meta but the model is on cpu"):
        model(torch.ones(1, 2, dtype=torch.long, device="meta"))


def test_hub_id_falls_back_to_pickled_weights_read_safely(tmp_path, monkeypatch) -> None:
    import huggingface_hub

    hf = random_hf_model("gpt2")
    only_config, with_bin = tmp_path / "a", tmp_path / "b"
    for folder in (only_config, with_bin):
        folder.mkdir()
        hf.config.save_pretrained(folder)
    torch.save(hf.state_dict(), with_bin / "pytorch_model.bin")
    calls = []

    def fake_snapshot(repo_id: str, allow_patterns: list[str], revision: str | None = None,
                      local_files_only: bool = False) -> str:
        calls.append(allow_patterns)
        return str(with_bin if any(".bin" in p for p in allow_patterns) else only_config)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot)
    model = hookscope.load("some-org/old-model")
    assert len(calls) == 2 and not any(".bin" in p for p in calls[0])
    tokens = random_tokens(1, 5)
    with torch.no_grad():
        torch.testing.assert_close(model(tokens), hf(tokens).logits, atol=1e-5, rtol=1e-5)
