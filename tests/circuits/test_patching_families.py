"""Patching beyond native decoders and logit metrics, each against hand-written hook runs (float64, 1e-10):
Whisper (encoder and decoder hooks), path patching on a wrap()'ed model, metrics that read an intermediate
activation (the forward stops there), the batched engine's mixed chunks, and the clear errors where an idea
does not apply to a family."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

import hookscope
from hookscope.analysis import patching as P
from hookscope.analysis.attribution import attribution_patch
from hookscope.analysis.head_detection import detect_head, induction_scores
from hookscope.analysis.patch_runner import PatchRun, PatchRunner
from hookscope.analysis.path_patching import path_patch
from tests.equivalence.decoder_configs import random_hf_model, random_tokens
from tests.equivalence.whisper_cases import inputs, random_hf_whisper

EXACT = dict(atol=1e-10, rtol=1e-10)


def call(model, x, **kwargs):
    return model(**x, **kwargs) if isinstance(x, dict) else model(x, **kwargs)


def hand_run(model, x, patches: dict, metric, read: str | None = None) -> float:
    """One full forward with ``act[where] = value`` at each patched name; the metric of the logits, or of the
    activation at ``read``."""
    seen = {}

    def patch(act, hook):
        act = act.clone()
        where, value = patches[hook.name]
        act[where] = value[where]
        return act

    def keep(act, hook):
        seen[hook.name] = act.clone()

    hooks = [(n, patch) for n in patches] + ([(read, keep)] if read else [])
    with torch.no_grad(), model.hooks(hooks):
        out = call(model, x)
        logits = getattr(out, "logits", out)  # an HF output (wrap()) or the logits
    return float(metric(seen[read] if read else logits))


def whisper():
    model = hookscope.load(random_hf_whisper(torch.float64), dtype=torch.float64)
    feats, ids = inputs(2, 5, torch.float64)
    clean = {"input_features": feats, "decoder_input_ids": ids}
    corrupted = {"input_features": feats.flip(0), "decoder_input_ids": ids}  # the two rows' audio swapped
    with torch.no_grad():
        _, cache = model.run_with_cache(**clean)
    return model, clean, corrupted, cache


def whisper_metric(logits: torch.Tensor) -> torch.Tensor:
    return logits[:, -1, 5].mean() - logits[:, 2, 7].mean()


def test_whisper_encoder_and_decoder_sweeps_equal_hand_written_runs() -> None:
    model, _, corrupted, cache = whisper()
    sweeps = [  # template, setter, axes, how an index selects the patched slice
        ("encoder.{layer}.hook_resid_pre", P.layer_pos_patch_setter, ("layer", "pos"),
         lambda i: (slice(None), i[1])),
        ("decoder.{layer}.attn.hook_z", P.layer_pos_head_vector_patch_setter, ("layer", "pos", "head"),
         lambda i: (slice(None), i[1], i[2])),
        ("decoder.{layer}.cross_attn.hook_k", P.layer_head_vector_patch_setter, ("layer", "head"),
         lambda i: (slice(None), slice(None), i[1])),
    ]
    for template, setter, axes, where in sweeps:
        got = P.generic_activation_patch(model, corrupted, cache, whisper_metric, setter, template, axes, batch_size=7)
        want = torch.empty_like(got)
        for index in torch.cartesian_prod(*(torch.arange(s) for s in got.shape)).reshape(-1, got.ndim).tolist():
            name = template.format(layer=index[0])
            want[tuple(index)] = hand_run(model, corrupted, {name: (where(index), cache[name])}, whisper_metric)
        torch.testing.assert_close(got, want, **EXACT)
        assert want.std() > 1e-3, template  # the sweep measures something
    assert got.shape == (2, 6)  # cross-attention keys: per decoder layer and head


def test_whisper_metric_on_an_encoder_activation_stops_the_forward_there() -> None:
    model, _, corrupted, cache = whisper()
    read = "encoder.1.hook_resid_post"

    def metric(act: torch.Tensor) -> torch.Tensor:  # [batch, audio_pos, d_model]
        return act[:, 4].pow(2).sum()

    calls = Counter()

    def count(act, hook):
        calls[hook.name] += 1

    with model.hooks([("encoder.2.hook_resid_pre", count), ("decoder.0.hook_resid_pre", count)]):
        got = P.generic_activation_patch(model, corrupted, cache, metric, P.layer_pos_patch_setter,
                                         "encoder.{layer}.hook_resid_pre", ("layer", "pos"), metric_hook=read)
    assert not calls  # nothing after the metric's activation ran
    for layer, pos in [(0, 4), (1, 0), (1, 4), (2, 4)]:
        name = f"encoder.{layer}.hook_resid_pre"
        want = hand_run(model, corrupted, {name: ((slice(None), pos), cache[name])}, metric, read=read)
        torch.testing.assert_close(got[layer, pos].item(), want, **EXACT)
    corrupted_value = hand_run(model, corrupted, {}, metric, read=read)
    torch.testing.assert_close(got[2], torch.full_like(got[2], corrupted_value), **EXACT)  # after the read
    assert abs(got[0, 4].item() - corrupted_value) > 1e-3


def grads_by_autograd(model, clean, corrupted, metric, names) -> dict[str, torch.Tensor]:
    """Textbook attribution: parameters requiring grad, full forward, ``.backward()``."""
    with torch.no_grad():
        _, cache = model.run_with_cache(**clean, names_filter=names)
    acts = {}

    def keep(act, hook):
        acts[hook.name] = act
        act.retain_grad()

    with model.hooks([(n, keep) for n in names]):
        metric(call(model, corrupted)).backward()
    model.zero_grad(set_to_none=True)
    return {n: ((cache[n] - acts[n].detach()) * acts[n].grad).sum(0) for n in names}


def test_whisper_attribution_over_encoder_and_decoder_equals_plain_autograd() -> None:
    model, clean, corrupted, _ = whisper()
    names = [f"encoder.{i}.hook_resid_pre" for i in range(3)] + [
        f"decoder.{i}.{s}" for i in range(2) for s in ("attn.hook_z", "cross_attn.hook_v", "hook_mlp_out")]
    got = attribution_patch(model, clean, corrupted, whisper_metric, names_filter=names)
    want = grads_by_autograd(model, clean, corrupted, whisper_metric, names)
    assert set(got.scores) == set(names)
    for name in names:
        torch.testing.assert_close(got.scores[name], want[name], **EXACT)
    # only decoder layer 0's self-attention sees the same input in both runs (the audio differs)
    assert all((float(want[n].abs().max()) > 1e-6) == (n != "decoder.0.attn.hook_z") for n in names)
    assert got.clean_metric == pytest.approx(hand_run(model, clean, {}, whisper_metric), abs=1e-12)


def test_whisper_refuses_what_does_not_apply_naming_the_missing_piece() -> None:
    model, clean, corrupted, cache = whisper()
    with pytest.raises(ValueError, match=r"blocks\.0\.attn\.hook_z.*generic_activation_patch"):
        path_patch(model, clean, corrupted, whisper_metric, [(1, 0)], "q")
    with pytest.raises(ValueError, match=r"blocks\.0\.attn\.hook_pattern"):
        detect_head(model, clean["decoder_input_ids"][0], "previous_token_head")
    with pytest.raises(ValueError, match=r"blocks\.0\.attn\.hook_pattern"):
        induction_scores(model, clean["decoder_input_ids"], 2)
    with pytest.raises(KeyError, match="names_filter"):
        attribution_patch(model, clean, corrupted, whisper_metric)
    with pytest.raises(ValueError, match="native decoder"):
        P.generic_activation_patch(model, corrupted, cache, whisper_metric, P.layer_pos_patch_setter,
                                   "encoder.{layer}.hook_resid_pre", ("layer", "pos"), logits_to_keep=1)


def logit_diff(logits: torch.Tensor) -> torch.Tensor:
    return (logits[:, -1, 5] - logits[:, -1, 7]).mean()


def test_path_patching_on_a_wrapped_model_equals_two_hand_written_runs() -> None:
    model = hookscope.wrap(random_hf_model("llama", torch.float64))  # canonical names; 4 query, 2 kv heads
    clean, corrupted = random_tokens(2, 6, seed=1), random_tokens(2, 6, seed=2)
    receivers, sender = [(2, 1)], (0, 3)
    got = path_patch(model, clean, corrupted, logit_diff, receivers, ("q", "k"), batch_size=3)
    z = [f"blocks.{i}.attn.hook_z" for i in range(3)]
    with torch.no_grad():
        out, clean_cache = model.run_with_cache(clean)
        clean_logits = out.logits
        _, corrupted_cache = model.run_with_cache(corrupted, names_filter=z)
    torch.testing.assert_close(got[2], torch.full_like(got[2], logit_diff(clean_logits).item()), **EXACT)
    # run 1: clean input, every head's output clean except the sender's (corrupted); record the receiver's q, k
    frozen = {n: clean_cache[n].clone() for n in z}
    frozen[z[0]][:, :, 3] = corrupted_cache[z[0]][:, :, 3]
    seen = {}

    def freeze(act, hook):
        return frozen[hook.name]

    def record(act, hook):
        seen[hook.name] = act.clone()

    with torch.no_grad(), model.hooks([(n, freeze) for n in z] + [("blocks.2.attn.hook_q", record),
                                                                  ("blocks.2.attn.hook_k", record)]):
        model(clean)
    # run 2: clean input, only the receiver's query head 1 and its key/value head 0 take the recorded values
    q, k = "blocks.2.attn.hook_q", "blocks.2.attn.hook_k"
    want = hand_run(model, clean, {q: ((slice(None), slice(None), 1), seen[q]),
                                   k: ((slice(None), slice(None), 0), seen[k])}, logit_diff)
    torch.testing.assert_close(got[sender].item(), want, **EXACT)
    assert abs(want - logit_diff(clean_logits).item()) > 1e-6


def native(name: str = "llama"):
    model = hookscope.load(random_hf_model(name, torch.float64), dtype=torch.float64)
    clean, corrupted = random_tokens(2, 6, seed=1), random_tokens(2, 6, seed=2)
    with torch.no_grad():
        _, cache = model.run_with_cache(clean)
    return model, clean, corrupted, cache


def test_metric_hook_sweep_equals_full_runs_and_runs_no_later_block() -> None:
    model, _, corrupted, cache = native("llama")
    read = "blocks.1.hook_resid_post"

    def metric(act: torch.Tensor) -> torch.Tensor:  # [batch, pos, d_model]
        return act[:, -1].pow(2).sum() - act[:, 2, 3].sum()

    calls = Counter()

    def count(act, hook):
        calls[hook.name] += 1

    with model.hooks([("blocks.2.hook_resid_pre", count), ("ln_final.hook_normalized", count)]):
        got = P.get_act_patch_resid_pre(model, corrupted, cache, metric, metric_hook=read, batch_size=4)
    assert not calls
    want = torch.tensor([[hand_run(model, corrupted, {f"blocks.{layer}.hook_resid_pre": ((slice(None), pos), cache[
        f"blocks.{layer}.hook_resid_pre"])}, metric, read=read) for pos in range(6)] for layer in range(3)],
        dtype=torch.float64)
    torch.testing.assert_close(got, want, **EXACT)
    assert want[:2].std() > 1e-3 and torch.all(want[2] == want[2, 0])  # block 2 comes after the read


def test_metric_over_several_hooks_receives_a_dict() -> None:
    model, _, corrupted, cache = native("gpt2")
    reads = ["blocks.0.attn.hook_z", "blocks.1.hook_mlp_out"]

    def metric(acts: dict[str, torch.Tensor]) -> torch.Tensor:
        return acts[reads[1]][:, -1].sum() + 3 * acts[reads[0]][:, 2, 1].sum()

    got = P.get_act_patch_attn_out(model, corrupted, cache, metric, metric_hook=reads)
    for layer, pos in [(0, 1), (0, 5), (1, 5), (2, 0)]:
        name = f"blocks.{layer}.hook_attn_out"
        seen = {}

        def patch(act, hook, pos=pos, name=name):
            act = act.clone()
            act[:, pos] = cache[name][:, pos]
            return act

        def keep(act, hook, seen=seen):
            seen[hook.name] = act.clone()

        with torch.no_grad(), model.hooks([(name, patch)] + [(r, keep) for r in reads]):
            model(corrupted)
        torch.testing.assert_close(got[layer, pos].item(), float(metric(seen)), **EXACT)
    with pytest.raises(ValueError, match="metric_hook"):
        P.get_act_patch_attn_out(model, corrupted, cache, metric, metric_hook=reads, logits_to_keep=1)
    with pytest.raises(KeyError, match="hook_mlp_outt"):
        P.get_act_patch_attn_out(model, corrupted, cache, metric, metric_hook="blocks.1.hook_mlp_outt")


def test_engine_chunks_mixing_embedding_block_and_empty_patches_equal_separate_runs() -> None:
    model, _, corrupted, cache = native("gpt2")
    slots = {"hook_embed": (slice(None), 2), "blocks.0.hook_resid_pre": (slice(None), 5),
             "blocks.2.attn.hook_z": (slice(None), 5, 1), "blocks.1.hook_mlp_out": (slice(None), 0)}

    def edit(name):
        def fn(act):
            act[slots[name]] = cache[name][slots[name]]
            return act
        return fn

    plans = [["blocks.2.attn.hook_z"], [], ["hook_embed", "blocks.2.attn.hook_z"], ["blocks.1.hook_mlp_out"],
             ["blocks.0.hook_resid_pre", "blocks.1.hook_mlp_out"], ["hook_embed"]]
    runs = [PatchRun(edits={n: edit(n) for n in plan}) for plan in plans]
    want = [hand_run(model, corrupted, {n: (slots[n], cache[n]) for n in plan}, logit_diff) for plan in plans]
    for batch_size in (1, 2, 6):
        got = PatchRunner(model, corrupted, logit_diff, batch_size=batch_size).run(runs)
        torch.testing.assert_close(torch.tensor(got), torch.tensor(want), **EXACT)
    assert len({round(w, 8) for w in want}) == len(want)  # every plan changes the metric differently


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_sweeps_with_a_metric_over_every_position_equal_hand_written_runs(family: str) -> None:
    """Runs take the corrupted logits before the first position they change (the model is causal): a metric
    reading every position checks those too, for patches of one position, of all positions and of keys."""
    model, _, corrupted, cache = native(family)

    def metric(logits: torch.Tensor) -> torch.Tensor:
        return logits.log_softmax(-1)[..., 3].sum() + logits[:, 1, 7].mean()

    got = P.get_act_patch_resid_mid(model, corrupted, cache, metric, batch_size=5)
    want = torch.tensor([[hand_run(model, corrupted, {f"blocks.{layer}.hook_resid_mid": ((slice(None), pos), cache[
        f"blocks.{layer}.hook_resid_mid"])}, metric) for pos in range(6)] for layer in range(3)], dtype=torch.float64)
    torch.testing.assert_close(got, want, **EXACT)
    assert (want[:, 2:] - want[:, :1]).abs().max() > 1e-3
    keys = P.get_act_patch_attn_head_k_by_pos(model, corrupted, cache, metric)
    for layer, pos, head in [(0, 2, 1), (2, 5, 0), (1, 0, 1)]:
        name = f"blocks.{layer}.attn.hook_k"
        want_k = hand_run(model, corrupted, {name: ((slice(None), pos, head), cache[name])}, metric)
        torch.testing.assert_close(keys[layer, pos, head].item(), want_k, **EXACT)
    heads = P.get_act_patch_attn_head_out_all_pos(model, corrupted, cache, metric)
    name = "blocks.1.attn.hook_z"
    torch.testing.assert_close(heads[1, 1].item(), hand_run(
        model, corrupted, {name: ((slice(None), slice(None), 1), cache[name])}, metric), **EXACT)
