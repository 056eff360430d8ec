"""Batched activation patching equals hand-written one-run-per-patch hook runs (float64, 1e-10)."""

from __future__ import annotations

import pytest
import torch

import hookscope
from hookscope.analysis import patching as P
from tests.equivalence.decoder_configs import random_hf_model, random_tokens
from tests.equivalence.vit_cases import make_hf, pixels_for

EXACT = dict(atol=1e-10, rtol=1e-10)


def logit_diff(logits: torch.Tensor) -> torch.Tensor:
    return (logits[:, -1, 5] - logits[:, -1, 7]).mean()


def setup(name: str = "llama"):
    model = hookscope.load(random_hf_model(name, torch.float64), dtype=torch.float64)
    clean, corrupted = random_tokens(2, 6, seed=1), random_tokens(2, 6, seed=2)
    clean_logits, clean_cache = model.run_with_cache(clean)
    return model, clean, corrupted, clean_cache, clean_logits


def by_hand(model, corrupted, clean_cache, hook_name: str, where) -> float:
    """One corrupted run with ``act[where] = clean[where]`` at ``hook_name``: the definition of a patch."""

    def hook(act: torch.Tensor, hook) -> torch.Tensor:
        act = act.clone()
        act[where] = clean_cache[hook_name][where]
        return act

    with torch.no_grad():
        return float(logit_diff(model.run_with_hooks(corrupted, fwd_hooks=[(hook_name, hook)])))


@pytest.mark.parametrize("name", ["llama", "gpt2", "neox"])
def test_resid_pre_sweep_equals_hand_written_runs(name: str) -> None:
    model, _, corrupted, cache, _ = setup(name)
    got = P.get_act_patch_resid_pre(model, corrupted, cache, logit_diff)
    n_layers, n_pos = model.cfg.n_layers, corrupted.shape[1]
    assert got.shape == (n_layers, n_pos) and got.dtype == torch.float64
    want = torch.tensor([[by_hand(model, corrupted, cache, f"blocks.{layer}.hook_resid_pre", (slice(None), pos))
                          for pos in range(n_pos)] for layer in range(n_layers)], dtype=torch.float64)
    torch.testing.assert_close(got, want, **EXACT)
    assert want.std() > 0.01  # the sweep measures something


def test_head_sweeps_equal_hand_written_runs_gqa() -> None:
    model, _, corrupted, cache, _ = setup("llama")  # 4 query heads, 2 key/value heads
    z = P.get_act_patch_attn_head_out_by_pos(model, corrupted, cache, logit_diff, batch_size=5)
    assert z.shape == (3, 6, 4)
    for layer, pos, head in [(0, 5, 3), (1, 2, 0), (2, 5, 1)]:
        want = by_hand(model, corrupted, cache, f"blocks.{layer}.attn.hook_z", (slice(None), pos, head))
        torch.testing.assert_close(z[layer, pos, head].item(), want, **EXACT)
    k = P.get_act_patch_attn_head_k_all_pos(model, corrupted, cache, logit_diff)
    assert k.shape == (3, 2)  # key/value heads
    want = by_hand(model, corrupted, cache, "blocks.1.attn.hook_k", (slice(None), slice(None), 1))
    torch.testing.assert_close(k[1, 1].item(), want, **EXACT)
    pattern = P.get_act_patch_attn_head_pattern_by_pos(model, corrupted, cache, logit_diff)
    assert pattern.shape == (3, 4, 6)
    want = by_hand(model, corrupted, cache, "blocks.2.attn.hook_pattern", (slice(None), 3, 4))
    torch.testing.assert_close(pattern[2, 3, 4].item(), want, **EXACT)
    every = P.get_act_patch_attn_head_all_pos_every(model, corrupted, cache, logit_diff)
    assert every.shape == (5, 3, 4) and torch.all(every[2:4, :, 2:] == 0)  # k, v padded to 4 heads


def test_batched_chunks_equal_one_at_a_time_and_clean_patch_is_identity() -> None:
    model, clean, corrupted, cache, clean_logits = setup("gpt2")
    one = P.get_act_patch_block_every(model, corrupted, cache, logit_diff, batch_size=1)
    many = P.get_act_patch_block_every(model, corrupted, cache, logit_diff, batch_size=7)
    torch.testing.assert_close(many, one, **EXACT)
    identity = P.get_act_patch_mlp_out(model, clean, cache, logit_diff)
    torch.testing.assert_close(identity, torch.full_like(identity, logit_diff(clean_logits).item()), **EXACT)


