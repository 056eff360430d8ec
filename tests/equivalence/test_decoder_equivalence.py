"""Native decoders equal their Hugging Face source, hook by hook, for every supported architecture."""

from __future__ import annotations

import pytest
import torch

import hookscope
from tests.equivalence.decoder_configs import ARCHS, random_hf_model, random_tokens
from tests.helpers import TOLERANCES, first_divergence


def _compare(name: str, dtype: torch.dtype, tokens: torch.Tensor, mask: torch.Tensor | None = None) -> None:
    hf = random_hf_model(name, dtype)
    model = hookscope.load(hf, dtype=dtype)
    kwargs = {}
    if mask is not None:
        kwargs = {"attention_mask": mask, "position_ids": hookscope_positions(mask)}
    with torch.no_grad():
        ref = hf(tokens, output_hidden_states=True, output_attentions=True, **kwargs)
        logits, cache = model.run_with_cache(tokens, attention_mask=mask)
        plain = model(tokens, attention_mask=mask)  # no hooks: the fused path
    n = model.cfg.n_layers
    pairs = [(f"blocks.{i}.hook_resid_pre", cache["resid_pre", i], ref.hidden_states[i]) for i in range(n)]
    pairs += [(f"blocks.{i}.attn.hook_pattern", cache["pattern", i], ref.attentions[i]) for i in range(n)]
    # HF's last hidden state is after the final norm (the last block's output where there is none)
    final = "ln_final.hook_normalized" if model.cfg.final_norm != "none" else f"blocks.{n - 1}.hook_resid_post"
    pairs += [(final, cache[final], ref.hidden_states[n])]
    pairs += [("logits", logits, ref.logits), ("logits without hooks", plain, ref.logits)]
    if mask is not None:  # padded query rows are meaningless; compare real positions only
        keep = mask.bool()
        pairs = [(k, _real(a, keep), _real(b, keep)) for k, a, b in pairs]
    atol, rtol = TOLERANCES[dtype]
    problem = first_divergence(pairs, atol, rtol)
    assert problem is None, f"{name} ({dtype}): first divergent hook: {problem}"


def hookscope_positions(mask: torch.Tensor) -> torch.Tensor:
    from hookscope.components.masks import positions_from_mask

    return positions_from_mask(mask)


def _real(t: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    if t.ndim == 4 and t.shape[-1] == t.shape[-2] == keep.shape[1]:  # pattern [b, h, q, k]
        return t.transpose(1, 2)[keep]
    return t[keep]


@pytest.mark.parametrize("name", ARCHS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_every_layer_matches_hf(name: str, dtype: torch.dtype) -> None:
    _compare(name, dtype, random_tokens(5, 7))


@pytest.mark.parametrize("name", ["gpt2", "llama", "mistral", "gemma2", "neox", "gpt_neo", "gemma", "opt", "gptj",
                                  "phi_qk_layernorm_gqa"])
def test_left_padded_batch_matches_hf_with_positions(name: str) -> None:
    # float32: HF's own float64 eager attention turns fully padded rows into NaN (float32 softmax of a
    # float64 mask), so there is no float64 reference to compare against; ours stays finite (tested below).
    tokens = random_tokens(3, 9)
    mask = torch.ones_like(tokens)
    mask[0, :3] = 0
    mask[2, :1] = 0
    _compare(name, torch.float32, tokens, mask)


def test_padded_float64_stays_finite() -> None:
    model = hookscope.load(random_hf_model("llama", torch.float64), dtype=torch.float64)
    tokens = random_tokens(2, 6)
    mask = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, attention_mask=mask)
    assert all(torch.isfinite(t).all() for t in cache.values())


@pytest.mark.parametrize("name", ["gpt2", "llama", "gemma2", "mistral"])
def test_left_padding_equals_unpadded(name: str) -> None:
    model = hookscope.load(random_hf_model(name))
    short = random_tokens(1, 5)
    padded = torch.cat([torch.zeros(1, 3, dtype=torch.long), short], dim=1)
    mask = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1]])
    with torch.no_grad():
        alone = model(short)
        in_batch = model(padded, attention_mask=mask)
    torch.testing.assert_close(in_batch[:, 3:], alone, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["gpt2", "qwen3", "mistral"])
