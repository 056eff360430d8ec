"""Token and position embeddings and the unembedding (LM head)."""

from __future__ import annotations

import torch
from torch import nn

from hookscope.components.attention import soft_cap
from hookscope.components.views import bias_or_zeros


class Embed(nn.Module):
    """Token embedding ``W_E [d_vocab, d_model]``; ``scale`` multiplies the output (Gemma: sqrt(d_model)).

    ``padding_idx``: as ``nn.Embedding``'s, the row gets no gradient from the look-up (HF BERT's word
    embeddings); the forward is unchanged.
    """

    def __init__(
        self, d_vocab: int, d_model: int, scale: float | None = None, padding_idx: int | None = None
    ) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(d_vocab, d_model))
        nn.init.normal_(self.weight, std=0.02)
        self.scale = scale
        self.padding_idx = padding_idx

    @property
    def W_E(self) -> torch.Tensor:  # [d_vocab, d_model]
        return self.weight

    def forward(self, tokens: torch.Tensor, validate: bool = True) -> torch.Tensor:
        """``validate=False`` skips the range check (a host sync): for ids the model chose itself."""
        if validate and tokens.numel():
            low, high = (int(v) for v in tokens.aminmax())
            if high >= self.weight.shape[0] or low < 0:
                raise IndexError(f"token ids must lie in [0, {self.weight.shape[0]}); got min {low}, max {high}")
        x = _lookup(self.weight, tokens, self.padding_idx)  # [batch, pos, d_model]
        if self.scale is not None:
            # HF casts the normaliser to the activation dtype before multiplying.
            x = x * torch.tensor(self.scale, dtype=x.dtype, device=x.device)
        return x


def _lookup(weight: torch.Tensor, index: torch.Tensor, padding_idx: int | None) -> torch.Tensor:
    if padding_idx is None:
        return weight[index]
    return nn.functional.embedding(index, weight, padding_idx=padding_idx)


class PosEmbed(nn.Module):
    """Learned absolute positions ``W_pos [n_ctx, d_model]`` (``padding_idx`` as in :class:`Embed`).

    ``offset``: the stored table has this many rows before position 0 (HF OPT keeps 2), so ``weight`` is
    ``[offset + n_ctx, d_model]``, position ``p`` reads row ``offset + p`` and ``W_pos`` is the table from
    position 0 on (a view: editing it edits the weights).
    """

    def __init__(self, n_ctx: int, d_model: int, padding_idx: int | None = None, offset: int = 0) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(offset + n_ctx, d_model))
        nn.init.normal_(self.weight, std=0.02)
        self.padding_idx = padding_idx
        self.offset = offset

    @property
    def W_pos(self) -> torch.Tensor:  # [n_ctx, d_model]
        return self.weight[self.offset :] if self.offset else self.weight

    def forward(self, positions: torch.Tensor, validate: bool = True) -> torch.Tensor:
        n_ctx = self.weight.shape[0] - self.offset
        if validate and positions.numel() and int(positions.max()) >= n_ctx:
            raise IndexError(f"position {int(positions.max())} is beyond the model's {n_ctx} positions")
        rows = positions + self.offset if self.offset else positions
        return _lookup(self.weight, rows, self.padding_idx)  # [batch, pos, d_model]


class Unembed(nn.Module):
    """LM head ``logits = x W_U (+ b_U)``; weight stored ``[d_vocab, d_model]`` (may be tied to the embedding)."""

    def __init__(self, d_model: int, d_vocab: int, bias: bool = False, softcap: float | None = None) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(d_vocab, d_model))
        nn.init.normal_(self.weight, std=0.02)
        self.bias: nn.Parameter | None = nn.Parameter(torch.zeros(d_vocab)) if bias else None
        self.softcap = softcap

    @property
    def W_U(self) -> torch.Tensor:  # [d_model, d_vocab]
        return self.weight.T

    @property
    def b_U(self) -> torch.Tensor:  # [d_vocab]
        return bias_or_zeros(self.bias, self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = nn.functional.linear(x, self.weight, self.bias)  # [batch, pos, d_vocab]
        if self.softcap is not None:
            logits = soft_cap(logits, self.softcap)
        return logits
