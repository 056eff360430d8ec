"""Tokenizers written in hookscope: GPT-2's byte-level BPE (and a trainer) and BERT's WordPiece, equal to
Hugging Face's on real vocabularies, usable wherever a transformers tokenizer is (models, generation, training)."""

from hookscope.tokenizers.base import TokenizerBase
from hookscope.tokenizers.bpe import ByteLevelBPE, bytes_to_unicode
from hookscope.tokenizers.bpe_trainer import train_bpe
from hookscope.tokenizers.wordpiece import WordPiece

__all__ = ["ByteLevelBPE", "TokenizerBase", "WordPiece", "bytes_to_unicode", "train_bpe"]