def test_batched_equals_one_by_one(name: str) -> None:
    model = hookscope.load(random_hf_model(name))
    tokens = random_tokens(4, 6)
    with torch.no_grad():
        batched = model(tokens)
        single = torch.cat([model(tokens[i : i + 1]) for i in range(4)])
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["llama", "mistral", "gpt2"])
def test_sdpa_path_equals_explicit_path(name: str) -> None:
    model = hookscope.load(random_hf_model(name))
    tokens = random_tokens(2, 8)
    mask = torch.ones_like(tokens)
    mask[1, :2] = 0
    with torch.no_grad():
        fused = model(tokens, attention_mask=mask)
        with model.hooks([(lambda n: n.endswith("hook_pattern"), lambda t, hook: None)]):
            explicit = model(tokens, attention_mask=mask)
    torch.testing.assert_close(fused, explicit, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "name", ["gpt2", "llama", "gemma2", "neox", "qwen3", "gpt_neo_untied", "gemma_mqa_untied_bias",
             "opt_untied_gelu_nobias"]
)
def test_parameter_gradients_match_hf(name: str) -> None:
    hf = random_hf_model(name, torch.float64)
    model = hookscope.load(hf, dtype=torch.float64)
    tokens = random_tokens(2, 6)
    hf(tokens, labels=tokens).loss.backward()
    model(tokens, return_type="loss").backward()
    ours = {n: p.grad for n, p in model.named_parameters()}
    # map through the conversion rules by exporting our gradients as if they were weights
    from hookscope.convert.decoder_hf import ARCHITECTURES
    from hookscope.convert.engine import RuleSet, convert_state_dict

    arch = ARCHITECTURES[model.cfg.hf_config["model_type"]]
    rules = RuleSet(arch.rules(model.cfg).inverted().rules)
    hf_names = [n for n, _ in hf.named_parameters()]
    produced = _produced(rules, model)
    exported = convert_state_dict(ours, rules, model.cfg.n_layers, [n for n in hf_names if n in produced])
    for n, p in hf.named_parameters():
        if n in exported:
            torch.testing.assert_close(exported[n], p.grad, atol=1e-10, rtol=1e-10, msg=f"gradient of {n}")
    assert len(exported) >= len(hf_names) - 1  # every parameter compared (a tied head appears once)


def _produced(rules, model) -> set[str]:
    from hookscope.convert.engine import expand

    return {t for r in expand(rules.rules, model.cfg.n_layers) for t in r.targets}


@pytest.mark.parametrize("name", ["gpt2", "neox", "llama", "gemma2", "qwen2", "gpt_neo_untied", "gemma", "opt", "gptj",
                                  "gptj_full_rotary_tied_gelu", "phi", "phi_qk_layernorm_gqa",
                                  "opt_no_affine_no_final_norm"])
def test_to_hf_round_trip(name: str) -> None:
    model = hookscope.load(random_hf_model(name))
    back = model.to_hf()
    tokens = random_tokens(2, 7)
    with torch.no_grad():
        torch.testing.assert_close(back(tokens).logits, model(tokens), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["llama", "gpt2", "gpt_neo", "gptj", "phi"])
def test_bfloat16_smoke(name: str) -> None:
    hf = random_hf_model(name)
    model = hookscope.load(hf, dtype=torch.bfloat16)
    tokens = random_tokens(2, 7)
    with torch.no_grad():
        ours = model(tokens).float()
        ref = hf(tokens).logits
    assert model.W_E.dtype == torch.bfloat16
    # bf16 keeps ~3 significant digits: the top predictions must agree almost everywhere
    agree = (ours.argmax(-1) == ref.argmax(-1)).float().mean()
    assert agree >= 0.9, f"bf16 argmax agreement {agree:.2f}"


def test_partial_rotary_with_scaled_rope_is_refused_for_llama() -> None:
    import transformers as T

    from hookscope.convert.engine import ConversionError
    from tests.equivalence.decoder_configs import _llama_kwargs

    config = T.LlamaConfig(**_llama_kwargs(), rope_parameters={
        "rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0, "partial_rotary_factor": 0.5})
    with pytest.raises(ConversionError, match="partial_rotary_factor"):
        hookscope.load(T.LlamaForCausalLM(config))


@pytest.mark.parametrize("name", ["llama", "gpt2", "gemma2", "qwen3", "neox", "gpt_neo", "gemma", "opt", "gptj", "phi"])
def test_hooks_fire_once_ablation_changes_and_patching_clean_is_identity(name: str) -> None:
    from hookscope.names import shape_of

    model = hookscope.load(random_hf_model(name))
    tokens = random_tokens(2, 6)
    counts: dict[str, int] = {}
    ranks: dict[str, int] = {}

    def count(t: torch.Tensor, hook) -> None:
        counts[hook.name] = counts.get(hook.name, 0) + 1
        ranks[hook.name] = t.ndim

    with torch.no_grad():
        with model.hooks([(lambda n: True, count)]):
            clean = model(tokens)
        assert set(counts.values()) == {1}
        assert set(counts) == set(model.hook_dict)  # every point fires: none exists that never can
        undocumented = {n: r for n, r in ranks.items() if len((shape_of(n) or "").split()) != r}
        assert not undocumented, undocumented  # each name has a documented shape of the right rank
        cached_logits, cache = model.run_with_cache(tokens)
        patch = [(n, lambda t, hook: cache[hook.name]) for n in cache]
        patched = model.run_with_hooks(tokens, fwd_hooks=patch)
        torch.testing.assert_close(patched, cached_logits, atol=0, rtol=0)  # same hooks, same path: exact
        torch.testing.assert_close(patched, model(tokens), atol=1e-5, rtol=1e-5)
        ablated = model.run_with_hooks(tokens, fwd_hooks=[("blocks.1.attn.hook_z", lambda t, hook: t * 0)])
        assert not torch.allclose(ablated, clean)
