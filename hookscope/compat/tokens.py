"""TransformerLens's tokenization methods and defaults (BOS prepended unless told otherwise, right padding).

``hookscope.load`` models keep HF's own defaults (the tokenizer decides BOS, left padding); the compat
models use TL's, so TL code tokenizes to the same ids it did under TransformerLens.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch

from hookscope.text import pad_sequences

PaddingSide = Literal["left", "right"]


class TLTokensMixin:
    """``to_tokens``, ``to_str_tokens``, ``to_string``, ``to_single_token``... with TL's signatures."""

    cfg: Any
    tokenizer: Any
    default_padding_side: PaddingSide = "right"

    def _padding_side(self) -> PaddingSide:
        """The default side: the tokenizer's ``padding_side`` (TL code sets it there), else the model's."""
        return getattr(self.tokenizer, "padding_side", None) or self.default_padding_side

    def _bos_default(self, prepend_bos: bool | None) -> bool:
        return self.cfg.default_prepend_bos if prepend_bos is None else bool(prepend_bos)

    def _encode_tl(self, text: str, prepend_bos: bool) -> list[int]:
        """Ids of ``text`` with exactly one BOS when ``prepend_bos`` (whatever the tokenizer adds), else none."""
        tok = self._require_tokenizer()  # type: ignore[attr-defined]
        ids: list[int] = tok(text, add_special_tokens=False)["input_ids"]
        bos = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
        if prepend_bos and bos is not None:
            ids = [int(bos), *ids]
        return ids

    def to_tokens(
        self, input: str | list[str], prepend_bos: bool | None = None, padding_side: PaddingSide | None = None,
        move_to_device: bool = True, truncate: bool = True, return_mask: bool = False,
    ) -> Any:
        """Token ids ``[batch, pos]``: BOS prepended (``cfg.default_prepend_bos``), right padding, as TL."""
        texts = [input] if isinstance(input, str) else list(input)
        if not texts or any(not isinstance(t, str) for t in texts):
            raise ValueError("to_tokens needs a string or a non-empty list of strings")
        ids = [self._encode_tl(t, self._bos_default(prepend_bos)) for t in texts]
        if truncate:
            ids = [i[: self.cfg.n_ctx] for i in ids]
        if any(len(i) == 0 for i in ids):
            raise ValueError("cannot tokenize an empty prompt without BOS: it has no tokens")
        side = padding_side or self._padding_side()
        tokens, mask = pad_sequences(ids, self._pad_id(), side)  # type: ignore[attr-defined]
        if move_to_device:
            tokens, mask = tokens.to(self.cfg.device), mask.to(self.cfg.device)
        return (tokens, mask) if return_mask else tokens

    def to_string(self, tokens: Any) -> str | list[str]:
        """Decode ``[pos]`` (or a list of ids) to a string, ``[batch, pos]`` to a list of strings."""
        tok = self._require_tokenizer()  # type: ignore[attr-defined]
        t = torch.as_tensor(np.asarray(tokens) if not isinstance(tokens, torch.Tensor) else tokens)
        if t.ndim == 2:
            return [tok.decode(row.tolist(), clean_up_tokenization_spaces=False) for row in t]
        if t.ndim > 2:
            raise ValueError(f"to_string takes [pos] or [batch, pos] ids, got shape {tuple(t.shape)}")
        return tok.decode(t.reshape(-1).tolist(), clean_up_tokenization_spaces=False)

    def to_str_tokens(
        self, input: Any, prepend_bos: bool | None = None, padding_side: PaddingSide | None = None,
    ) -> list[str] | list[list[str]]:
        """Each token as a string: a string, ids ``[pos]`` (or ``[1, pos]``), or a list of those (-> lists)."""
        tok = self._require_tokenizer()  # type: ignore[attr-defined]
        if isinstance(input, list) and input and not isinstance(input[0], (int, np.integer)):
            return [self.to_str_tokens(x, prepend_bos, padding_side) for x in input]  # type: ignore[misc]
        if isinstance(input, str):
            ids = self._encode_tl(input, self._bos_default(prepend_bos))
        else:
            t = torch.as_tensor(np.asarray(input) if not isinstance(input, torch.Tensor) else input).squeeze()
            if t.ndim == 0:
                t = t[None]
            if t.ndim != 1:
                raise ValueError(f"to_str_tokens takes one sequence; got ids of shape {tuple(t.shape)}")
            ids = t.tolist()
        return [tok.decode([i], clean_up_tokenization_spaces=False) for i in ids]

    def to_single_str_token(self, int_token: int) -> str:
        if not isinstance(int_token, (int, np.integer)):
            raise TypeError(f"to_single_str_token takes an int id, got {type(int_token).__name__}")
        return self.to_str_tokens(torch.tensor([int(int_token)]))[0]  # type: ignore[return-value]

    def get_token_position(
        self, single_token: str | int, input: str | torch.Tensor, mode: Literal["first", "last"] = "first",
        prepend_bos: bool | None = None, padding_side: PaddingSide | None = None,
    ) -> int:
        """Where ``single_token`` occurs in ``input`` (a string or ids ``[pos]`` / ``[1, pos]``)."""
        tokens = self.to_tokens(input, prepend_bos, padding_side) if isinstance(input, str) else input
        tokens = torch.as_tensor(tokens)
        if tokens.ndim == 2:
            if tokens.shape[0] != 1:
                raise ValueError(f"get_token_position takes one sequence; got batch {tokens.shape[0]}")
            tokens = tokens[0]
        token = self.to_single_token(single_token) if isinstance(single_token, str) else int(single_token)
        hits = (tokens == token).nonzero()[:, 0]
        if len(hits) == 0:
            raise AssertionError("The token does not occur in the prompt")  # TL's error, for TL code
        if mode not in ("first", "last"):
            raise ValueError(f"mode must be 'first' or 'last', got {mode!r}")
        return int(hits[0] if mode == "first" else hits[-1])
