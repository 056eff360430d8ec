"""TransformerLens's ``generate``: text, token or embedding prompts; "input" / "str" / "tokens" / "embeds" out.

Text and token prompts run the native generator (static KV cache, HF's samplers); embedding prompts
(``model.embed(tokens)``, which TL accepts) are continued step by step from the embeddings, with the same
native logit processors.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from hookscope.generation.processors import apply_temperature, apply_top_k, apply_top_p, greedy, sample
from hookscope.models.decoder import Decoder

_RETURN_TYPES = ("input", "str", "tokens", "embeds")


class TLGenerateMixin:
    """``generate`` with TL's signature and defaults (sampling unless ``do_sample=False``)."""

    def generate(  # type: ignore[override]
        self, input: Any = "", max_new_tokens: int = 10, stop_at_eos: bool = True, eos_token_id: Any = None,
        do_sample: bool = True, top_k: int | None = None, top_p: float | None = None, temperature: float = 1.0,
        freq_penalty: float = 0.0, use_past_kv_cache: bool = True, prepend_bos: bool | None = None,
        padding_side: Any = None, return_type: str | None = "input", verbose: bool = True, **kwargs: Any,
    ) -> Any:
        """Continue ``input`` by ``max_new_tokens`` tokens; the output includes the prompt (as TL).

        ``freq_penalty`` acts on sampling only (TL applies it in ``sample_logits``; greedy takes the argmax).
        """
        if return_type not in _RETURN_TYPES:
            raise ValueError(f"return_type must be one of {_RETURN_TYPES}, got {return_type!r}")
        if temperature == 0.0:
            do_sample = False
        eos = self._eos_ids(stop_at_eos, eos_token_id)
        if isinstance(input, torch.Tensor) and input.is_floating_point():
            return self._generate_from_embeds(input, max_new_tokens, eos, do_sample, top_k, top_p, temperature,
                                              return_type)
        text_in = isinstance(input, str) or (isinstance(input, list) and bool(input) and isinstance(input[0], str))
        mask = None
        assert not text_in or self.tokenizer is not None, "text prompts need a tokenizer (set_tokenizer)"  # type: ignore[attr-defined]
        if text_in:
            tokens, mask = self.to_tokens(input, prepend_bos, "left", return_mask=True)  # type: ignore[attr-defined]
        else:  # token ids: every one is real (TL infers no padding from token values)
            tokens = torch.as_tensor(input, device=self.cfg.device)  # type: ignore[attr-defined]
            tokens = tokens[None] if tokens.ndim == 1 else tokens
            mask = torch.ones_like(tokens)
        self._native_signature = True  # the native generator calls forward(tokens, attention_mask, ...)
        try:
            out = Decoder.generate(
                self, tokens, max_new_tokens, do_sample=do_sample, top_k=top_k, top_p=top_p,  # type: ignore[arg-type]
                temperature=temperature if do_sample else 1.0, eos_token_id=list(eos), use_cache=use_past_kv_cache,
                attention_mask=mask, verbose=verbose, freq_penalty=freq_penalty if do_sample else 0.0, **kwargs,
            )
        finally:
            self._native_signature = False
        if return_type == "embeds":
            return self.embed(out)  # type: ignore[attr-defined]
        if return_type == "tokens" or (return_type == "input" and not text_in):
            return out
        full = F.pad(mask, (0, out.shape[1] - mask.shape[1]), value=1)
        texts = [self.to_string(row[full[i].bool()]) for i, row in enumerate(out)]  # type: ignore[attr-defined]
        return texts[0] if len(texts) == 1 else texts  # as TL: one row gives a string, whatever the input

    def _eos_ids(self, stop_at_eos: bool, eos_token_id: Any) -> tuple[int, ...]:
        if not stop_at_eos:
            return ()
        if eos_token_id is None:
            tok = getattr(self, "tokenizer", None)
            eos_token_id = getattr(tok, "eos_token_id", None)
            # TL raises AssertionError here and TL code catches that type
            assert eos_token_id is not None, (
                "stop_at_eos=True needs an eos_token_id (the model has no tokenizer to read it from)"
            )
        return (eos_token_id,) if isinstance(eos_token_id, int) else tuple(eos_token_id)

    @torch.no_grad()
    def _generate_from_embeds(
        self, embeds: torch.Tensor, max_new_tokens: int, eos: tuple[int, ...], do_sample: bool,
        top_k: int | None, top_p: float | None, temperature: float, return_type: str,
    ) -> Any:
        """Decode from token embeddings ``[batch, pos, d_model]`` (no KV cache: each step re-runs the sequence)."""
        if embeds.ndim != 3:
            raise ValueError(f"embedding prompts are [batch, pos, d_model], got shape {tuple(embeds.shape)}")
        finished = torch.zeros(embeds.shape[0], dtype=torch.bool, device=embeds.device)
        new: list[torch.Tensor] = []
        for _ in range(max_new_tokens):
            scores = self(embeds)[:, -1].float()  # type: ignore[operator]
            if do_sample:
                scores = apply_temperature(scores, temperature)
                scores = apply_top_k(scores, top_k) if top_k else scores
                scores = apply_top_p(scores, top_p) if top_p is not None and top_p < 1.0 else scores
                token = sample(scores)
            else:
                token = greedy(scores)
            if eos:
                token = torch.where(finished, torch.full_like(token, eos[0]), token)
                finished |= torch.isin(token, torch.tensor(eos, device=token.device))
            new.append(token)
            embeds = torch.cat([embeds, self.embed(token[:, None]).to(embeds.dtype)], 1)  # type: ignore[attr-defined]
            if eos and bool(finished.all()):
                break
        tokens = torch.stack(new, 1)  # [batch, new]
        if return_type in ("input", "embeds"):
            return embeds
        if return_type == "tokens":
            return tokens
        texts = [self.to_string(row) for row in tokens]  # type: ignore[attr-defined]
        return texts[0] if len(texts) == 1 else texts
