"""BertConfig: every choice a post-LN encoder (BERT, RoBERTa, MiniLM) makes, as typed, validated fields.

Which heads exist (masked-LM, pooler, next-sentence, sequence classification) is declared here, so the
model builds exactly the modules the source weights have and nothing is probed later.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from hookscope.errors import ConfigError
from hookscope.models.config_base import FamilyConfig


@dataclass(frozen=True, kw_only=True)
class BertConfig(FamilyConfig):
    """Shape, numerics and heads of a BERT-style encoder.

    Args:
        n_ctx: rows of the learned position table.
        n_token_types: rows of the token-type (segment) table.
        positions: "absolute" (BERT: position i is row i) or "padding_offset" (RoBERTa: real tokens count
            from ``pad_token_id + 1`` and padding tokens use row ``pad_token_id``).
        mlm_head: a masked-LM head (dense -> ``mlm_act`` -> LayerNorm -> unembed with bias).
        pooler: ``tanh(dense(x[:, 0]))``; needed by the next-sentence and classification heads.
        nsp_head: BERT's next-sentence-prediction head (2 logits from the pooled output).
        n_labels: a sequence-classification head with this many labels on the pooled output, or None.
    """

    d_model: int
    n_layers: int
    n_heads: int
    d_head: int
    d_mlp: int
    d_vocab: int
    n_ctx: int
    n_token_types: int = 2
    act_fn: str = "gelu"
    norm_eps: float = 1e-12
    positions: Literal["absolute", "padding_offset"] = "absolute"
    pad_token_id: int = 0
    mlm_head: bool = False
    mlm_act: str = "gelu"
    tie_embeddings: bool = True
    pooler: bool = False
    nsp_head: bool = False
    n_labels: int | None = None
    architecture: str = "BertModel"  # the HF class this was converted from
    hf_config: dict = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        self._require_positive("d_model", "n_layers", "n_heads", "d_head", "d_mlp", "d_vocab", "n_ctx", "n_token_types")
        self._require_activation("act_fn", "mlm_act")
        if self.positions not in ("absolute", "padding_offset"):
            raise ConfigError(f"positions must be 'absolute' or 'padding_offset', got {self.positions!r}")
        if (self.nsp_head or self.n_labels is not None) and not self.pooler:
            raise ConfigError(
                "the next-sentence and classification heads read the pooled output: set pooler=True"
            )
        if self.n_labels is not None and self.n_labels <= 0:
            raise ConfigError(f"n_labels must be positive, got {self.n_labels}")
        if self.max_tokens <= 0:
            raise ConfigError(f"n_ctx ({self.n_ctx}) leaves no positions after the padding offset")

    @property
    def max_tokens(self) -> int:
        """The longest sequence the position table allows (RoBERTa leaves its first ``pad_token_id + 1``
        rows unused)."""
        if self.positions == "padding_offset":
            return self.n_ctx - self.pad_token_id - 1
        return self.n_ctx
