"""``transformer_lens.head_detector``: head detection (one implementation: :mod:`hookscope.analysis.head_detection`)."""

from hookscope.analysis.head_detection import (
    compute_head_attention_similarity_score,
    detect_head,
    get_duplicate_token_head_detection_pattern,
    get_induction_head_detection_pattern,
    get_previous_token_head_detection_pattern,
    induction_scores,
    repeated_random_tokens,
)

__all__ = [
    "compute_head_attention_similarity_score",
    "detect_head",
    "get_duplicate_token_head_detection_pattern",
    "get_induction_head_detection_pattern",
    "get_previous_token_head_detection_pattern",
    "induction_scores",
    "repeated_random_tokens",
]
