"""SAEConfig: the shape and the inference-time choices of a sparse autoencoder, as typed fields.

The field names follow SAELens's ``cfg.json`` so that a folder written by one loads in the other.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Architecture = Literal["standard", "topk", "batchtopk", "jumprelu"]
ARCHITECTURES: tuple[str, ...] = ("standard", "topk", "batchtopk", "jumprelu")
# As SAELens defines them. "none": activations as they come; "expected_average_only_in": one scalar
# (``norm_scaling_factor``, fitted on data while training so the mean input norm is sqrt(d_in)) multiplies
# inputs and divides outputs; "constant_norm_rescale": each input is scaled to norm sqrt(d_in) and its
# reconstruction scaled back; "layer_norm": each input is centred and divided by (std + 1e-5) (unbiased std),
# its reconstruction multiplied by std and the mean added back.
Normalization = Literal["none", "expected_average_only_in", "constant_norm_rescale", "layer_norm"]
NORMALIZATIONS: tuple[str, ...] = ("none", "expected_average_only_in", "constant_norm_rescale", "layer_norm")


@dataclass(frozen=True, kw_only=True)
class SAEConfig:
    """What an SAE is: its size, its activation function and how it treats its input.

    Attributes:
        d_in: width of the activation it reads (``d_model`` for the residual stream; ``n_heads * d_head``
            for ``hook_z``, which is flattened over heads).
        d_sae: number of latents.
        architecture: "standard" (ReLU, trained with L1), "topk" (k largest per input), "batchtopk"
            (k per input on average over a batch while training, a learned threshold at inference),
            "jumprelu" (a learned threshold per latent).
        k: active latents per input for "topk" / "batchtopk".
        apply_b_dec_to_input: subtract the decoder bias from the input before encoding (SAELens default).
        normalize_activations: see :data:`NORMALIZATIONS`.
        dtype: parameter dtype name ("float32", "float64", "bfloat16"...).
        hook_name: the hook the SAE reads (metadata, used by splicing and by the CLI).
        model_name: the model the SAE was trained on (metadata).
        hook_head_index: a single-head SAE: it reads head ``h`` of ``hook_z`` (``d_in = d_head``) and,
            spliced, replaces only that head's slice (SAELens's ``metadata.hook_head_index``).
    """

    d_in: int
    d_sae: int
    architecture: Architecture = "standard"
    k: int | None = None
    apply_b_dec_to_input: bool = True
    normalize_activations: Normalization = "none"
    dtype: str = "float32"
    hook_name: str | None = None
    model_name: str | None = None
    hook_head_index: int | None = None
    metadata: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if self.d_in < 1 or self.d_sae < 1:
            raise ValueError(f"SAEConfig needs d_in >= 1 and d_sae >= 1, got d_in={self.d_in}, d_sae={self.d_sae}")
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"unknown SAE architecture {self.architecture!r}; supported: {list(ARCHITECTURES)}")
        if self.architecture in ("topk", "batchtopk"):
            if self.k is None or not 1 <= self.k <= self.d_sae:
                raise ValueError(
                    f"architecture {self.architecture!r} needs 1 <= k <= d_sae={self.d_sae}, got k={self.k}"
                )
        if self.hook_head_index is not None and (isinstance(self.hook_head_index, bool) or not isinstance(
                self.hook_head_index, int) or self.hook_head_index < 0):
            raise ValueError(f"hook_head_index must be a head number >= 0 or None, got {self.hook_head_index!r}")
        if self.normalize_activations not in NORMALIZATIONS:
            raise ValueError(
                f"unknown normalize_activations {self.normalize_activations!r}; supported: {list(NORMALIZATIONS)}"
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
