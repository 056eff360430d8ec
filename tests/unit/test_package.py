"""The package imports light, offline, and every public name resolves."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import hookscope


def test_import_is_light_and_offline() -> None:
    code = (
        "import sys, socket\n"
        "socket.socket = None  # any network use would fail loudly\n"
        "import hookscope\n"
        "heavy = [m for m in ('torch', 'transformers', 'matplotlib') if m in sys.modules]\n"
        "print(hookscope.__version__, heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"{hookscope.__version__} []"


def test_every_public_name_resolves() -> None:
    for name in hookscope.__all__:
        assert getattr(hookscope, name) is not None, name


def test_cli_version() -> None:
    out = subprocess.run([sys.executable, "-m", "hookscope.cli", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and hookscope.__version__ in out.stdout


def test_layering_contracts_hold() -> None:
    """The import-linter contracts of pyproject.toml (models never import convert/generation, ...)."""
    pytest.importorskip("importlinter")
    exe = Path(sys.executable).with_name("lint-imports")
    if not exe.exists():
        pytest.skip("lint-imports is not installed next to this Python")
    out = subprocess.run([str(exe), "--no-cache"], capture_output=True, text=True, cwd=Path(__file__).parents[2])
    assert out.returncode == 0, out.stdout[-3000:]


def test_process_switches_stay_out_of_the_top_level() -> None:
    assert not hasattr(hookscope, "keep_freed_memory") and not hasattr(hookscope, "release_freed_memory")
    from hookscope.memory import keep_freed_memory, release_freed_memory

    assert callable(keep_freed_memory) and callable(release_freed_memory)


def test_every_family_config_and_generate_stream_are_public() -> None:
    from hookscope.models import bert_config, decoder_config, t5_config, vit_config, whisper_config

    pairs = [(hookscope.DecoderConfig, decoder_config.DecoderConfig), (hookscope.BertConfig, bert_config.BertConfig),
             (hookscope.T5Config, t5_config.T5Config), (hookscope.ViTConfig, vit_config.ViTConfig),
             (hookscope.WhisperConfig, whisper_config.WhisperConfig)]
    assert all(public is defined for public, defined in pairs)
    assert callable(hookscope.generate_stream) and callable(hookscope.to_hf)
