"""From-scratch decoder fields (attn-only, LNPre/RMSPre/no norm, final norm apart, d_vocab_out, init) against
an independent by-hand forward, and ``labels=`` / ``loss_per_token`` against Hugging Face."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import hookscope
from hookscope.models.decoder import Decoder
from hookscope.models.decoder_config import DecoderConfig
from tests.equivalence.decoder_configs import random_hf_model, random_tokens
from tests.helpers import redraw_parameters

NORMS = ["layernorm", "layernorm_pre", "rmsnorm", "rmsnorm_pre", "none"]


def _cfg(**kw) -> DecoderConfig:
    base = dict(d_model=24, n_layers=2, n_heads=3, d_head=5, d_mlp=19, d_vocab=31, d_vocab_out=17, n_ctx=16,
                act_fn="gelu_new",
                softmax_in_float32=False)  # softmax in the model dtype, as the by-hand reference
    return DecoderConfig(**{**base, **kw})


def _norm(x: torch.Tensor, kind: str, module: torch.nn.Module, eps: float) -> torch.Tensor:
    """By-hand norms, read off TransformerLens's definitions (LNPre: centre and scale; RMSPre: scale only)."""
    if kind == "none":
        return x
    if kind == "rmsnorm":  # HF Llama's RMSNorm normalises in float32 whatever the dtype
        x32 = x.float()
        return module.weight * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)
    if kind.startswith("layernorm"):
        x = x - x.mean(-1, keepdim=True)
    x = x / (x.pow(2).mean(-1, keepdim=True) + eps).sqrt()
    if kind == "layernorm":
        return x * module.weight + module.bias
    return x


def _reference_logits(model: Decoder, tokens: torch.Tensor) -> torch.Tensor:
    """Every step written out with plain tensor ops on the model's parameters (no hookscope component)."""
    cfg = model.cfg
    n = tokens.shape[1]
    x = model.embed.weight[tokens] + model.pos_embed.weight[:n]  # [batch, pos, d_model]
    causal = torch.ones(n, n, dtype=torch.bool).tril()
    for block in model.blocks:
        h = _norm(x, cfg.norm, block.ln1, cfg.norm_eps)
        a = block.attn
        q, k, v = ((h @ p.weight.T).unflatten(-1, (cfg.n_heads, cfg.d_head)) for p in (a.q_proj, a.k_proj, a.v_proj))
        scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(cfg.d_head)
        pattern = scores.masked_fill(~causal, float("-inf")).softmax(-1)
        z = torch.einsum("bhqk,bkhd->bqhd", pattern, v).flatten(2)
        x = x + z @ a.o_proj.weight.T
        if not cfg.attn_only:
            h2 = _norm(x, cfg.norm, block.ln2, cfg.norm_eps)
            up = h2 @ block.mlp.up_proj.weight.T
            x = x + F.gelu(up, approximate="tanh") @ block.mlp.down_proj.weight.T
    return _norm(x, cfg.final_norm, model.ln_final, cfg.norm_eps) @ model.unembed.weight.T


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("attn_only", [True, False])
def test_from_scratch_fields_equal_a_by_hand_forward_in_float64(norm: str, attn_only: bool) -> None:
    final = NORMS[(NORMS.index(norm) + 2) % len(NORMS)]  # a different final norm: they are independent
    cfg = _cfg(norm=norm, final_norm=final, attn_only=attn_only, d_mlp=0 if attn_only else 19)
    model = redraw_parameters(Decoder.from_config(cfg, seed=3)).double()
    tokens = torch.randint(0, 31, (3, 7), generator=torch.Generator().manual_seed(0))
    logits = model(tokens)
    assert logits.shape == (3, 7, 17)
    torch.testing.assert_close(logits, _reference_logits(model, tokens), atol=1e-10, rtol=1e-10)


