"""Every ```python block in docs/learn runs (the blocks of one page share a namespace, in order)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

PAGES = sorted((Path(__file__).resolve().parents[2] / "docs" / "learn").glob("*.md"))
BLOCK = re.compile(r"```python\n(.*?)```", re.S)


def test_every_page_is_listed_and_has_code() -> None:
    index = (PAGES[0].parent / "index.md").read_text()
    for page in PAGES:
        if page.name != "index.md":
            assert f"({page.name})" in index, f"{page.name} is not linked from the learn index"
            assert BLOCK.search(page.read_text()), f"{page.name} has no python block"


@pytest.mark.parametrize("page", [p for p in PAGES if p.name != "index.md"], ids=lambda p: p.stem)
def test_page_code_runs(page: Path) -> None:
    torch.manual_seed(0)
    namespace: dict = {"__name__": f"learn_{page.stem}"}
    for i, code in enumerate(BLOCK.findall(page.read_text())):
        exec(compile(code, f"{page.name}[block {i}]", "exec"), namespace)
