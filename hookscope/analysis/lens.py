"""The logit lens: decode the residual stream after every layer through the model's own final norm and unembedding.

Works for native decoders out of the box and for any hooked model given the residual-stream names and a
decoder (``decoder=`` a callable, or the module names of the final norm and the unembedding, as
transformer-utils' ``decoder_layer_names``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F

from hookscope.analysis.partial import partial_forward
from hookscope.extensions import implementation

Metric = Literal["probs", "logits", "logprobs", "kl", "rank"]
METRICS = ("probs", "logits", "logprobs", "kl", "rank")


@dataclass
class LensResult:
    """Per layer (row) and position (column): top-k decoded tokens, KL to the output, target rank/prob.

    Tensors are ``[row, pos]`` or ``[row, pos, k]``; the last row is the model's own output.
    """

    row_labels: list[str]
    positions: list[int]
    str_tokens: list[str]
    metric: str
    top_ids: torch.Tensor  # [row, pos, k]
    top_tokens: list[list[list[str]]]  # [row][pos][k]
    top_probs: torch.Tensor  # [row, pos, k]
    top_logits: torch.Tensor  # [row, pos, k]
    kl: torch.Tensor  # [row, pos]  KL(final || this row)
    target: str | None = None
    target_id: int | None = None
    target_prob: torch.Tensor | None = None  # [row, pos]
    target_rank: torch.Tensor | None = None  # [row, pos], 0 = top

    @property
    def values(self) -> torch.Tensor:
        """The plotted value per cell ``[row, pos]`` for ``metric``."""
        if self.metric == "kl":
            return self.kl
        if self.metric == "rank":
            if self.target_rank is not None:
                return self.target_rank.float()
            return torch.zeros_like(self.kl)
        if self.metric == "logits":
            return self.top_logits[..., 0]
        if self.metric == "logprobs":
            return self.top_probs[..., 0].clamp_min(1e-45).log()
        return self.top_probs[..., 0]

    def plot(self, **kwargs: Any) -> Any:
        """A matplotlib figure: layers x positions, top token in each cell, colour = the metric."""
        return implementation("plot_lens")(self, **kwargs)

    def to_html(self, path: str | None = None) -> str:
        """One self-contained HTML page (no network) with the top-k on hover; written to ``path`` if given."""
        return implementation("lens_html")(self, path)

    def to_dataframe(self) -> Any:
        """A long-format pandas DataFrame (one row per layer, position and rank k)."""
        try:
            import pandas as pd
        except ImportError as err:
            raise ImportError("to_dataframe needs pandas: pip install pandas") from err
        rows = []
        for r, label in enumerate(self.row_labels):
            for j, pos in enumerate(self.positions):
                for k in range(self.top_ids.shape[-1]):
                    rows.append({
                        "layer": label, "position": pos, "input_token": self.str_tokens[j], "k": k,
                        "token": self.top_tokens[r][j][k], "prob": float(self.top_probs[r, j, k]),
                        "logit": float(self.top_logits[r, j, k]), "kl": float(self.kl[r, j]),
                    })
        return pd.DataFrame(rows)

    def table(self, position: int = -1) -> str:
        """A plain-text table of the top token per layer at one position (default: the last)."""
        return implementation("lens_table")(self, position)


def residual_names(model: Any, include_subblocks: bool) -> list[tuple[str, str]]:
    """``(label, hook name)`` of the residual stream: embeddings, then after each layer (or sub-block)."""
    hooks = model.hook_dict
    layers = sorted({int(m.group(1)) for n in hooks if (m := re.match(r"blocks\.(\d+)\.hook_resid_post$", n))})
    if not layers:
        raise ValueError(
            f"{type(model).__name__} has no 'blocks.{{i}}.hook_resid_post' hook points; pass names= "
            "with the residual-stream hook names to read"
        )
    rows = [("embed", "blocks.0.hook_resid_pre")]
    for i in layers:
        if include_subblocks:
            mid = f"blocks.{i}.hook_resid_mid"
            if mid not in hooks:
                raise ValueError(f"include_subblocks needs {mid!r}; this model's blocks have no mid-residual")
            rows.append((f"{i}.attn", mid))
            rows.append((f"{i}.mlp", f"blocks.{i}.hook_resid_post"))
        else:
            rows.append((str(i), f"blocks.{i}.hook_resid_post"))
    return rows


def default_decoder(model: Any, decoder: Callable | Sequence[str] | None) -> Callable[[torch.Tensor], torch.Tensor]:
    """The residual -> logits map: the model's own final norm and unembedding unless told otherwise."""
    if callable(decoder):
        return decoder
    if decoder is not None:
        modules = [model.get_submodule(n) if not hasattr(model, "mod_dict") or n not in model.mod_dict
                   else model.mod_dict[n] for n in decoder]

        def run(x: torch.Tensor) -> torch.Tensor:
            for m in modules:
                x = m(x)
                x = x[0] if isinstance(x, tuple) else x
            return x

        return run
    lens_decoder = getattr(model, "lens_decoder", None)
    if lens_decoder is not None:
        return lens_decoder()
    if hasattr(model, "ln_final") and hasattr(model, "unembed"):
        return lambda x: model.unembed(model.ln_final(x))
    raise ValueError(f"pass decoder= for {type(model).__name__}: a callable or [final_norm, unembed] module names")


