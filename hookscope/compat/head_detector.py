"""``transformer_lens.head_detector``: head detection (one implementation: :mod:`hookscope.analysis.head_detection`).

Everything TL's module exposes is here: the functions, the ``HeadName`` / ``ErrorMeasure`` literals,
``HEAD_NAMES``, the ``LayerHeadTuple`` / ``LayerToHead`` aliases, TL's message templates and
``get_supported_heads``. Input errors are :class:`hookscope.errors.InputCheckError`, so TL code that catches
``AssertionError`` (TL asserts these checks) catches them too.
"""

from __future__ import annotations

import logging

from hookscope.analysis.head_detection import (
    HEAD_NAMES,
    ErrorMeasure,
    HeadName,
    compute_head_attention_similarity_score,
    detect_head,
    get_duplicate_token_head_detection_pattern,
    get_induction_head_detection_pattern,
    get_previous_token_head_detection_pattern,
    induction_scores,
    repeated_random_tokens,
)
from hookscope.compat.utils import is_lower_triangular, is_square

logger = logging.getLogger(__name__)

LayerHeadTuple = tuple[int, int]
LayerToHead = dict[int, list[int]]

INVALID_HEAD_NAME_ERR = f"detection_pattern must be a Tensor or one of head names: {HEAD_NAMES}; got %s"
SEQ_LEN_ERR = "The sequence must be non-empty and must fit within the model's context window."
DET_PAT_NOT_SQUARE_ERR = ("The detection pattern must be a lower triangular matrix of shape (sequence_length, "
                          "sequence_length); sequence_length=%d; got detection pattern of shape %s")


def get_supported_heads() -> tuple[str, ...]:
    """The built-in detection patterns' names (TL prints them; they are logged and returned here)."""
    logger.info("Supported heads: %s", HEAD_NAMES)
    return HEAD_NAMES


__all__ = [
    "DET_PAT_NOT_SQUARE_ERR",
    "HEAD_NAMES",
    "INVALID_HEAD_NAME_ERR",
    "SEQ_LEN_ERR",
    "ErrorMeasure",
    "HeadName",
    "LayerHeadTuple",
    "LayerToHead",
    "compute_head_attention_similarity_score",
    "detect_head",
    "get_duplicate_token_head_detection_pattern",
    "get_induction_head_detection_pattern",
    "get_previous_token_head_detection_pattern",
    "get_supported_heads",
    "induction_scores",
    "is_lower_triangular",
    "is_square",
    "repeated_random_tokens",
]