def test_index_df_gives_a_flat_result_in_row_order() -> None:
    pd = pytest.importorskip("pandas")
    model, _, corrupted, cache, _ = setup("gpt2")
    rows = pd.DataFrame([[2, 1], [0, 5], [1, 0]], columns=["layer", "pos"])
    got, df = P.generic_activation_patch(model, corrupted, cache, logit_diff, P.layer_pos_patch_setter, "resid_mid",
                                         index_df=rows, return_index_df=True)
    full = P.get_act_patch_resid_mid(model, corrupted, cache, logit_diff)
    torch.testing.assert_close(got, torch.stack([full[2, 1], full[0, 5], full[1, 0]]), **EXACT)
    assert df is rows
    _, grid = P.get_act_patch_resid_mid(model, corrupted, cache, logit_diff, return_index_df=True)
    assert list(grid.columns) == ["layer", "pos"] and len(grid) == full.numel()


def test_wrapped_model_patches_through_canonical_names() -> None:
    hf = random_hf_model("gpt2", torch.float64)
    native = hookscope.load(hf, dtype=torch.float64)
    wrapped = hookscope.wrap(hf)
    clean, corrupted = random_tokens(2, 6, seed=1), random_tokens(2, 6, seed=2)
    _, native_cache = native.run_with_cache(clean, names_filter=lambda n: n.endswith("hook_z"))
    _, wrapped_cache = wrapped.run_with_cache(clean, names_filter=lambda n: n.endswith("hook_z"))
    got = P.get_act_patch_attn_head_out_all_pos(wrapped, corrupted, wrapped_cache, logit_diff)
    want = P.get_act_patch_attn_head_out_all_pos(native, corrupted, native_cache, logit_diff)
    torch.testing.assert_close(got, want, atol=1e-9, rtol=1e-9)


def test_vit_patching_with_a_template_name_and_keyword_input() -> None:
    model = hookscope.load(make_hf("vit_cls", torch.float64), dtype=torch.float64)
    clean, corrupted = pixels_for(torch.float64, seed=1), pixels_for(torch.float64, seed=2)
    _, cache = model.run_with_cache(clean)

    def metric(logits: torch.Tensor) -> torch.Tensor:
        return logits[:, 2].mean()

    got = P.generic_activation_patch(model, {"pixel_values": corrupted}, cache, metric, P.layer_pos_patch_setter,
                                     "blocks.{layer}.hook_resid_pre", index_axis_names=("layer", "pos"))
    assert got.shape == (3, 26)

    def hook(act, hook):
        act = act.clone()
        act[:, 0] = cache["blocks.1.hook_resid_pre"][:, 0]
        return act

    with torch.no_grad():
        want = metric(model.run_with_hooks(corrupted, fwd_hooks=[("blocks.1.hook_resid_pre", hook)]))
    torch.testing.assert_close(got[1, 0], want, **EXACT)


def test_unknown_activation_and_missing_cache_entries_raise_clearly() -> None:
    model, _, corrupted, cache, _ = setup("gpt2")
    with pytest.raises(KeyError, match="resid_pree"):
        P.generic_activation_patch(model, corrupted, cache, logit_diff, P.layer_pos_patch_setter, "resid_pree",
                                   index_axis_names=("layer", "pos"))
    with pytest.raises(ValueError, match="batch_size"):
        P.get_act_patch_resid_pre(model, corrupted, cache, logit_diff, batch_size=0)
    _, small = model.run_with_cache(corrupted, names_filter="blocks.0.hook_resid_pre")
    with pytest.raises(KeyError, match="lacks"):
        P.get_act_patch_resid_pre(model, corrupted, small, logit_diff)


def test_logits_to_keep_gives_the_same_last_position_metric() -> None:
    model, _, corrupted, cache, _ = setup("llama")
    full = P.get_act_patch_resid_pre(model, corrupted, cache, logit_diff)
    last = P.get_act_patch_resid_pre(model, corrupted, cache, logit_diff, logits_to_keep=1)
    torch.testing.assert_close(last, full, **EXACT)
    with pytest.raises(ValueError, match="native decoder"):
        P.get_act_patch_resid_pre(hookscope.wrap(random_hf_model("gpt2")), corrupted, cache, logit_diff,
                                  logits_to_keep=1)