@torch.no_grad()
def logit_lens(
    model: Any,
    inputs: Any,
    *,
    include_subblocks: bool = False,
    metric: Metric = "probs",
    target: str | int | None = None,
    positions: Sequence[int] | None = None,
    top_k: int = 5,
    decoder: Callable | Sequence[str] | None = None,
    names: Sequence[str] | None = None,
    **forward_kwargs: Any,
) -> LensResult:
    """Decode the residual stream after each layer (and sub-block) at each position.

    Args:
        inputs: a prompt string, or token ids ``[1, pos]`` / ``[pos]``.
        metric: what the plot colours: top-1 "probs"/"logits"/"logprobs", "kl" to the final output,
            or "rank" of ``target``.
        target: a token (string that is one token, or an id) whose probability and rank are tracked.
        positions: which positions to keep (default all).
        decoder: a callable residual -> logits, or module names ``[final_norm, unembed]``.
        names: residual-stream hook names to read instead of the canonical ones (e.g. wrapped models).
    """
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; choose one of {METRICS}")
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    vision = hasattr(model, "to_pixel_values")
    tokens, str_tokens = _pixels(model, inputs) if vision else _tokens(model, inputs)
    rows = [(n, n) for n in names] if names else residual_names(model, include_subblocks)
    decode = default_decoder(model, decoder)
    acts = partial_forward(model, tokens, [n for _, n in rows], **forward_kwargs)
    n_pos = 1 if vision else tokens.shape[-1]  # vision: the class token is what the head reads
    pos_list = list(range(n_pos)) if positions is None else [p % n_pos for p in positions]
    final_logprobs = F.log_softmax(decode(acts[rows[-1][1]][0, pos_list]).float(), dim=-1)  # [pos, d_vocab]
    final = (final_logprobs, final_logprobs.exp())
    k = min(top_k, final_logprobs.shape[-1])
    target_id = None if target is None else _target_id(model, target, final_logprobs.shape[-1])
    per_row = [_decode_row(decode, acts[n][0, pos_list], final, k, target_id) for _, n in rows]
    top_logits, top_ids, top_probs, kl = (torch.stack(parts) for parts in list(zip(*per_row))[:4])
    result = LensResult(
        row_labels=[label for label, _ in rows], positions=pos_list,
        str_tokens=[str_tokens[p] for p in pos_list] if str_tokens else [str(p) for p in pos_list],
        metric=metric, top_ids=top_ids, top_tokens=_decode_ids(model, top_ids),
        top_probs=top_probs, top_logits=top_logits, kl=kl,
    )
    if target_id is not None:
        result.target = target if isinstance(target, str) else None
        result.target_id = target_id
        result.target_prob = torch.stack([r[4] for r in per_row])
        result.target_rank = torch.stack([r[5] for r in per_row])
    return result


