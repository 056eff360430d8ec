"""Decoding for Whisper: greedy and beam search over a static self-attention KV cache.

The encoder runs once per clip and each decoder layer's cross-attention K/V are computed once from its
output; every step then feeds only the newest token. Hooks attached with ``model.hooks()`` fire at every
step (encoder hooks once). Whisper's own logit rules are applied as HF applies them: ``suppress_tokens``
at every step and ``begin_suppress_tokens`` at the first generated position.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from hookscope.audio import chunks, load_audio, log_mel, prepare_waveform


class SelfAttentionCache:
    """One decoder layer's keys and values ``[batch, max_len, head_index, d_head]``, filled in place."""

    def __init__(self, batch: int, max_len: int, n_heads: int, d_head: int, like: torch.Tensor) -> None:
        self.k = like.new_zeros(batch, max_len, n_heads, d_head)
        self.v = like.new_zeros(batch, max_len, n_heads, d_head)
        self.length = 0

    def update(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        end = self.length + k.shape[1]
        if end > self.k.shape[1]:
            raise ValueError(f"KV cache full: {end} positions asked for, {self.k.shape[1]} allocated")
        self.k[:, self.length : end] = k
        self.v[:, self.length : end] = v
        self.length = end
        return self.k[:, :end], self.v[:, :end]

    def reorder(self, index: torch.Tensor) -> None:
        """Keep rows ``index`` (beam search: each surviving beam takes its parent's history)."""
        self.k = self.k.index_select(0, index)
        self.v = self.v.index_select(0, index)


def _suppress(logits: torch.Tensor, step: int, suppress: torch.Tensor, begin: torch.Tensor) -> torch.Tensor:
    """Whisper's token suppression on next-token logits ``[batch, d_vocab]``."""
    logits = logits.float()
    if suppress.numel():
        logits[:, suppress] = -float("inf")
    if step == 0 and begin.numel():
        logits[:, begin] = -float("inf")
    return logits


def _setup(
    model: Any, features: torch.Tensor, batch: int, max_len: int
) -> tuple[Any, list[SelfAttentionCache]]:
    cross = model.cross_kv(model.encode(features))
    if batch != cross[0][0].shape[0]:
        cross = [
            (k.repeat_interleave(batch // k.shape[0], 0), v.repeat_interleave(batch // k.shape[0], 0))
            for k, v in cross
        ]
    attn = model.decoder[0].attn
    caches = [
        SelfAttentionCache(batch, max_len, attn.n_heads, attn.d_head, cross[0][0]) for _ in model.decoder
    ]
    return cross, caches


def _token_ids(model: Any, ids: Sequence[int]) -> torch.Tensor:
    return torch.tensor(list(ids), dtype=torch.long, device=model.embed.weight.device)


@torch.no_grad()
def greedy(model: Any, features: torch.Tensor, prompt: Sequence[int], max_new_tokens: int) -> torch.Tensor:
    """Greedy tokens ``[batch, len(prompt) + new]`` for log-mel ``features [batch, n_mels, frames]``.

    Rows that reach end-of-text keep receiving it (as HF pads finished rows); stops when all have.
    """
    cfg = model.cfg
    features = features[None] if features.ndim == 2 else features
    batch, n_prompt = features.shape[0], len(prompt)
    max_new_tokens = _check_length(cfg, n_prompt, max_new_tokens)
    cross, caches = _setup(model, features, batch, n_prompt + max_new_tokens)
    tokens = _token_ids(model, prompt)[None].expand(batch, -1)
    suppress, begin = _token_ids(model, cfg.suppress_tokens), _token_ids(model, cfg.begin_suppress_tokens)
    done = torch.zeros(batch, dtype=torch.bool, device=tokens.device)
    step_input, out = tokens, [tokens]
    for step in range(max_new_tokens):
        logits = model.decode(step_input, cross, kv_caches=caches, offset=caches[0].length)[:, -1]
        nxt = _suppress(logits, step, suppress, begin).argmax(-1)
        nxt = torch.where(done, torch.full_like(nxt, cfg.eos_token_id), nxt)
        out.append(nxt[:, None])
        done = done | (nxt == cfg.eos_token_id)
        if bool(done.all()):
            break
        step_input = nxt[:, None]
    return torch.cat(out, dim=1)


@torch.no_grad()
def beam_search(
    model: Any,
    features: torch.Tensor,
    prompt: Sequence[int],
    max_new_tokens: int,
    num_beams: int,
    length_penalty: float = 1.0,
) -> torch.Tensor:
    """The best beam ``[len(prompt) + new]`` for one clip ``features [n_mels, frames]``.

    Finished hypotheses are scored ``sum log p / n_new ** length_penalty``; the search stops when
    ``num_beams`` are finished and no live beam can beat the worst of them.
    """
    cfg = model.cfg
    if num_beams < 1:
        raise ValueError(f"num_beams must be >= 1, got {num_beams}")
    features = features[None] if features.ndim == 2 else features
    n_prompt = len(prompt)
    max_new_tokens = _check_length(cfg, n_prompt, max_new_tokens)
    cross, caches = _setup(model, features[:1], num_beams, n_prompt + max_new_tokens)
    seqs = _token_ids(model, prompt)[None].repeat(num_beams, 1)
    scores = torch.full((num_beams,), -float("inf"), device=seqs.device)
    scores[0] = 0.0  # all beams start identical: expand only the first
    suppress, begin = _token_ids(model, cfg.suppress_tokens), _token_ids(model, cfg.begin_suppress_tokens)
    finished: list[tuple[float, torch.Tensor]] = []
    step_input = seqs
    for step in range(max_new_tokens):
        logits = model.decode(step_input, cross, kv_caches=caches, offset=caches[0].length)[:, -1]
        logp = torch.log_softmax(_suppress(logits, step, suppress, begin), dim=-1)
        cand = (scores[:, None] + logp).reshape(-1)
        top, flat = cand.topk(2 * num_beams)
        vocab = logp.shape[-1]
        keep_rows, keep_tokens, keep_scores = [], [], []
        for s, f in zip(top.tolist(), flat.tolist()):
            row, tok = divmod(f, vocab)
            if tok == cfg.eos_token_id:
                finished.append(
                    (s / (step + 1) ** length_penalty, torch.cat([seqs[row], seqs.new_tensor([tok])]))
                )
            else:
                keep_rows.append(row), keep_tokens.append(tok), keep_scores.append(s)
            if len(keep_rows) == num_beams:
                break
        finished.sort(key=lambda item: -item[0])
        finished = finished[:num_beams]
        best_live = max(keep_scores) / (step + 1) ** length_penalty if keep_scores else -float("inf")
        if not keep_rows or (len(finished) == num_beams and finished[-1][0] >= best_live):
            break
        index = torch.tensor(keep_rows, device=seqs.device)
        for cache in caches:
            cache.reorder(index)
        new = torch.tensor(keep_tokens, device=seqs.device)
        seqs = torch.cat([seqs.index_select(0, index), new[:, None]], dim=1)
        scores = torch.tensor(keep_scores, device=seqs.device)
        step_input = new[:, None]
    if not finished:  # nothing ended before max_new_tokens: rank the live beams
        n_new = seqs.shape[1] - n_prompt
        finished = [(s / max(n_new, 1) ** length_penalty, seq) for s, seq in zip(scores.tolist(), seqs)]
    return max(finished, key=lambda item: item[0])[1]


def _check_length(cfg: Any, n_prompt: int, max_new_tokens: int) -> int:
    room = cfg.n_text_ctx - n_prompt
    if max_new_tokens < 1 or max_new_tokens > room:
        raise ValueError(
            f"max_new_tokens must be in 1..{room} (the decoder has {cfg.n_text_ctx} positions and "
            f"the prompt takes {n_prompt}), got {max_new_tokens}"
        )
    return max_new_tokens


def default_prompt(model: Any, language: str = "en", task: str = "transcribe") -> list[int]:
    """``<|startoftranscript|>`` (+ language and task for multilingual models) + ``<|notimestamps|>``."""
    tok = model.tokenizer
    if tok is None:
        raise ValueError("transcribe needs the model's tokenizer (load() attaches it), or pass prompt=[ids]")
    names = ["<|startoftranscript|>"]
    if model.cfg.d_vocab >= 51865:  # multilingual checkpoints (openai-whisper's rule)
        names += [f"<|{language}|>", f"<|{task}|>"]
    names.append("<|notimestamps|>")
    ids = tok.convert_tokens_to_ids(names)
    unknown = [n for n, i in zip(names, ids) if i is None or i == tok.unk_token_id]
    if unknown:
        raise ValueError(f"the tokenizer has no {unknown}; pass prompt=[token ids]")
    return list(ids)


def transcribe(
    model: Any,
    audio: Any,
    *,
    sample_rate: int | None = None,
    num_beams: int = 1,
    max_new_tokens: int | None = None,
    prompt: list[int] | None = None,
) -> str:
    """Text of a recording: a path (read with soundfile) or a waveform with ``sample_rate``."""
    if isinstance(audio, (str, bytes)) or hasattr(audio, "__fspath__"):
        wave = load_audio(audio)
    else:
        wave = prepare_waveform(audio, sample_rate)
    prompt = list(prompt) if prompt is not None else default_prompt(model)
    max_new = max_new_tokens or model.cfg.n_text_ctx // 2
    dtype = model.embed.weight.dtype
    features = torch.stack([log_mel(c, model.cfg.n_mels) for c in chunks(wave)]).to(
        model.embed.weight.device, dtype
    )
    if num_beams == 1:
        rows = list(greedy(model, features, prompt, max_new))
    else:
        rows = [beam_search(model, f, prompt, max_new, num_beams) for f in features]
    texts = [
        model.tokenizer.decode(r[len(prompt) :].tolist(), skip_special_tokens=True).strip() for r in rows
    ]
    return " ".join(t for t in texts if t)
