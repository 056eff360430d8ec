"""The package imports light, offline, and every public name resolves."""

from __future__ import annotations

import subprocess
import sys

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
