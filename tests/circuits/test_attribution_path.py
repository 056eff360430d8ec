"""Attribution patching: exact on a model linear in its activations, a finite-difference derivative on a real
decoder; path patching against two hand-written hook runs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import hookscope
from hookscope.analysis import patching as P
from hookscope.analysis.attribution import attribution_patch, correlation
from hookscope.analysis.path_patching import path_patch
from hookscope.hooks import HookedModule, HookPoint
from tests.circuits.fp64 import pure_float64
from tests.equivalence.decoder_configs import random_hf_model, random_tokens

EXACT = dict(atol=1e-10, rtol=1e-10)


class ToyAttention(nn.Module):
    """Heads that mix positions with a FIXED causal matrix: the output is linear in v and z."""

    def __init__(self, d: int, heads: int, d_head: int, pos: int, gen: torch.Generator) -> None:
        super().__init__()
        self.heads, self.d_head = heads, d_head
        self.W_V = nn.Parameter(torch.randn(d, heads * d_head, generator=gen, dtype=torch.float64))
        self.W_O = nn.Parameter(torch.randn(heads * d_head, d, generator=gen, dtype=torch.float64))
        self.register_buffer("mix", torch.rand(heads, pos, pos, generator=gen, dtype=torch.float64).tril())
        self.hook_v, self.hook_z = HookPoint(), HookPoint()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, p, _ = x.shape
        v = self.hook_v((x @ self.W_V).view(b, p, self.heads, self.d_head))
        z = self.hook_z(torch.einsum("hqk,bkhe->bqhe", self.mix[:, :p, :p], v))
        return z.reshape(b, p, -1) @ self.W_O


class ToyBlock(nn.Module):
    def __init__(self, d: int, gen: torch.Generator) -> None:
        super().__init__()
        self.attn = ToyAttention(d, 2, 3, 8, gen)
        self.W_mlp = nn.Parameter(torch.randn(d, d, generator=gen, dtype=torch.float64) / d**0.5)
        for name in ("hook_resid_pre", "hook_attn_out", "hook_resid_mid", "hook_mlp_out", "hook_resid_post"):
            setattr(self, name, HookPoint())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.hook_resid_pre(x)
        x = self.hook_resid_mid(x + self.hook_attn_out(self.attn(x)))
        return self.hook_resid_post(x + self.hook_mlp_out(x @ self.W_mlp))


class LinearToy(HookedModule):
    """Embedding, two linear blocks and an unembedding: every hooked activation enters the logits linearly."""

    def __init__(self, vocab: int = 11, d: int = 6) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.embed = nn.Parameter(torch.randn(vocab, d, generator=gen, dtype=torch.float64))
        self.blocks = nn.ModuleList(ToyBlock(d, gen) for _ in range(2))
        self.unembed = nn.Parameter(torch.randn(d, vocab, generator=gen, dtype=torch.float64))
        self.setup_hooks()

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed[tokens]
        for block in self.blocks:
            x = block(x)
        return x @ self.unembed


def linear_metric(logits: torch.Tensor) -> torch.Tensor:
    return logits[:, -1, 3].mean() - 0.5 * logits[:, -2, 4].mean()


def test_attribution_equals_activation_patching_on_a_linear_model() -> None:
    model = LinearToy()
    gen = torch.Generator().manual_seed(3)
    clean, corrupted = torch.randint(0, 11, (3, 5), generator=gen), torch.randint(0, 11, (3, 5), generator=gen)
    _, cache = model.run_with_cache(clean)
    attr = attribution_patch(model, clean, corrupted, linear_metric, activations=("resid_pre", "attn_out", "z", "v"))
    base = attr.corrupted_metric
    torch.testing.assert_close(attr.grid("resid_pre"), P.get_act_patch_resid_pre(model, corrupted, cache,
                                                                                  linear_metric) - base, **EXACT)
    torch.testing.assert_close(attr.grid("attn_out"), P.get_act_patch_attn_out(model, corrupted, cache,
                                                                                linear_metric) - base, **EXACT)
    torch.testing.assert_close(attr.grid("z"), P.get_act_patch_attn_head_out_by_pos(model, corrupted, cache,
                                                                                     linear_metric) - base, **EXACT)
    torch.testing.assert_close(attr.grid("v", all_pos=True), P.get_act_patch_attn_head_v_all_pos(
        model, corrupted, cache, linear_metric) - base, **EXACT)
    assert attr.grid("resid_pre").abs().max() > 0.1


def test_attribution_is_the_directional_derivative_on_a_real_decoder() -> None:
    model = pure_float64(hookscope.load(random_hf_model("llama", torch.float64), dtype=torch.float64))
    clean, corrupted = random_tokens(2, 6, seed=1), random_tokens(2, 6, seed=2)

    def metric(logits: torch.Tensor) -> torch.Tensor:
        return (logits[:, -1, 5] - logits[:, -1, 7]).mean()

    attr = attribution_patch(model, clean, corrupted, metric)
    _, cache = model.run_with_cache(clean, names_filter=["blocks.1.hook_resid_mid", "blocks.2.attn.hook_z"])
    for name, where, got in [("blocks.1.hook_resid_mid", (slice(None), 2), attr.grid("resid_mid")[1, 2]),
                             ("blocks.2.attn.hook_z", (slice(None), 4, 3), attr.grid("z")[2, 4, 3])]:
        def nudge(eps: float, name=name, where=where) -> float:
            def hook(act, hook):
                act = act.clone()
                act[where] += eps * (cache[name][where] - act[where])
                return act
            with torch.no_grad():
                return float(metric(model.run_with_hooks(corrupted, fwd_hooks=[(name, hook)])))
        eps = 1e-5
        torch.testing.assert_close(float(got), (nudge(eps) - nudge(-eps)) / (2 * eps), atol=1e-7, rtol=1e-6)
    act = P.get_act_patch_resid_pre(model, corrupted, model.run_with_cache(clean)[1], metric)
    assert -1.0 <= correlation(attr.grid("resid_pre"), act - attr.corrupted_metric) <= 1.0


def test_path_patching_equals_two_hand_written_runs() -> None:
    model = hookscope.load(random_hf_model("llama", torch.float64), dtype=torch.float64)  # GQA: 2 query heads/kv
    clean, corrupted = random_tokens(2, 6, seed=1), random_tokens(2, 6, seed=2)

    def metric(logits: torch.Tensor) -> torch.Tensor:
        return (logits[:, -1, 5] - logits[:, -1, 7]).mean()

    receivers = [(2, 0), (2, 3)]
    got = path_patch(model, clean, corrupted, metric, receivers, ("q", "v"), batch_size=4)
    clean_logits, clean_cache = model.run_with_cache(clean)
    _, corr_cache = model.run_with_cache(corrupted)
    torch.testing.assert_close(got[2:], torch.full_like(got[2:], float(metric(clean_logits.detach()))), **EXACT)

    sender = (1, 2)
    recorded = {}

    def freeze(act, hook):
        layer = int(hook.name.split(".")[1])
        new = clean_cache[hook.name].clone()
        if layer == sender[0]:
            new[:, :, sender[1]] = corr_cache[hook.name][:, :, sender[1]]
        return new

    def record(act, hook):
        recorded[hook.name] = act.clone()

    with torch.no_grad():
        model.run_with_hooks(clean, fwd_hooks=[(lambda n: n.endswith("hook_z"), freeze),
                                               ("blocks.2.attn.hook_q", record), ("blocks.2.attn.hook_v", record)])

    def patch_q(act, hook):
        act = act.clone()
        act[:, :, [0, 3]] = recorded[hook.name][:, :, [0, 3]]
        return act

    def patch_v(act, hook):
        act = act.clone()
        act[:, :, [0, 1]] = recorded[hook.name][:, :, [0, 1]]  # kv heads of query heads 0 and 3
        return act

    with torch.no_grad():
        want = metric(model.run_with_hooks(clean, fwd_hooks=[("blocks.2.attn.hook_q", patch_q),
                                                             ("blocks.2.attn.hook_v", patch_v)]))
    torch.testing.assert_close(got[sender], want, **EXACT)
    assert abs(float(got[sender]) - float(metric(clean_logits.detach()))) > 1e-6
    some = path_patch(model, clean, corrupted, metric, receivers, ("q", "v"), senders=[sender, (0, 0)])
    torch.testing.assert_close(some[sender], got[sender], **EXACT)
    torch.testing.assert_close(some[0, 0], got[0, 0], **EXACT)
    assert int(torch.isnan(some).sum()) == some.numel() - 2
    with pytest.raises(ValueError, match="receiver_input"):
        path_patch(model, clean, corrupted, metric, receivers, "x")  # type: ignore[arg-type]


def test_attribution_with_logits_to_keep_equals_full_logits() -> None:
    model = hookscope.load(random_hf_model("gpt2", torch.float64), dtype=torch.float64)
    clean, corrupted = random_tokens(2, 6, seed=1), random_tokens(2, 6, seed=2)

    def metric(logits: torch.Tensor) -> torch.Tensor:
        return (logits[:, -1, 5] - logits[:, -1, 7]).mean()

    full = attribution_patch(model, clean, corrupted, metric, activations=("resid_pre", "z"))
    last = attribution_patch(model, clean, corrupted, metric, activations=("resid_pre", "z"), logits_to_keep=1)
    for name in ("resid_pre", "z"):
        torch.testing.assert_close(last.grid(name), full.grid(name), **EXACT)
    assert last.clean_metric == pytest.approx(full.clean_metric, abs=1e-12)


def reference_attribution(model, clean, corrupted, metric, names) -> dict[str, torch.Tensor]:
    """Plain autograd with the parameters requiring grad and full logits: the textbook computation."""
    _, cache = model.run_with_cache(clean, names_filter=names)
    acts = {}

    def keep(act, hook):
        acts[hook.name] = act
        act.retain_grad()
        return act

    with model.hooks([(n, keep) for n in names]):
        metric(model(corrupted)).backward()
    model.zero_grad(set_to_none=True)
    return {n: ((cache[n] - acts[n].detach()) * acts[n].grad).sum(0) for n in names}


@pytest.mark.parametrize("family", ["gpt2", "gemma2"])  # gemma2: a soft-capped unembedding
def test_attribution_on_a_metric_over_every_position_equals_plain_autograd(family: str) -> None:
    model = hookscope.load(random_hf_model(family, torch.float64), dtype=torch.float64)
    clean, corrupted = random_tokens(2, 6, seed=1), random_tokens(2, 6, seed=2)

    def metric(logits: torch.Tensor) -> torch.Tensor:  # reads rows 0, 2 and 5 of both sequences
        logp = logits.log_softmax(-1)
        return logp[:, [0, 2, 5], 3].sum() - logp[1, 4, 7]

    names = [f"blocks.{i}.{s}" for i in range(3) for s in ("hook_resid_pre", "attn.hook_z", "hook_mlp_out")]
    frozen = model.blocks[1].attn.q_proj.weight  # one parameter the user froze: it must stay frozen
    frozen.requires_grad_(False)
    got = attribution_patch(model, clean, corrupted, metric, names_filter=names)
    assert not frozen.requires_grad and all(p.requires_grad for n, p in model.named_parameters()
                                            if p is not frozen)
    assert all(p.grad is None for p in model.parameters())
    want = reference_attribution(model, clean, corrupted, metric, names)
    for name in names:
        torch.testing.assert_close(got.scores[name], want[name], **EXACT)
    assert max(float(s.abs().max()) for s in want.values()) > 1e-3
    with torch.no_grad():
        assert got.clean_metric == pytest.approx(float(metric(model(clean))), abs=1e-12)
        assert got.corrupted_metric == pytest.approx(float(metric(model(corrupted))), abs=1e-12)


def test_attribution_restores_parameter_flags_when_the_metric_raises() -> None:
    model = hookscope.load(random_hf_model("gpt2", torch.float64), dtype=torch.float64)
    tokens = random_tokens(1, 5, seed=1)

    def broken(logits: torch.Tensor) -> torch.Tensor:
        raise ZeroDivisionError("user bug")

    with pytest.raises(ZeroDivisionError, match="user bug"):
        attribution_patch(model, tokens, tokens, broken, activations=("resid_pre",))
    assert all(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("family", ["llama", "qwen3"])  # hook_q / hook_k sit on the q/k projections, split into heads
def test_attribution_on_a_wrapped_rotary_model_equals_the_native_models(family: str) -> None:
    """A wrapped model's per-head q/k hooks show the projection as a view split into heads: the tensor a
    hook keeps must be the one the forward goes on with, or its gradient (and its score) is silently 0."""
    from tests.bridge import models as bridge_models

    hf = bridge_models.decoder(family, dtype=torch.float64)
    native, wrapped = hookscope.load(hf, dtype=torch.float64), hookscope.wrap(hf)
    clean, corrupted = bridge_models.tokens(seed=1), bridge_models.tokens(seed=2)

    def metric(logits: torch.Tensor) -> torch.Tensor:
        return logits.log_softmax(-1)[:, -1, 3].sum() - logits[:, 2, 9].mean()

    want = attribution_patch(native, clean, corrupted, metric)  # every default activation: resid_mid is
    got = attribution_patch(wrapped, clean, corrupted, metric)  # observe-only there (the norm's input)
    assert sorted(got.scores) == sorted(want.scores)
    for name, score in want.scores.items():
        torch.testing.assert_close(got.scores[name], score, **EXACT)
    assert float(want.scores["blocks.1.attn.hook_q"].abs().max()) > 1e-4
    # an observe-only point as the first hooked activation: the graph must start there, not be refused
    only = attribution_patch(wrapped, clean, corrupted, metric, ("resid_mid",))
    for name, score in only.scores.items():
        torch.testing.assert_close(score, want.scores[name], **EXACT)
    assert float(only.scores["blocks.1.hook_resid_mid"].abs().max()) > 1e-4


@pytest.mark.parametrize("family", ["gpt2", "llama"])  # LayerNorm and RMSNorm scales
def test_attribution_scores_norm_scales_like_one_leaf_per_hook(family: str) -> None:
    """A norm computes ``hook_scale`` beside its fused kernel and uses it only when a hook hands back another
    tensor: with the residual stream hooked before it, the scale must still be on the graph (it scored 0)."""
    model = hookscope.load(random_hf_model(family, torch.float64), dtype=torch.float64)
    clean, corrupted = random_tokens(2, 6, seed=1), random_tokens(2, 6, seed=2)

    def metric(logits: torch.Tensor) -> torch.Tensor:
        return logits.log_softmax(-1)[:, -1, 3].sum()

    scales = ["blocks.1.ln1.hook_scale", "blocks.2.ln2.hook_scale", "ln_final.hook_scale"]
    got = attribution_patch(model, clean, corrupted, metric, names_filter=["blocks.0.hook_resid_pre", *scales])
    _, cache = model.run_with_cache(clean, names_filter=scales)
    for name in scales:  # the textbook computation: this one activation a leaf, one forward, one backward
        leaf: list[torch.Tensor] = []

        def swap(act: torch.Tensor, hook: object, leaf: list[torch.Tensor] = leaf) -> torch.Tensor:
            leaf.append(act.detach().clone().requires_grad_(True))
            return leaf[0]

        with model.hooks([(name, swap)]):
            (grad,) = torch.autograd.grad(metric(model(corrupted)), leaf)
        want = ((cache[name] - leaf[0].detach()) * grad).sum(0)
        assert float(want.abs().max()) > 1e-5
        torch.testing.assert_close(got.scores[name], want, atol=1e-10, rtol=1e-10 if family == "gpt2" else 1e-6)
