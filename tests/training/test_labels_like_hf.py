"""The native decoder called HF-style (``input_ids=``, ``attention_mask=``, ``labels=`` with -100): the same
loss and the same gradient of every parameter as Hugging Face's model (float64, 1e-10), on unpadded,
right-padded and left-padded batches; and a left-padded batch trains as its rows one by one."""

from __future__ import annotations

import pytest
import torch

import hookscope
from hookscope.convert.decoder_hf import ARCHITECTURES
from hookscope.convert.engine import RuleSet, convert_state_dict, expand
from tests.equivalence.decoder_configs import random_hf_model, random_tokens


def _grads_as_hf(model) -> dict[str, torch.Tensor]:
    """Our parameter gradients exported under HF's names (through the inverted conversion rules)."""
    rules = RuleSet(ARCHITECTURES[model.cfg.hf_config["model_type"]].rules(model.cfg).inverted().rules)
    produced = {t for r in expand(rules.rules, model.cfg.n_layers) for t in r.targets}
    grads = {n: p.grad for n, p in model.named_parameters()}
    return convert_state_dict(grads, rules, model.cfg.n_layers, sorted(produced))


def _padded(kind: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    tokens = random_tokens(4, 9, seed=5)
    mask = torch.ones_like(tokens)
    if kind == "left":
        mask[1, :4], mask[3, :1] = 0, 0
    elif kind == "right":
        mask[1, -4:], mask[2, -2:] = 0, 0
    labels = tokens.masked_fill(mask == 0, -100)
    labels[0, 3] = labels[2, 5] = -100  # ignored targets inside real text too
    return tokens, mask, labels


def _positions(mask: torch.Tensor) -> torch.Tensor:
    """What HF's generate() passes for left padding (and what our model uses): real tokens count from 0."""
    return (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)


# HF's Llama / NeoX turn a left-padding row into NaN in float64 (a float64 fill in their float32 softmax), so
# they are compared in float32 there, at float32's tolerance for a gradient summed over the batch.
CASES = [("gpt2", "none", torch.float64), ("gpt2", "left", torch.float64), ("gpt2", "right", torch.float64),
         ("llama", "none", torch.float64), ("llama", "right", torch.float64), ("neox", "right", torch.float64),
         ("llama", "left", torch.float32), ("neox", "left", torch.float32)]


@pytest.mark.parametrize("name,padding,dtype", CASES)
def test_labels_loss_and_every_gradient_equal_hf(name: str, padding: str, dtype: torch.dtype) -> None:
    """HF's labels: -100 only at padding, so the last padding position predicts the first real token; its
    output (a query that sees no key) then carries gradient, which SDPA's backward got wrong."""
    hf = random_hf_model(name, dtype)
    model = hookscope.load(hf, dtype=dtype)
    tol = 1e-10 if dtype == torch.float64 else 1e-4
    tokens, mask, labels = _padded(padding)
    position_ids = _positions(mask) if padding == "left" else None
    want = hf(input_ids=tokens, attention_mask=mask, labels=labels, position_ids=position_ids)
    got = model(input_ids=tokens, attention_mask=mask, labels=labels)
    real = mask.bool()
    torch.testing.assert_close(got.logits[real], want.logits[real], atol=tol, rtol=tol)
    torch.testing.assert_close(got.loss, want.loss, atol=tol, rtol=tol)
    want.loss.backward()
    got.loss.backward()
    exported = _grads_as_hf(model)
    compared = 0
    for n, p in hf.named_parameters():
        if n in exported:
            torch.testing.assert_close(exported[n], p.grad, atol=tol, rtol=tol, msg=f"gradient of {n}")
            compared += 1
    assert compared >= len(list(hf.parameters())) - 1


@pytest.mark.parametrize("name", ["gpt2", "llama", "neox"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_left_padded_batch_has_the_gradient_of_its_rows_alone(name: str, dtype: torch.dtype) -> None:
    """Left padding with -100 on the padding and on each row's first real token (nothing is predicted from a
    padding position) is the same training signal as the rows alone: the summed token losses and their
    gradients equal the per-row ones."""
    model = hookscope.load(random_hf_model(name, dtype), dtype=dtype)
    tokens, mask, _ = _padded("left")
    labels = tokens.masked_fill(mask == 0, -100)
    labels[torch.arange(len(tokens)), (mask == 0).sum(-1)] = -100  # each row's first real token
    n_scored = int((labels[:, 1:] != -100).sum())
    (model(input_ids=tokens, attention_mask=mask, labels=labels).loss * n_scored).backward()
    batched = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    for row, row_mask, row_labels in zip(tokens, mask, labels):
        keep = row_mask.bool()
        per_token = model(input_ids=row[keep][None], labels=row_labels[keep][None], loss_per_token=True).loss
        per_token.sum().backward()
    tol = 2e-5  # the token losses are taken in float32 (as HF's), whatever the model's dtype
    for (n, p), b in zip(model.named_parameters(), batched):
        torch.testing.assert_close(b, p.grad, atol=tol, rtol=tol, msg=f"gradient of {n}")


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_return_type_loss_of_a_left_padded_batch_is_its_rows_alone_as_transformer_lens(name: str) -> None:
    """TransformerLens's loss (``return_type="loss"`` with an attention mask) scores a prediction only when its
    position and its target are real tokens: the padding position in front of a row predicts nothing."""
    model = hookscope.load(random_hf_model(name, torch.float64), dtype=torch.float64)
    tokens, mask, _ = _padded("left")
    per_token = model(tokens, attention_mask=mask, return_type="loss", loss_per_token=True)  # [batch, pos - 1]
    losses = []
    for b, (row, row_mask) in enumerate(zip(tokens, mask)):
        alone = model(row[row_mask.bool()][None], return_type="loss", loss_per_token=True)[0]
        n = len(alone)
        torch.testing.assert_close(per_token[b, -n:], alone, atol=1e-6, rtol=1e-6)  # float32 losses
        assert not per_token[b, :-n].any()  # nothing scored from a padding position
        losses.append(alone)
    mean = model(tokens, attention_mask=mask, return_type="loss")
    torch.testing.assert_close(mean, torch.cat(losses).mean(), atol=1e-6, rtol=1e-6)


def test_return_type_loss_equals_the_compat_lm_cross_entropy_loss_on_either_padding() -> None:
    from hookscope.compat import utils

    model = hookscope.load(random_hf_model("gpt2"))
    for kind in ("left", "right"):
        tokens, mask, _ = _padded(kind)
        with torch.no_grad():
            logits = model(tokens, attention_mask=mask)
            got = model(tokens, attention_mask=mask, return_type="loss", loss_per_token=True)
        torch.testing.assert_close(got, utils.lm_cross_entropy_loss(logits, tokens, mask, per_token=True))
