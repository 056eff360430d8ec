"""The lean decode step: bit for bit the hooked forward on every decoder family, used only while nothing
could observe a step (hooks on hook points or PyTorch module hooks), and generation through it equals HF's."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import hookscope
from hookscope.generation import lean
from hookscope.generation.kv_cache import KVCache
from tests.equivalence.decoder_configs import ARCHS, random_hf_model, random_tokens


@pytest.fixture
def lean_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the decode steps the lean step ran (batch size of each)."""
    calls: list[int] = []
    real = lean.LeanStep.__call__

    def counting(self: lean.LeanStep, tokens: torch.Tensor, *args: object) -> torch.Tensor:
        calls.append(tokens.shape[0])
        return real(self, tokens, *args)

    monkeypatch.setattr(lean.LeanStep, "__call__", counting)
    return calls


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("name", ARCHS)
def test_lean_step_logits_and_cache_are_bitwise_the_forwards(name: str, dtype: torch.dtype) -> None:
    model = hookscope.load(random_hf_model(name)).to(dtype)
    step = lean.lean_step(model)
    assert step is not None and step.usable()
    tokens = random_tokens(3, 11)
    mask = torch.ones_like(tokens)
    mask[0, :3] = 0  # left padding in one row
    for m in (None, mask):
        hooked, plain = KVCache.for_model(model, 3, 11), KVCache.for_model(model, 3, 11)
        with torch.no_grad():
            for cache in (hooked, plain):
                model(tokens[:, :5], None if m is None else m[:, :5], kv_cache=cache, logits_to_keep=1)
            for end in range(6, 12):
                keys = None if m is None else m[:, :end]
                want = model(tokens[:, end - 1 : end], keys, kv_cache=hooked, logits_to_keep=1)
                got = step(tokens[:, end - 1 : end], keys, plain)
                assert got.shape == want.shape == (3, 1, model.cfg.d_vocab_out)
                assert torch.equal(got, want), f"{name} {dtype}: step {end} differs"
        assert torch.equal(plain.keys, hooked.keys) and torch.equal(plain.values, hooked.values)
        assert plain.length == hooked.length == 11


@pytest.mark.parametrize("name", ["gpt2", "llama", "neox"])
def test_lean_step_after_process_weights_is_bitwise_the_forward(name: str) -> None:
    """Folded norms become LayerNormPre / RMSNormPre, which the lean step runs as the forward does."""
    model = hookscope.load(random_hf_model(name)).process_weights()
    step = lean.lean_step(model)
    assert step is not None
    tokens = random_tokens(2, 8)
    hooked, plain = KVCache.for_model(model, 2, 8), KVCache.for_model(model, 2, 8)
    with torch.no_grad():
        for cache in (hooked, plain):
            model(tokens[:, :7], kv_cache=cache, logits_to_keep=1)
        want = model(tokens[:, 7:], kv_cache=hooked, logits_to_keep=1)
        assert torch.equal(step(tokens[:, 7:], None, plain), want)


FROM_SCRATCH = {
    "solu": dict(act_fn="solu", mlp_norm="layernorm"),
    "attn_only_rotary": dict(attn_only=True, d_mlp=0, positional="rotary", norm="rmsnorm"),
    "weightless_norms": dict(norm="layernorm_pre", final_norm="rmsnorm_pre", act_fn="gelu", mlp_bias=True),
    "parallel_no_norm": dict(parallel_attn_mlp=True, norm="none", positional="rotary", rotary_dim=4),
}


@pytest.mark.parametrize("variant", FROM_SCRATCH)
def test_lean_step_is_bitwise_the_forward_on_from_scratch_variants(variant: str) -> None:
    from hookscope.models.decoder import Decoder
    from hookscope.models.decoder_config import DecoderConfig

    kwargs = {"d_model": 24, "n_layers": 2, "n_heads": 3, "d_head": 8, "d_mlp": 36, "d_vocab": 50, "n_ctx": 32}
    model = Decoder.from_config(DecoderConfig(**{**kwargs, **FROM_SCRATCH[variant]}), seed=1, init_range=0.3)
    step = lean.lean_step(model)
    assert step is not None
    tokens = torch.randint(0, 50, (2, 7), generator=torch.Generator().manual_seed(0))
    hooked, plain = KVCache.for_model(model, 2, 7), KVCache.for_model(model, 2, 7)
    with torch.no_grad():
        for cache in (hooked, plain):
            model(tokens[:, :5], kv_cache=cache, logits_to_keep=1)
        for end in (6, 7):
            want = model(tokens[:, end - 1 : end], kv_cache=hooked, logits_to_keep=1)
            assert torch.equal(step(tokens[:, end - 1 : end], None, plain), want)