def _decode_row(
    decode: Callable, resid: torch.Tensor, final: tuple[torch.Tensor, torch.Tensor], k: int, target_id: int | None
) -> tuple[torch.Tensor, ...]:
    """One lens row, decoded and reduced at once so only ``[pos, d_vocab]`` is ever alive.

    ``final`` holds the model output's log-probabilities and probabilities ``[pos, d_vocab]``.
    """
    logits = decode(resid).float()  # [pos, d_vocab]
    logprobs = F.log_softmax(logits, dim=-1)
    final_logprobs, final_probs = final
    kl = (final_probs * (final_logprobs - logprobs)).sum(-1).clamp_min(0.0)  # KL(final || this row), [pos]
    top_logits, top_ids = logits.topk(k, dim=-1)
    out = (top_logits, top_ids, logprobs.gather(-1, top_ids).exp(), kl)
    if target_id is None:
        return out
    target_logit = logits[:, target_id : target_id + 1]
    return (*out, logprobs[:, target_id].exp(), (logits > target_logit).sum(-1))


def _tokens(model: Any, inputs: Any) -> tuple[torch.Tensor, list[str] | None]:
    if isinstance(inputs, str):
        if not inputs.strip():
            raise ValueError("the prompt is empty: give the lens some text")
        tokens = model.to_tokens(inputs)
    else:
        tokens = torch.as_tensor(inputs)
        if tokens.ndim == 1:
            tokens = tokens[None]
        if tokens.ndim != 2 or tokens.shape[0] != 1:
            raise ValueError(f"the lens reads one sequence: give tokens [1, pos], got shape {tuple(tokens.shape)}")
        if tokens.shape[1] == 0:
            raise ValueError("the token sequence is empty")
    str_tokens = model.to_str_tokens(tokens[0]) if getattr(model, "tokenizer", None) is not None else None
    return tokens, str_tokens


def _pixels(model: Any, inputs: Any) -> tuple[torch.Tensor, list[str]]:
    """Vision models: one image as ``pixel_values [1, C, H, W]``; the lens column is the class token."""
    pixels = model.to_pixel_values(inputs)
    if pixels.shape[0] != 1:
        raise ValueError(f"the lens reads one image at a time, got a batch of {pixels.shape[0]}")
    return pixels, ["[CLS]"]


def _labels(model: Any) -> dict[int, str]:
    cfg = getattr(model, "cfg", None)
    id2label = getattr(cfg, "hf_config", {}).get("id2label") if cfg is not None else None
    return {int(k): str(v) for k, v in (id2label or {}).items()}


def _decode_ids(model: Any, ids: torch.Tensor) -> list[list[list[str]]]:
    tok = getattr(model, "tokenizer", None)
    flat = ids.reshape(-1).tolist()
    labels = _labels(model) if tok is None else {}
    if tok is not None:
        words = [tok.decode([i]) for i in flat]
    else:
        words = [labels.get(i, f"#{i}") for i in flat]
    rows, pos, k = ids.shape
    return [[words[(r * pos + p) * k:(r * pos + p + 1) * k] for p in range(pos)] for r in range(rows)]


def _target_id(model: Any, target: str | int, vocab: int) -> int:
    labels = {v: k for k, v in _labels(model).items()}
    if isinstance(target, str) and target in labels and getattr(model, "tokenizer", None) is None:
        return labels[target]  # a class label of a vision model
    if isinstance(target, str):
        if getattr(model, "tokenizer", None) is None:
            raise ValueError("a string target needs a tokenizer; pass the token id instead")
        return model.to_single_token(target)
    target_id = int(target)
    if not 0 <= target_id < vocab:
        raise ValueError(f"target id {target_id} is outside the vocabulary (0..{vocab - 1})")
    return target_id
