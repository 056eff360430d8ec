"""Training from scratch: pack texts into token rows, train (DDP under torchrun), checkpoint, n-gram baselines."""

from hookscope.training.config import TrainingConfig
from hookscope.training.data import (
    CausalLMCollator,
    MaskedLMCollator,
    Tokenizer,
    batch_indices,
    token_rows,
    tokenize_and_concatenate,
)
from hookscope.training.loop import TrainResult, evaluate, lr_factor, train
from hookscope.training.ngram import bigram_loss, ngram_losses, unigram_loss

__all__ = [
    "CausalLMCollator",
    "MaskedLMCollator",
    "Tokenizer",
    "TrainResult",
    "TrainingConfig",
    "batch_indices",
    "bigram_loss",
    "evaluate",
    "lr_factor",
    "ngram_losses",
    "token_rows",
    "tokenize_and_concatenate",
    "train",
    "unigram_loss",
]