def test_shortformer_positions_have_no_lean_step() -> None:
    from hookscope.models.decoder import Decoder
    from hookscope.models.decoder_config import DecoderConfig

    cfg = DecoderConfig(d_model=16, n_layers=1, n_heads=2, d_head=8, d_mlp=32, d_vocab=20, n_ctx=16,
                        positional="shortformer")
    assert lean.lean_step(Decoder.from_config(cfg)) is None


def _hf_generate(hf: nn.Module, tokens: torch.Tensor, new: int, **kwargs: object) -> torch.Tensor:
    with torch.no_grad():
        return hf.generate(tokens, max_new_tokens=new, do_sample=False, eos_token_id=None, **kwargs)


@pytest.mark.parametrize("name", ARCHS)
def test_greedy_and_beams_through_the_lean_step_equal_hf(name: str, lean_calls: list[int]) -> None:
    hf = random_hf_model(name)
    model = hookscope.load(hf)
    tokens = random_tokens(2, 6, seed=2)
    assert torch.equal(model.generate(tokens, 12, eos_token_id=[]), _hf_generate(hf, tokens, 12))
    assert lean_calls == [2] * 11  # every step after the prompt
    beams = model.generate(tokens, 7, eos_token_id=[], num_beams=3)
    assert torch.equal(beams, _hf_generate(hf, tokens, 7, num_beams=3))
    assert lean_calls[11:] == [6] * 6  # batch x beams rows


def test_hooks_attached_before_generation_fire_on_every_step(lean_calls: list[int]) -> None:
    hf = random_hf_model("llama")
    model = hookscope.load(hf)
    tokens = random_tokens(2, 5)
    seen: list[int] = []
    with model.hooks([("blocks.2.attn.hook_v", lambda t, hook: seen.append(t.shape[1]))]):
        out = model.generate(tokens, 8, eos_token_id=[])
    assert seen == [5] + [1] * 7 and not lean_calls  # the prompt, then one position a step
    model.add_hook("blocks.0.hook_resid_post", lambda grad, hook: None, dir="bwd")
    assert not lean.lean_step(model).usable()  # a backward hook keeps the hooked forward too
    model.reset_hooks()
    assert torch.equal(out, _hf_generate(hf, tokens, 8))
    assert torch.equal(model.generate(tokens, 8, eos_token_id=[]), out) and lean_calls == [2] * 7


def test_pytorch_module_hooks_keep_the_hooked_forward(lean_calls: list[int]) -> None:
    model = hookscope.load(random_hf_model("gpt2"))
    tokens = random_tokens(1, 4)
    plain = model.generate(tokens, 6, eos_token_id=[])
    assert lean_calls == [1] * 5
    lean_calls.clear()
    seen: list[int] = []
    handle = model.blocks[1].mlp.register_forward_hook(lambda mod, args, out: seen.append(out.shape[1]))
    try:
        assert torch.equal(model.generate(tokens, 6, eos_token_id=[]), plain)
    finally:
        handle.remove()
    assert seen == [4] + [1] * 5 and not lean_calls
    global_handle = nn.modules.module.register_module_forward_hook(lambda mod, args, out: None)
    try:
        model.generate(tokens, 3, eos_token_id=[])
    finally:
        global_handle.remove()
    assert not lean_calls


def test_hook_added_from_a_stream_runs_from_the_next_step(lean_calls: list[int]) -> None:
    model = hookscope.load(random_hf_model("qwen3"))
    tokens = random_tokens(1, 4)
    seen: list[int] = []
    for i, _ in enumerate(model.generate_stream(tokens, 8, eos_token_id=[])):
        if i == 2:
            model.add_hook("blocks.0.hook_resid_post", lambda t, hook: seen.append(t.shape[1]))
    model.reset_hooks()
    assert lean_calls == [1, 1] and seen == [1] * 5  # tokens 2, 3 lean; the hook ran for tokens 4..8


def test_weights_edited_between_calls_are_used(lean_calls: list[int]) -> None:
    hf = random_hf_model("mistral")
    model = hookscope.load(hf)
    tokens = random_tokens(1, 5)
    before = model.generate(tokens, 8, eos_token_id=[])
    with torch.no_grad():
        for m in (model, hf):  # the same edit on both sides: a different continuation, still HF's
            m.get_submodule("blocks.1.mlp.down_proj" if m is model else "model.layers.1.mlp.down_proj").weight.mul_(-3)
    after = model.generate(tokens, 8, eos_token_id=[])
    assert torch.equal(after, _hf_generate(hf, tokens, 8)) and not torch.equal(after, before)
    assert len(lean_calls) == 14


