"""Hub revisions and training checkpoints: ``load(revision=)`` and TL's ``checkpoint_index`` / ``checkpoint_value``."""

from __future__ import annotations

import pytest
import torch

import hookscope
from hookscope.compat import HookedTransformer
from hookscope.compat.loading_from_pretrained import PYTHIA_CHECKPOINTS, get_checkpoint_labels
from hookscope.compat.pretrained import checkpoint_revision
from hookscope.errors import SourceNotFoundError, SourceTypeError
from tests.compat.helpers import word_tokenizer
from tests.equivalence.decoder_configs import random_hf_model, random_tokens


@pytest.fixture
def fake_hub(tmp_path, monkeypatch):
    """A hub whose revisions are folders of different random GPT-NeoX weights; records what was asked."""
    import huggingface_hub

    revisions = {}
    for seed, name in enumerate(("main", "step4", "step143000")):
        hf = random_hf_model("neox", seed=seed)
        folder = tmp_path / name
        hf.save_pretrained(folder)
        word_tokenizer().save_pretrained(folder)
        revisions[name] = (folder, hf)
    asked = []

    def snapshot(repo_id, allow_patterns, revision=None, local_files_only=False):
        asked.append((repo_id, revision))
        if (revision or "main") not in revisions:
            raise FileNotFoundError(f"no revision {revision}")
        return str(revisions[revision or "main"][0])

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot)
    return revisions, asked


def _logits_equal(model, hf) -> None:
    tokens = random_tokens(2, 7)
    with torch.no_grad():
        torch.testing.assert_close(model(tokens), hf(tokens).logits, atol=1e-5, rtol=1e-5)


def test_load_reads_the_requested_hub_revision(fake_hub) -> None:
    revisions, asked = fake_hub
    tokens = random_tokens(1, 5)
    assert not torch.allclose(revisions["step4"][1](tokens).logits, revisions["main"][1](tokens).logits)
    model = hookscope.load("EleutherAI/pythia-70m", revision="step4", progress=False)
    assert asked[0] == ("EleutherAI/pythia-70m", "step4")
    _logits_equal(model, revisions["step4"][1])
    _logits_equal(hookscope.load("EleutherAI/pythia-70m", progress=False), revisions["main"][1])


def test_missing_revision_is_a_clear_load_error(fake_hub) -> None:
    with pytest.raises(SourceNotFoundError, match="at revision 'step77'"):
        hookscope.load("EleutherAI/pythia-70m", revision="step77", progress=False)


def test_revision_is_refused_for_sources_that_are_not_hub_ids(tmp_path) -> None:
    with pytest.raises(SourceTypeError, match="GPT2LMHeadModel object is not one"):
        hookscope.load(random_hf_model("gpt2"), revision="step4")
    with pytest.raises(SourceTypeError, match="not one"):
        hookscope.load("smollm2-135m", revision="v1")


def test_checkpoint_index_and_value_load_the_checkpoint_weights(fake_hub) -> None:
    revisions, asked = fake_hub
    by_index = HookedTransformer.from_pretrained_no_processing("pythia-70m", checkpoint_index=3)  # steps 0,1,2,4
    assert asked[-1] == ("EleutherAI/pythia-70m", "step4")
    _logits_equal(by_index, revisions["step4"][1])
    by_value = HookedTransformer.from_pretrained_no_processing("pythia-70m", checkpoint_value=143000)
    _logits_equal(by_value, revisions["step143000"][1])
    by_revision = HookedTransformer.from_pretrained_no_processing("pythia-70m", revision="step4")
    _logits_equal(by_revision, revisions["step4"][1])


def test_checkpoint_schedules_and_revision_names() -> None:
    labels, kind = get_checkpoint_labels("pythia-160m")
    assert kind == "step" and labels[:12] == [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1000]
    assert labels == PYTHIA_CHECKPOINTS and labels[-1] == 143000 and len(labels) == 154
    assert get_checkpoint_labels("pythia-70m-v0")[0][0] == 1000
    assert checkpoint_revision("pythia-70m-deduped", -1, None) == "step143000"
    assert checkpoint_revision("stanford-gpt2-small-a", None, 150) == "checkpoint-150"


@pytest.mark.parametrize(("name", "index", "value", "message"), [
    ("gpt2", 1, None, "no published training checkpoints"),
    ("pythia-70m", None, 1500, "not a checkpoint"),
    ("pythia-70m", 154, None, "out of range"),
])
def test_bad_checkpoints_are_refused(name, index, value, message) -> None:
    with pytest.raises(ValueError, match=message):
        checkpoint_revision(name, index, value)


def test_checkpoint_with_hf_model_is_refused() -> None:
    with pytest.raises(ValueError, match="pass one or the other"):
        HookedTransformer.from_pretrained("pythia-70m", hf_model=random_hf_model("neox"), checkpoint_index=2)


def test_pretrained_config_of_a_checkpoint_reads_that_revision(monkeypatch) -> None:
    from hookscope.compat import loading_from_pretrained as lfp

    asked = []

    def config_at(source, trust_remote_code=False, **options):
        asked.append((source, options.get("revision")))
        return random_hf_model("neox").config

    monkeypatch.setattr(lfp.AutoConfig, "from_pretrained", config_at)
    cfg = lfp.get_pretrained_model_config("pythia-70m", checkpoint_value=512)
    assert asked == [("EleutherAI/pythia-70m", "step512")]
    assert cfg.n_layers == random_hf_model("neox").config.num_hidden_layers