def test_attn_only_blocks_have_no_mlp_and_their_hooks_fire() -> None:
    model = Decoder.from_config(_cfg(attn_only=True, d_mlp=0, norm="layernorm_pre"))
    assert not any("mlp" in n or "ln2" in n for n, _ in model.named_modules())
    _, cache = model.run_with_cache(torch.arange(6)[None])
    assert "blocks.1.hook_resid_post" in cache and "blocks.0.ln1.hook_scale" in cache
    assert "blocks.0.hook_mlp_out" not in cache and "blocks.0.hook_resid_mid" not in cache
    assert not any(p.ndim == 1 for n, p in model.named_parameters() if "ln" in n)  # LNPre has no weights


def test_no_norm_has_no_norm_hooks() -> None:
    _, cache = Decoder.from_config(_cfg(norm="none")).run_with_cache(torch.arange(5)[None])
    assert not any("ln" in name for name in cache)


def test_from_config_is_seeded_tl_style_init() -> None:
    cfg = _cfg(d_mlp=40, d_model=64, n_heads=4, d_head=16, qkv_bias=True, mlp_bias=True)
    a, b, c = Decoder.from_config(cfg, seed=1), Decoder.from_config(cfg, seed=1), Decoder.from_config(cfg, seed=2)
    for (name, pa), pb, pc in zip(a.named_parameters(), b.parameters(), c.parameters(), strict=True):
        assert torch.equal(pa, pb), name
        if pa.ndim >= 2:
            assert not torch.equal(pa, pc), name
            assert abs(pa.std().item() - 0.02) < 0.004, name
        elif "ln" in name and name.endswith("weight"):
            assert torch.all(pa == 1), name
        else:
            assert torch.all(pa == 0), name
    wide = Decoder.from_config(cfg, seed=1, init_range=0.1)
    assert abs(wide.embed.weight.std().item() - 0.1) < 0.01


def test_tied_and_untied_embeddings() -> None:
    tied = Decoder.from_config(_cfg(d_vocab_out=None, tie_embeddings=True))
    assert tied.unembed.weight is tied.embed.weight
    untied = Decoder.from_config(_cfg(d_vocab_out=None))
    assert not torch.equal(untied.unembed.weight, untied.embed.weight)