def test_a_swapped_module_falls_back_to_the_forward(lean_calls: list[int]) -> None:
    hf = random_hf_model("llama")
    model = hookscope.load(hf)

    class Doubled(nn.Module):  # a user's replacement the lean step cannot know
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return 2 * self.inner(x)

    assert lean.lean_step(model) is not None
    original = model.blocks[1].ln2.forward
    model.blocks[1].ln2.forward = lambda x: original(x) * 0.5  # patched on the instance
    assert lean.lean_step(model) is None
    del model.blocks[1].ln2.forward
    model.blocks[0].mlp = Doubled(model.blocks[0].mlp)
    assert lean.lean_step(model) is None
    tokens = random_tokens(1, 5)
    out = model.generate(tokens, 6, eos_token_id=[])
    assert not lean_calls
    with torch.no_grad():
        full = model(out[:, :-1]).argmax(-1)[:, 4:]  # greedy: each new token is the forward's argmax
    assert torch.equal(full, out[:, 5:])


@pytest.mark.parametrize("mlp_norm", ["layernorm", "rmsnorm", "layernorm_pre"])
def test_lean_step_applies_the_solu_mlp_norm_of_a_from_config_model(mlp_norm: str) -> None:
    """TransformerLens SoLU MLPs normalise their activations before W_out: the lean step must too."""
    from hookscope.models.decoder import Decoder
    from hookscope.models.decoder_config import DecoderConfig

    cfg = DecoderConfig(d_model=24, n_layers=2, n_heads=3, d_head=8, d_mlp=19, d_vocab=53, n_ctx=32,
                        act_fn="solu", mlp_norm=mlp_norm)
    model = Decoder.from_config(cfg, seed=1, init_range=0.3).eval()
    step = lean.lean_step(model)
    assert step is not None
    tokens = random_tokens(2, 9)[:, :9] % 53
    hooked, plain = KVCache.for_model(model, 2, 9), KVCache.for_model(model, 2, 9)
    with torch.no_grad():
        for cache in (hooked, plain):
            model(tokens[:, :5], kv_cache=cache, logits_to_keep=1)
        for end in range(6, 10):
            want = model(tokens[:, end - 1 : end], kv_cache=hooked, logits_to_keep=1)
            assert torch.equal(step(tokens[:, end - 1 : end], None, plain), want), f"step {end} differs"
    assert torch.equal(model.generate(tokens[:, :4], 6, eos_token_id=[]),
                       model.generate(tokens[:, :4], 6, eos_token_id=[], use_cache=False))


def _unseen_config(name: str) -> object:
    import transformers as T

    base = dict(hidden_size=36, num_hidden_layers=3, num_attention_heads=6, num_key_value_heads=2, head_dim=10,
                intermediate_size=29, vocab_size=97, max_position_embeddings=64, bos_token_id=1, eos_token_id=2,
                pad_token_id=0)
    return {
        # windows on the later layers only, much shorter than the prompt + generated length
        "qwen2_windows_from_layer_1": lambda: T.Qwen2Config(**base, use_sliding_window=True, sliding_window=3,
                                                            max_window_layers=1),
        "neox_quarter_rotary_untied": lambda: T.GPTNeoXConfig(
            hidden_size=40, num_hidden_layers=2, num_attention_heads=5, intermediate_size=23, vocab_size=97,
            rotary_pct=0.25, max_position_embeddings=64, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False),
        "gemma2_no_softcaps": lambda: T.Gemma2Config(**{**base, "head_dim": 8}, sliding_window=5,
                                                     attn_logit_softcapping=None, final_logit_softcapping=None),
    }[name]()


@pytest.mark.parametrize("name", ["qwen2_windows_from_layer_1", "neox_quarter_rotary_untied", "gemma2_no_softcaps"])
def test_left_padded_greedy_and_beams_on_other_configs_equal_hf(name: str, lean_calls: list[int]) -> None:
    import transformers as T

    from tests.helpers import redraw_parameters

    torch.manual_seed(0)
    hf = T.AutoModelForCausalLM.from_config(_unseen_config(name), attn_implementation="eager")
    redraw_parameters(hf, norm_center=0.0 if name.startswith("gemma") else 1.0).eval()
    model = hookscope.load(hf)
    tokens = random_tokens(3, 8, seed=5) % 97
    mask = torch.ones_like(tokens)
    mask[0, :4] = 0
    mask[2, :1] = 0
    tokens = tokens.masked_fill(mask == 0, 0)
    out = model.generate(tokens, 14, attention_mask=mask, eos_token_id=[])
    assert lean_calls == [3] * 13
    assert torch.equal(out, _hf_generate(hf, tokens, 14, attention_mask=mask, pad_token_id=0))
    beams = model.generate(tokens, 6, attention_mask=mask, eos_token_id=[], num_beams=3)
    assert torch.equal(beams, _hf_generate(hf, tokens, 6, attention_mask=mask, pad_token_id=0, num_beams=3))


def test_generation_keeps_no_reference_to_the_model() -> None:
    import gc
    import weakref

    model = hookscope.load(random_hf_model("gpt2"))
    model.generate(random_tokens(1, 4), 3, eos_token_id=[])
    gone = weakref.ref(model)
    del model
    gc.collect()
    assert gone() is None
