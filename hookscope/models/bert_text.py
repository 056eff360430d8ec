"""Text in and out of BERT-style encoders: tokenising sentences and pairs, fill-mask, sentence embeddings.

Free functions over a :class:`hookscope.models.bert.Bert` model with a transformers tokenizer attached
(``load()`` attaches the source's own).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

TextInput = Any  # str | tuple[str, str] | list[str] | list[tuple[str, str]]


def _tokenizer(model: Any) -> Any:
    if model.tokenizer is None:
        raise ValueError(
            "this model has no tokenizer; pass token ids, or set model.tokenizer to a transformers tokenizer "
            "(load() attaches one when the source has it)"
        )
    return model.tokenizer


def _split_pairs(text: TextInput) -> tuple[list[str], list[str] | None]:
    """Normalise the accepted text forms into first segments and (optional) second segments."""
    if isinstance(text, str):
        return [text], None
    if isinstance(text, tuple) and len(text) == 2 and all(isinstance(t, str) for t in text):
        return [text[0]], [text[1]]
    if isinstance(text, list) and text:
        if all(isinstance(t, str) for t in text):
            return list(text), None
        if all(isinstance(t, tuple) and len(t) == 2 and all(isinstance(s, str) for s in t) for t in text):
            return [a for a, _ in text], [b for _, b in text]
    raise TypeError(
        "text input must be a string, a (text_a, text_b) pair, or a non-empty list of strings or of pairs; "
        f"got {type(text).__name__} (token ids go in as a tensor: torch.tensor(ids))"
    )


def tokenize(model: Any, text: TextInput) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(tokens, attention_mask, token_type_ids)``, each ``[batch, pos]``, right-padded, with special tokens.

    Sequences longer than the model's position table are not truncated silently: the forward raises.
    """
    first, second = _split_pairs(text)
    tok = _tokenizer(model)
    enc = tok(first, second, padding=True, return_tensors="pt", return_token_type_ids=True)
    device = next(model.parameters()).device
    types = enc.get("token_type_ids")
    if types is None:
        types = torch.zeros_like(enc["input_ids"])
    return enc["input_ids"].to(device), enc["attention_mask"].to(device), types.to(device)


def predict_masked(
    model: Any, text: str, top_k: int = 5
) -> list[tuple[str, float]] | list[list[tuple[str, float]]]:
    """The ``top_k`` most likely fillers of each mask token in ``text`` as ``(token, probability)``.

    ``[MASK]`` is accepted for any tokenizer (RoBERTa's ``<mask>`` works too). Like HF's fill-mask
    pipeline, one mask gives one list and several masks give one list per mask.
    """
    tok = _tokenizer(model)
    if not isinstance(text, str):
        raise TypeError(f"predict_masked takes one string, got {type(text).__name__}")
    if tok.mask_token is None:
        raise ValueError("this model's tokenizer has no mask token")
    text = text.replace("[MASK]", tok.mask_token)
    tokens, mask, types = tokenize(model, text)
    where = (tokens[0] == tok.mask_token_id).nonzero().flatten().tolist()
    if not where:
        raise ValueError(
            f"no mask token in {text!r}; write [MASK] (or {tok.mask_token}) where a word is missing"
        )
    with torch.no_grad():
        logits = model(tokens, mask, types, return_type="logits")  # [1, pos, d_vocab]
    answers = []
    for pos in where:
        probs = logits[0, pos].float().softmax(-1)
        top = probs.topk(top_k)
        answers.append([(tok.decode([int(i)]).strip(), float(p)) for p, i in zip(top.values, top.indices)])
    return answers[0] if len(answers) == 1 else answers


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: str = "mean") -> torch.Tensor:
    """``[batch, pos, d_model]`` -> ``[batch, d_model]``: mean over real tokens (sentence-transformers'
    mean pooling) or the first token ("cls")."""
    if pooling == "cls":
        return hidden[:, 0]
    if pooling != "mean":
        raise ValueError(f"pooling must be 'mean' or 'cls', got {pooling!r}")
    weights = attention_mask[..., None].to(hidden.dtype)  # [batch, pos, 1]
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)


def embed(
    model: Any,
    sentences: str | list[str],
    pooling: str = "mean",
    normalize: bool = True,
    batch_size: int = 32,
) -> torch.Tensor:
    """Sentence embeddings ``[n, d_model]`` (``[d_model]`` for one string) from the last hidden state.

    ``normalize`` divides each by its L2 norm, so dot products are cosine similarities (as
    all-MiniLM-L6-v2's sentence-transformers pipeline does).
    """
    single = isinstance(sentences, str)
    texts = [sentences] if single else list(sentences)
    if not texts or not all(isinstance(t, str) for t in texts):
        raise TypeError("embed takes a string or a non-empty list of strings")
    out = []
    with torch.no_grad():
        for start in range(0, len(texts), batch_size):
            tokens, mask, types = tokenize(model, texts[start : start + batch_size])
            hidden = model(tokens, mask, types, return_type="hidden")  # [batch, pos, d_model]
            vectors = pool(hidden, mask, pooling)
            out.append(F.normalize(vectors, p=2, dim=-1) if normalize else vectors)
    result = torch.cat(out)
    return result[0] if single else result
