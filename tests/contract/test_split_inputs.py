"""Split-input hooks (``hook_attn_in``, ``hook_q_input``/``hook_k_input``/``hook_v_input``) in every family.

One plumbing serves every block (:func:`hookscope.components.block_hooks.attend`): observing the per-head
copies leaves the output unchanged, and editing one head's copy changes that head's query only.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from hookscope.hooks import HookedModule
from hookscope.models.bert import Bert
from hookscope.models.bert_config import BertConfig
from hookscope.models.decoder import Decoder
from hookscope.models.decoder_config import DecoderConfig
from hookscope.models.t5 import T5
from hookscope.models.t5_config import T5Config
from hookscope.models.vit import ViT
from hookscope.models.vit_config import ViTConfig
from tests.helpers import redraw_parameters

SPLIT = ("hook_attn_in", "hook_q_input", "hook_k_input", "hook_v_input")


def _decoder() -> tuple[HookedModule, Callable[[], torch.Tensor], str, int]:
    cfg = DecoderConfig(d_model=24, n_layers=2, n_heads=6, n_kv_heads=2, d_head=6, d_mlp=19, d_vocab=53, n_ctx=32,
                        norm="rmsnorm", positional="rotary", mlp="gated", act_fn="silu", qkv_bias=True)
    tokens = torch.randint(0, 53, (3, 7), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(3, 7, dtype=torch.long)
    mask[1, :2] = 0
    model = Decoder(cfg)
    return model, lambda: model(tokens, attention_mask=mask), "blocks.1.", 2


def _bert() -> tuple[HookedModule, Callable[[], torch.Tensor], str, int]:
    cfg = BertConfig(d_model=20, n_layers=2, n_heads=4, d_head=5, d_mlp=17, d_vocab=41, n_ctx=16, mlm_head=True)
    tokens = torch.randint(1, 41, (2, 6), generator=torch.Generator().manual_seed(0))
    model = Bert(cfg)
    return model, lambda: model(tokens), "blocks.0.", 4


def _t5() -> tuple[HookedModule, Callable[[], torch.Tensor], str, int]:
    cfg = T5Config(d_model=20, n_heads=4, d_head=6, d_mlp=17, d_vocab=43, n_encoder_layers=2, n_decoder_layers=2,
                   relative_buckets=8, relative_max_distance=20)
    gen = torch.Generator().manual_seed(0)
    ids, dec = torch.randint(2, 43, (2, 6), generator=gen), torch.randint(2, 43, (2, 5), generator=gen)
    model = T5(cfg)
    return model, lambda: model(ids, dec), "decoder.1.", 4


def _vit() -> tuple[HookedModule, Callable[[], torch.Tensor], str, int]:
    cfg = ViTConfig(d_model=20, n_layers=2, n_heads=4, d_head=5, d_mlp=17, image_size=(8, 12), patch_size=4)
    pixels = torch.randn(2, 3, 8, 12, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    model = ViT(cfg)
    return model, lambda: model(pixels), "blocks.1.", 4


FAMILIES = {"decoder_gqa": _decoder, "bert": _bert, "t5_decoder": _t5, "vit": _vit}


def _build(family: str) -> tuple[HookedModule, Callable[[], torch.Tensor], str, int]:
    model, run, block, n_kv = FAMILIES[family]()
    redraw_parameters(model, seed=1)
    model.double().eval()
    return model, run, block, n_kv


@pytest.mark.parametrize("family", list(FAMILIES))
def test_observing_split_inputs_leaves_the_output_unchanged(family: str) -> None:
    model, run, block, n_kv = _build(family)
    plain = run()
    shapes: dict[str, tuple[int, ...]] = {}

    def record(t: torch.Tensor, hook: object) -> None:
        shapes[hook.name] = tuple(t.shape)  # type: ignore[attr-defined]

    hooks = [(block + n, record) for n in SPLIT]
    with model.hooks(hooks):
        split = run()
    torch.testing.assert_close(split, plain, atol=1e-10, rtol=1e-10)
    assert set(shapes) == {block + n for n in SPLIT}
    n_heads = shapes[block + "hook_q_input"][2]
    assert shapes[block + "hook_attn_in"][2] == n_heads
    assert shapes[block + "hook_k_input"][2] == shapes[block + "hook_v_input"][2] == n_kv


@pytest.mark.parametrize("family", list(FAMILIES))
def test_editing_one_heads_query_input_changes_that_heads_query_only(family: str) -> None:
    model, run, block, _ = _build(family)
    queries: list[torch.Tensor] = []
    record = (block + "attn.hook_q", lambda t, hook: queries.append(t) and None)
    with model.hooks([record]):
        run()

    def zero_head_1(t: torch.Tensor, hook: object) -> torch.Tensor:
        t = t.clone()
        t[:, :, 1] = 0
        return t

    with model.hooks([(block + "hook_q_input", zero_head_1), record]):
        run()
    before, after = queries
    changed = (before - after).abs().amax(dim=(0, 1, 3))  # [head_index]
    assert changed[1] > 1e-3
    others = torch.cat([changed[:1], changed[2:]])
    assert others.max() < 1e-12  # the per-head projection rounds apart from the fused one by ~1e-16 only
