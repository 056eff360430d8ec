"""Text <-> token ids, shared by the language models and generation: text in, tokens out, and back.

BOS follows the model's own HF tokenizer (``add_special_tokens``) unless ``prepend_bos`` says otherwise,
and is never added twice.
"""

from __future__ import annotations

from typing import Any

import torch


class LanguageModelMixin:
    """``to_tokens``, ``to_string``, ``to_str_tokens``, ``to_single_token`` over ``self.tokenizer``."""

    tokenizer: Any

    def _require_tokenizer(self) -> Any:
        if self.tokenizer is None:
            raise ValueError(
                "this model has no tokenizer; pass token ids, or set model.tokenizer to a transformers "
                "tokenizer (load() attaches one when the source has it)"
            )
        return self.tokenizer

    def _device(self) -> torch.device:
        return next(self.parameters()).device  # type: ignore[attr-defined]

    def to_tokens(
        self, text: str | list[str], prepend_bos: bool | None = None, padding_side: str = "left",
        return_mask: bool = False,
    ) -> Any:
        """Token ids ``[batch, pos]`` (left-padded for several strings); with ``return_mask`` also the mask."""
        self._require_tokenizer()
        texts = [text] if isinstance(text, str) else list(text)
        if not texts or any(not isinstance(t, str) for t in texts):
            raise ValueError("to_tokens needs a string or a non-empty list of strings")
        ids = [self._text_to_ids(t, prepend_bos) for t in texts]
        if any(len(i) == 0 for i in ids):
            raise ValueError("cannot run an empty prompt: it has no tokens (pass prepend_bos=True to add BOS)")
        tokens, mask = pad_sequences(ids, self._pad_id(), padding_side)
        tokens, mask = tokens.to(self._device()), mask.to(self._device())
        return (tokens, mask) if return_mask else tokens

    def _text_to_ids(self, text: str, prepend_bos: bool | None) -> list[int]:
        tok = self.tokenizer
        ids: list[int] = tok(text, add_special_tokens=prepend_bos is not False)["input_ids"]
        bos = tok.bos_token_id
        if prepend_bos and bos is not None and (not ids or ids[0] != bos):
            ids = [bos, *ids]
        if prepend_bos is not False and ids[:2] == [bos, bos] and text.startswith(str(tok.bos_token)):
            ids = ids[1:]  # the text brings its own BOS and the tokenizer added one: keep a single BOS
        if prepend_bos is False and bos is not None and ids and ids[0] == bos and not text.startswith(
            str(tok.bos_token)
        ):
            ids = ids[1:]
        return ids

    def _pad_id(self) -> int:
        tok = self.tokenizer
        for cand in (tok.pad_token_id, tok.eos_token_id, 0):
            if cand is not None:
                return int(cand)
        return 0

    def tokenize_for_forward(
        self, text: str | list[str], attention_mask: torch.Tensor | None, prepend_bos: bool | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if attention_mask is not None:
            raise ValueError("pass attention_mask only with token ids; text is padded for you")
        tokens, mask = self.to_tokens(text, prepend_bos=prepend_bos, return_mask=True)
        return tokens, mask

    def to_string(self, tokens: torch.Tensor | list[int] | int) -> str | list[str]:
        """Decode ``[pos]`` to a string, ``[batch, pos]`` to a list of strings."""
        tok = self._require_tokenizer()
        if isinstance(tokens, int):
            tokens = [tokens]
        t = torch.as_tensor(tokens)
        if t.ndim == 2:
            return [tok.decode(row.tolist()) for row in t]
        return tok.decode(t.tolist())

    def to_str_tokens(self, input: str | torch.Tensor | list[int], prepend_bos: bool | None = None) -> list[str]:
        """Each token as its own string (for labelling plots and tables)."""
        tok = self._require_tokenizer()
        if isinstance(input, str):
            ids = self._text_to_ids(input, prepend_bos)
        else:
            t = torch.as_tensor(input)
            if t.ndim == 2:
                if t.shape[0] != 1:
                    raise ValueError("to_str_tokens takes one sequence; index the batch first")
                t = t[0]
            ids = t.tolist()
        return [tok.decode([i]) for i in ids]

    def to_single_token(self, string: str) -> int:
        """The id of a string that is exactly one token (no BOS); a clear error otherwise."""
        tok = self._require_tokenizer()
        ids = tok(string, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            pieces = [tok.decode([i]) for i in ids]
            raise ValueError(f"{string!r} is {len(ids)} tokens {pieces}, not a single token")
        return int(ids[0])


def pad_sequences(
    seqs: list[list[int]], pad_id: int, side: str = "left"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad token lists to one ``[batch, pos]`` tensor and its attention mask."""
    if side not in ("left", "right"):
        raise ValueError(f"padding side must be 'left' or 'right', got {side!r}")
    width = max(len(s) for s in seqs)
    tokens = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        span = slice(width - len(s), width) if side == "left" else slice(0, len(s))
        tokens[i, span] = torch.tensor(s, dtype=torch.long)
        mask[i, span] = 1
    return tokens, mask
