"""The greedy / sampling decode loop over a static KV cache (gpt-fast style: prefill, then one token a step).

Per step: one forward of the new token through the cache, the logits of its position in float32 (as HF
does), the processors, the choice, one in-place write into the preallocated sequence buffer. Nothing is
concatenated and no Python object is built per layer. The host waits on the device only when something
must be decided there: a stop condition (EOS ids, stop strings) or the caller reading the token.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from hookscope.generation.kv_cache import KVCache
from hookscope.generation.lean import lean_step
from hookscope.generation.processors import greedy, process_logits, sample
from hookscope.generation.settings import GenerationSettings
from hookscope.generation.step_cache import StepRecorder


class Decoding:
    """One greedy or sampling run. Iterate to get each step's tokens ``[batch]``; then read :attr:`sequences`.

    Args:
        model: a native decoder (``model(tokens, mask, kv_cache=...) -> logits``).
        tokens: left-padded prompts ``[batch, prompt_pos]``.
        mask: ``[batch, prompt_pos]`` (0 at padding) or None.
        settings: validated :class:`GenerationSettings` (``num_beams == 1``).
        recorder: a :class:`StepRecorder` already entered, or None.
        trim_logits: the model's forward takes ``logits_to_keep=1`` (native decoders): the prefill then
            unembeds only its last position. Leave False for adapters whose ``__call__`` lacks it.
        step: a compiled decode step (:func:`~hookscope.generation.compiled.compiled_step`) for the cached
            steps after the prompt, or None: those steps then run the model's
            :class:`~hookscope.generation.lean.LeanStep` while no hook is attached (checked every step), its
            forward otherwise.
    """

    def __init__(
        self, model: Any, tokens: torch.Tensor, mask: torch.Tensor | None, settings: GenerationSettings,
        recorder: StepRecorder | None = None, *, trim_logits: bool = False, step: Any = None,
    ) -> None:
        self.model, self.s, self.recorder = model, settings, recorder
        self.step = step  # a compiled ``step(tokens, mask, kv_cache)`` for cached steps after the prompt, or None
        self.extra: dict[str, int] = {"logits_to_keep": 1} if trim_logits else {}
        batch, self.prompt_len = tokens.shape
        total = self.prompt_len + settings.max_new_tokens
        device = tokens.device
        self.buffer = torch.full((batch, total), settings.pad_token_id, dtype=torch.long, device=device)
        self.buffer[:, : self.prompt_len] = tokens
        self.mask: torch.Tensor | None = None  # [batch, total]: generated positions are always real
        if mask is not None:
            self.mask = torch.ones((batch, total), dtype=torch.long, device=device)
            self.mask[:, : self.prompt_len] = mask
        self.cache = KVCache.for_model(model, batch, total) if settings.use_cache else None
        self.lean = lean_step(model) if settings.use_cache and step is None and recorder is None else None
        self.length = self.prompt_len
        gen = None
        if settings.seed is not None:
            gen = torch.Generator(device=device).manual_seed(settings.seed)
        self.generator = gen
        self.eos = torch.tensor(settings.eos_token_ids, device=device) if settings.eos_token_ids else None
        self.unfinished = torch.ones(batch, dtype=torch.bool, device=device)
        self.ends = torch.full((batch,), total, dtype=torch.long, device=device)  # where each row stopped

    @property
    def sequences(self) -> torch.Tensor:
        """Prompt + generated tokens so far ``[batch, pos]`` (finished rows padded with the pad id)."""
        return self.buffer[:, : self.length]

    @torch.no_grad()  # per call, not around the loop: grad mode must not leak to the caller between yields
    def _forward(self, start: int, end: int) -> torch.Tensor:
        """Logits ``[batch, d_vocab]`` of position ``end - 1``, feeding positions ``[start, end)``."""
        mask = None if self.mask is None else self.mask[:, :end]
        if self.cache is None:
            logits = self.model(self.buffer[:, :end], mask, **self.extra)
        elif self.step is not None and start > 0:
            logits = self.step(self.buffer[:, start:end], mask, self.cache)
        elif self.lean is not None and start > 0 and self.lean.usable():
            logits = self.lean(self.buffer[:, start:end], mask, self.cache)
        else:
            logits = self.model(self.buffer[:, start:end], mask, kv_cache=self.cache, **self.extra)
        if self.recorder is not None:
            self.recorder.end_step()
        return logits[:, -1]

    def __iter__(self) -> Iterator[torch.Tensor]:
        s, p = self.s, self.s.processing
        logits = self._forward(0, self.prompt_len)
        for step in range(s.max_new_tokens):
            cur = self.length
            scores = logits.float()
            if not p.is_identity:
                mask = None if self.mask is None else self.mask[:, :cur]
                scores = process_logits(scores, p, self.buffer[:, :cur], mask)
            token = sample(scores, self.generator) if p.do_sample else greedy(scores)
            if s.stops_early:
                token = torch.where(self.unfinished, token, s.pad_token_id)
            self.buffer[:, cur] = token
            self.length = cur + 1
            yield token
            if s.stops_early and not self._still_running(token):
                break
            if step + 1 < s.max_new_tokens:
                logits = self._forward(cur, cur + 1)
        if self.recorder is not None:  # the last token's activations, so the cache covers the whole sequence
            if self.cache is None:
                self.recorder.forget()
            self._forward(self.length - 1, self.length)

    def _still_running(self, token: torch.Tensor) -> bool:
        """Mark rows that just hit an EOS id or completed a stop string; False once every row is done."""
        was_running = self.unfinished.clone()
        if self.eos is not None:
            self.unfinished &= ~torch.isin(token, self.eos)
        if self.s.stop_strings:
            self._check_stop_strings()
        self.ends.masked_fill_(was_running & ~self.unfinished, self.length)
        return bool(self.unfinished.any())

    def _check_stop_strings(self) -> None:
        """A row stops once a stop string ends inside its generated text. As in HF's ``StopStringCriteria``
        the string may begin in the prompt's last tokens (prompt "... Hel" + generated "lo" completes "Hello")."""
        tok = self.model.tokenizer
        start = max(self.prompt_len - max(len(stop) for stop in self.s.stop_strings), 0)
        for row in self.unfinished.nonzero().flatten().tolist():
            tail = self.buffer[row, start : self.prompt_len]
            if self.mask is not None:  # left padding is not text
                tail = tail[self.mask[row, start : self.prompt_len].bool()]
            offset = len(tok.decode(tail.tolist()))  # where the generated text begins
            text = tok.decode(tail.tolist() + self.buffer[row, self.prompt_len : self.length].tolist())
            if any(stop in text[max(offset - len(stop) + 1, 0) :] for stop in self.s.stop_strings):
                self.unfinished[row] = False
