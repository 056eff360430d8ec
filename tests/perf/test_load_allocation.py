"""Building a model to load weights into allocates and initialises nothing (issue 22)."""

from __future__ import annotations

import torch
import transformers
from torch.utils._python_dispatch import TorchDispatchMode

import hookscope
from hookscope.convert.build import parameters_on_meta
from hookscope.models.decoder import Decoder
from hookscope.models.decoder_config import DecoderConfig

_RANDOM_FILLS = {"normal_", "uniform_", "bernoulli_", "random_", "exponential_", "randn", "rand"}


class _RecordRealOps(TorchDispatchMode):
    """Records every random fill and the largest tensor created on a real (non-meta) device."""

    def __init__(self) -> None:
        super().__init__()
        self.random_fills: list[str] = []
        self.largest_empty = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        out = func(*args, **(kwargs or {}))
        name = func.overloadpacket.__name__
        if isinstance(out, torch.Tensor) and out.device.type != "meta":
            if name in _RANDOM_FILLS:
                self.random_fills.append(name)
            if name.startswith("empty"):
                self.largest_empty = max(self.largest_empty, out.numel())
        return out


def test_building_for_loading_creates_every_parameter_on_meta_even_beyond_memory() -> None:
    # 2**22 x 2**13 fp32 tables are 128 GiB each: a real allocation or fill would fail or take minutes
    cfg = DecoderConfig(d_model=2**13, n_layers=2, n_heads=64, d_head=128, d_mlp=2**15, d_vocab=2**22,
                        n_ctx=2**16, positional="learned")
    with parameters_on_meta():
        model = Decoder(cfg)
    assert all(p.device.type == "meta" for p in model.parameters())


def test_building_for_loading_runs_no_random_initialisation_on_real_memory() -> None:
    cfg = DecoderConfig(d_model=96, n_layers=2, n_heads=4, d_head=24, d_mlp=200, d_vocab=1000, n_ctx=64,
                        positional="rotary", norm="rmsnorm", mlp="gated", act_fn="silu")
    with _RecordRealOps() as ops, parameters_on_meta():
        model = Decoder(cfg)
    assert ops.random_fills == []
    assert ops.largest_empty == 0
    assert model.inv_freq is not None and model.inv_freq.device.type == "cpu"  # buffers stay real


def test_direct_construction_still_initialises_parameters_randomly() -> None:
    cfg = DecoderConfig(d_model=64, n_layers=1, n_heads=4, d_head=16, d_mlp=128, d_vocab=500, n_ctx=32)
    torch.manual_seed(0)
    model = Decoder(cfg)
    assert abs(float(model.embed.weight.detach().std()) - 0.02) < 0.002
    assert abs(float(model.pos_embed.weight.detach().std()) - 0.02) < 0.002


def test_a_load_from_a_safetensors_folder_fills_nothing_at_random(tmp_path) -> None:
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=3000,
                                                              n_positions=128)).eval()
    hf.save_pretrained(tmp_path)
    largest_weight = max(p.numel() for p in hf.parameters())
    with _RecordRealOps() as ops:
        model = hookscope.load(tmp_path, progress=False)
    assert ops.random_fills == []
    assert ops.largest_empty <= largest_weight  # no temporary beyond one tensor of the file
    tokens = torch.randint(0, 3000, (1, 12))
    with torch.no_grad():
        torch.testing.assert_close(model(tokens), hf(tokens).logits, rtol=1e-5, atol=1e-5)


def test_a_model_built_to_train_is_drawn_once_with_buffers_and_ties_kept() -> None:
    cfg = DecoderConfig(d_model=64, n_layers=2, n_heads=4, d_head=16, d_mlp=128, d_vocab=300, n_ctx=32,
                        positional="rotary", norm="rmsnorm", mlp="gated", act_fn="silu", tie_embeddings=True)
    with _RecordRealOps() as ops:
        model = Decoder.from_config(cfg, seed=3)
    matrices = {id(p) for p in model.parameters() if p.ndim >= 2}
    assert ops.random_fills == ["normal_"] * len(matrices)  # init_weights' draws only, none in the constructors
    assert model.unembed.weight is model.embed.weight
    torch.testing.assert_close(model.inv_freq, Decoder(cfg).inv_freq, rtol=0, atol=0)
    again = Decoder.from_config(cfg, seed=3)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), again.parameters()))