def test_t5_encoder_patching_and_attribution_with_keyword_inputs() -> None:
    from hookscope.analysis.attribution import attribution_patch
    from tests.equivalence.t5_cases import inputs, random_hf_t5

    model = hookscope.load(random_hf_t5("v1.0", torch.float64), dtype=torch.float64)
    ids, _, dec, _ = inputs()
    clean = {"input": ids, "decoder_input_ids": dec}
    corrupted = {"input": ids.roll(1, dims=1), "decoder_input_ids": dec}
    _, cache = model.run_with_cache(**clean)

    def metric(logits: torch.Tensor) -> torch.Tensor:
        return logits[:, -1, 5].mean()

    got = P.generic_activation_patch(model, corrupted, cache, metric, P.layer_pos_patch_setter,
                                     "encoder.{layer}.hook_resid_pre", ("layer", "pos"), batch_size=4)
    name = "encoder.1.hook_resid_pre"

    def hook(act, hook):
        act = act.clone()
        act[:, 4] = cache[name][:, 4]
        return act

    with torch.no_grad():
        want = metric(model.run_with_hooks(**corrupted, fwd_hooks=[(name, hook)]))
    torch.testing.assert_close(got[1, 4], want, **EXACT)
    attr = attribution_patch(model, clean, corrupted, metric, names_filter=lambda n: n.startswith("encoder.")
                             and n.endswith("hook_resid_pre"))
    assert set(attr.scores) == {f"encoder.{i}.hook_resid_pre" for i in range(got.shape[0])}


def test_every_tl_helper_returns_its_documented_shape() -> None:
    model, _, corrupted, cache, _ = setup("gpt2")  # 3 layers, 4 heads, 6 positions
    by_pos = P.get_act_patch_attn_head_by_pos_every(model, corrupted, cache, logit_diff)
    assert by_pos.shape == (5, 3, 6, 4)
    dest_src = P.get_act_patch_attn_head_pattern_dest_src_pos(model, corrupted, cache, logit_diff)
    assert dest_src.shape == (3, 4, 6, 6)
    want = by_hand(model, corrupted, cache, "blocks.1.attn.hook_pattern", (slice(None), 2, 4, 1))
    torch.testing.assert_close(dest_src[1, 2, 4, 1].item(), want, **EXACT)
    for fn in (P.get_act_patch_attn_head_q_by_pos, P.get_act_patch_attn_head_v_by_pos):
        assert fn(model, corrupted, cache, logit_diff).shape == (3, 6, 4)
    for fn in (P.get_act_patch_attn_head_q_all_pos, P.get_act_patch_attn_head_v_all_pos,
               P.get_act_patch_attn_head_pattern_all_pos):
        assert fn(model, corrupted, cache, logit_diff).shape == (3, 4)


def test_bert_mlm_patching_and_head_detection_refusal() -> None:
    from hookscope.analysis.head_detection import detect_head
    from tests.equivalence.bert_configs import random_hf_model as random_bert

    model = hookscope.load(random_bert("BertForMaskedLM", torch.float64), dtype=torch.float64)
    clean, corrupted = random_tokens(2, 6, seed=1), random_tokens(2, 6, seed=2)
    _, cache = model.run_with_cache(clean)

    def metric(logits: torch.Tensor) -> torch.Tensor:
        return logits[:, 3, 5].mean()

    got = P.get_act_patch_attn_head_out_by_pos(model, corrupted, cache, metric)
    assert got.shape == (3, 6, 4)
    want = by_hand_metric(model, corrupted, cache, "blocks.2.attn.hook_z", (slice(None), 4, 1), metric)
    torch.testing.assert_close(got[2, 4, 1].item(), want, **EXACT)
    with pytest.raises(ValueError, match="later positions"):  # bidirectional: "abs" compares causal patterns
        detect_head(model, clean[0], "previous_token_head", error_measure="abs")


def by_hand_metric(model, corrupted, clean_cache, hook_name: str, where, metric) -> float:
    def hook(act: torch.Tensor, hook) -> torch.Tensor:
        act = act.clone()
        act[where] = clean_cache[hook_name][where]
        return act

    with torch.no_grad():
        return float(metric(model.run_with_hooks(corrupted, fwd_hooks=[(hook_name, hook)])))
