"""Shared fixtures of the generation tests."""

from __future__ import annotations

import pytest
import torch

from hookscope.generation import compiled


@pytest.fixture
def compilations(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts every graph TorchDynamo hands to the backend (one per compilation)."""
    count: list[int] = []

    def backend(graph: torch.fx.GraphModule, example_inputs: list) -> object:
        count.append(1)
        return graph.forward

    torch._dynamo.reset()
    monkeypatch.setattr(compiled, "BACKEND", backend)
    yield count
    torch._dynamo.reset()