@pytest.mark.parametrize("kw, message", [
    (dict(attn_only=True, parallel_attn_mlp=True, d_mlp=0), "exclude each other"),
    (dict(attn_only=True, d_mlp=8), "leave d_mlp at 0"),
    (dict(d_mlp=0), "d_mlp must be positive"),
    (dict(tie_embeddings=True), "d_vocab_out == d_vocab"),
    (dict(norm="batchnorm"), "choose one of"),
    (dict(final_norm="LN"), "choose one of"),
])
def test_bad_from_scratch_configs_raise_clearly(kw: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _cfg(**kw)


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_labels_give_hf_loss_and_gradients(name: str) -> None:
    from tests.equivalence.test_decoder_equivalence import _produced

    hf = random_hf_model(name, torch.float64)
    model = hookscope.load(hf, dtype=torch.float64)
    tokens = random_tokens(3, 7)
    mask = torch.ones_like(tokens)
    mask[0, -2:] = 0  # right padding, as training batches are padded
    labels = tokens.masked_fill(mask == 0, -100)
    labels[2, 4] = -100  # a user-ignored position inside a row
    ref = hf(input_ids=tokens, attention_mask=mask, labels=labels)
    out = model(input_ids=tokens, attention_mask=mask, labels=labels)
    torch.testing.assert_close(out.loss, ref.loss, atol=1e-10, rtol=1e-10)
    real = mask.bool()  # padded positions' logits are arbitrary (and differ): compare the real ones
    torch.testing.assert_close(out["logits"][real], ref.logits[real], atol=1e-10, rtol=1e-10)
    ref.loss.backward()
    out.loss.backward()
    from hookscope.convert.decoder_hf import ARCHITECTURES
    from hookscope.convert.engine import RuleSet, convert_state_dict

    rules = RuleSet(ARCHITECTURES[model.cfg.hf_config["model_type"]].rules(model.cfg).inverted().rules)
    hf_names = [n for n, _ in hf.named_parameters()]
    grads = {n: p.grad for n, p in model.named_parameters()}
    wanted = [n for n in hf_names if n in _produced(rules, model)]
    exported = convert_state_dict(grads, rules, model.cfg.n_layers, wanted)
    assert len(exported) >= len(hf_names) - 1
    for n, p in hf.named_parameters():
        if n in exported:
            torch.testing.assert_close(exported[n], p.grad, atol=1e-10, rtol=1e-10, msg=f"gradient of {n}")


def test_loss_per_token_equals_a_by_hand_cross_entropy() -> None:
    model = Decoder.from_config(_cfg(d_vocab_out=None), seed=0).double()
    tokens = torch.randint(0, 31, (2, 6), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(tokens)
    mask[1, :2] = 0
    logits = model(tokens, attention_mask=mask)
    per_token = model(tokens, attention_mask=mask, return_type="loss", loss_per_token=True)
    assert per_token.shape == (2, 5)
    logp = logits.float().log_softmax(-1)  # the loss is taken on float32 logits, as HF's is
    for b in range(2):
        for t in range(5):
            # as TransformerLens: scored only when the position and its target are both real tokens
            want = 0.0 if mask[b, t] == 0 or mask[b, t + 1] == 0 else -logp[b, t, tokens[b, t + 1]].item()
            # float32 tolerance: the loss is float32 whatever the model dtype (HF's convention)
            assert per_token[b, t].item() == pytest.approx(want, abs=1e-5, rel=1e-5)
    mean = model(tokens, attention_mask=mask, return_type="loss")
    n_scored = (mask[:, 1:] * mask[:, :-1]).sum()
    torch.testing.assert_close(mean, per_token.sum() / n_scored, atol=1e-6, rtol=1e-6)
    out = model(tokens, labels=tokens, loss_per_token=True)
    assert out.loss.shape == (2, 5)


def test_labels_and_input_misuse_raise_clearly() -> None:
    model = Decoder.from_config(_cfg(d_vocab_out=None))
    tokens = torch.arange(5)[None]
    with pytest.raises(TypeError, match="either input or input_ids"):
        model(tokens, input_ids=tokens)
    with pytest.raises(TypeError, match="needs its input"):
        model()
    with pytest.raises(ValueError, match="labels have shape"):
        model(tokens, labels=tokens[:, :3])
    with pytest.raises(TypeError, match="integer tensor"):
        model(tokens, labels=tokens.float())
    with pytest.raises(ValueError, match="full forward"):
        model(tokens, labels=tokens, stop_at_layer=1)
    assert model(tokens, return_dict=True).loss is None
    with pytest.raises(AttributeError, match="no field"):
        _ = model(tokens, return_dict=True).hidden_states


@pytest.mark.parametrize("final", ["layernorm_pre", "rmsnorm_pre", "none", "layernorm"])
def test_apply_ln_to_stack_knows_the_weightless_norms(final: str) -> None:
    model = redraw_parameters(Decoder.from_config(_cfg(attn_only=True, d_mlp=0, final_norm=final))).double()
    _, cache = model.run_with_cache(torch.randint(0, 31, (2, 6), generator=torch.Generator().manual_seed(4)))
    resid = cache["blocks.1.hook_resid_post"]
    parts = torch.stack([cache["blocks.0.hook_resid_pre"], cache["blocks.0.hook_attn_out"],
                         cache["blocks.1.hook_attn_out"]])  # they sum to resid
    through = hookscope.apply_ln_to_stack(cache, parts).sum(0)
    want = cache["ln_final.hook_normalized"] if final != "none" else resid
    if final == "layernorm":
        want = want - model.ln_final.bias  # the bias belongs to no component
    torch.testing.assert_close(through, want, atol=1e-10, rtol=1e-10)
