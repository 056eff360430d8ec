"""Where the canonical hooks live in transformers models of known layouts, written as data.

Each entry of :data:`LAYOUTS` (keyed by ``config.model_type``) lists the model's block stacks. A stack
names the ``ModuleList`` of blocks (by path suffix, so ``LlamaModel`` and ``LlamaForCausalLM`` both
match), the final norm, the attention modules that call transformers' attention function, and, for
every canonical per-block hook, the *site* that carries it: ``("in", path)`` is the first tensor input
of the submodule at ``path`` inside the block (``""`` is the block itself), ``("out", path)`` its main
output tensor, ``("heads", path)`` its output split into ``[..., n_heads, d_head]``.

Canonical meaning (TransformerLens): ``hook_attn_out``/``hook_mlp_out`` are what is *added to the
residual stream*, so sandwich-norm layouts (Gemma 2, OLMo 2) map them to the post-norm's output.
``hook_q``/``hook_k`` are pre-rotary; where the projection is fused (GPT-NeoX, Phi-3) they are not
mapped, and ``hook_rot_q``/``hook_rot_k`` (what attention actually sees) come from the attention function.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from torch import nn

SiteSpec = tuple[str, str]  # (kind, path inside the block)

RESID_MID_REASON = "the block adds to its own copy of the residual, the hook sees only the norm's input"


@dataclass(frozen=True, kw_only=True)
class StackLayout:
    """One stack of blocks (a decoder-only model has one; T5 and Whisper have two)."""

    prefix: str  # canonical block prefix: "blocks", "encoder" or "decoder"
    blocks: str  # path suffix of the nn.ModuleList of blocks
    final_norm: str | None  # path suffix of the norm after the last block
    final_norm_name: str = "ln_final"
    sites: Mapping[str, SiteSpec]  # canonical suffix (e.g. "hook_resid_pre") -> site in the block
    readonly: frozenset[str] = frozenset({"hook_resid_mid"})
    attention: Mapping[str, str]  # "attn" / "cross_attn" -> path of the module calling the attention fn
    rotary: bool = False
    # the model's eager attention takes its softmax in float32 (Llama-style); False where it takes it in
    # the activations' dtype (GPT-2, BERT, T5, Whisper), which differs in float64 and half precision
    softmax_in_float32: bool = True
    # canonical suffix -> (config attribute, value it must have for the site to exist)
    requires: Mapping[str, tuple[str, object]] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class ModelLayout:
    stacks: tuple[StackLayout, ...]
    unembed: str | None = "lm_head"


def _pre_norm_sites(
    *,
    attn: str,
    mlp: str,
    ln1: str | None,
    ln2: str,
    attn_out: str | None = None,
    mlp_out: str | None = None,
    mid: SiteSpec | None = None,
    mlp_parts: Mapping[str, SiteSpec] | None = None,
) -> dict[str, SiteSpec]:
    """The sites of a pre-norm decoder block: x + attn(ln1(x)), then + mlp(ln2(.))."""
    sites: dict[str, SiteSpec] = {"hook_resid_pre": ("in", "")}
    if ln1 is not None:
        sites["ln1.hook_normalized"] = ("out", ln1)
    sites["hook_attn_out"] = ("out", attn_out or attn)
    sites["hook_resid_mid"] = mid or ("in", ln2)
    sites["ln2.hook_normalized"] = ("out", ln2)
    sites.update(mlp_parts or {})
    sites["hook_mlp_out"] = ("out", mlp_out or mlp)
    sites["hook_resid_post"] = ("out", "")
    return sites


def _gated(prefix: str = "mlp") -> dict[str, SiteSpec]:
    return {
        "mlp.hook_pre": ("out", f"{prefix}.gate_proj"),
        "mlp.hook_pre_linear": ("out", f"{prefix}.up_proj"),
        "mlp.hook_post": ("in", f"{prefix}.down_proj"),
    }


def _heads(q: str, k: str, kind: str = "heads") -> dict[str, SiteSpec]:
    return {"attn.hook_q": (kind, q), "attn.hook_k": (kind, k)}


def _qk_norm(kind: str) -> dict[str, SiteSpec]:
    """Q/K-norm outputs (Qwen3 per head, OLMo 2 over all heads); hook_q/hook_k stay *before* the norm,
    as in the native decoder and TransformerLens."""
    return {
        "attn.q_norm.hook_normalized": (kind, "self_attn.q_norm"),
        "attn.k_norm.hook_normalized": (kind, "self_attn.k_norm"),
    }


def _llama_like(*, qk_norm: bool = False) -> ModelLayout:
    sites = _pre_norm_sites(
        attn="self_attn", mlp="mlp", ln1="input_layernorm", ln2="post_attention_layernorm", mlp_parts=_gated()
    )
    return ModelLayout(
        stacks=(
            StackLayout(
                prefix="blocks",
                blocks="layers",
                final_norm="norm",
                sites={
                    **sites,
                    **_heads("self_attn.q_proj", "self_attn.k_proj"),
                    **(_qk_norm("out") if qk_norm else {}),
                },
                attention={"attn": "self_attn"},
                rotary=True,
            ),
        )
    )


_GPT2 = ModelLayout(
    stacks=(
        StackLayout(
            prefix="blocks",
            blocks="h",
            final_norm="ln_f",
            attention={"attn": "attn"},
            softmax_in_float32=False,
            sites=_pre_norm_sites(
                attn="attn",
                mlp="mlp",
                ln1="ln_1",
                ln2="ln_2",
                mlp_parts={"mlp.hook_pre": ("out", "mlp.c_fc"), "mlp.hook_post": ("in", "mlp.c_proj")},
            ),
        ),
    )
)

_GPT_NEOX = ModelLayout(
    unembed="embed_out",
    stacks=(
        StackLayout(
            prefix="blocks",
            blocks="layers",
            final_norm="final_layer_norm",
            attention={"attn": "attention"},
            rotary=True,
            sites=_pre_norm_sites(
                attn="attention",
                mlp="mlp",
                ln1="input_layernorm",
                ln2="post_attention_layernorm",
                mlp_parts={
                    "mlp.hook_pre": ("out", "mlp.dense_h_to_4h"),
                    "mlp.hook_post": ("in", "mlp.dense_4h_to_h"),
                },
            ),
            # parallel attention + MLP (the default) has no residual between them
            requires={"hook_resid_mid": ("use_parallel_residual", False)},
        ),
    ),
)

_GEMMA2 = ModelLayout(
    stacks=(
        StackLayout(
            prefix="blocks",
            blocks="layers",
            final_norm="norm",
            attention={"attn": "self_attn"},
            rotary=True,
            sites={
                **_pre_norm_sites(
                    attn="self_attn",
                    mlp="mlp",
                    ln1="input_layernorm",
                    ln2="pre_feedforward_layernorm",
                    attn_out="post_attention_layernorm",
                    mlp_out="post_feedforward_layernorm",
                    mlp_parts=_gated(),
                ),
                **_heads("self_attn.q_proj", "self_attn.k_proj"),
            },
        ),
    )
)

_PHI3 = ModelLayout(
    stacks=(
        StackLayout(
            prefix="blocks",
            blocks="layers",
            final_norm="norm",
            attention={"attn": "self_attn"},
            rotary=True,
            sites=_pre_norm_sites(
                attn="self_attn",
                mlp="mlp",
                ln1="input_layernorm",
                ln2="post_attention_layernorm",
                mlp_parts={"mlp.hook_post": ("in", "mlp.down_proj")},
            ),
        ),
    )
)

_OLMO2 = ModelLayout(
    stacks=(
        StackLayout(
            prefix="blocks",
            blocks="layers",
            final_norm="norm",
            attention={"attn": "self_attn"},
            rotary=True,
            sites={
                "hook_resid_pre": ("in", ""),
                "hook_attn_out": ("out", "post_attention_layernorm"),
                "hook_resid_mid": ("in", "mlp"),
                **_gated(),
                "hook_mlp_out": ("out", "post_feedforward_layernorm"),
                "hook_resid_post": ("out", ""),
                **_heads("self_attn.q_proj", "self_attn.k_proj"),
                **_qk_norm("heads"),
            },
        ),
    )
)

_BERT = ModelLayout(
    unembed=None,
    stacks=(
        StackLayout(
            prefix="blocks",
            blocks="encoder.layer",
            final_norm=None,
            attention={"attn": "attention.self"},
            softmax_in_float32=False,
            # post-LN: the residual sum goes only into the LayerNorm, so replacing its input is a full edit
            readonly=frozenset(),
            sites={
                "hook_resid_pre": ("in", ""),
                "hook_attn_out": ("out", "attention.output.dense"),
                "hook_resid_mid": ("in", "attention.output.LayerNorm"),
                "ln1.hook_normalized": ("out", "attention.output.LayerNorm"),
                "mlp.hook_pre": ("out", "intermediate.dense"),
                "mlp.hook_post": ("in", "output.dense"),
                "hook_mlp_out": ("out", "output.dense"),
                # TransformerLens's HookedEncoder (and the native BERT): resid_post is the sum before
                # the LayerNorm; the block output (HF's hidden state) is hook_normalized_resid_post
                "hook_resid_post": ("in", "output.LayerNorm"),
                "ln2.hook_normalized": ("out", "output.LayerNorm"),
                "hook_normalized_resid_post": ("out", ""),
            },
        ),
    ),
)


def _t5_stack(prefix: str) -> StackLayout:
    decoder = prefix == "decoder"
    ff = "layer.2" if decoder else "layer.1"
    sites: dict[str, SiteSpec] = {
        "hook_resid_pre": ("in", ""),
        "ln1.hook_normalized": ("out", "layer.0.layer_norm"),
        "hook_attn_out": ("out", "layer.0.SelfAttention"),
        "hook_resid_mid": ("out", "layer.0"),
    }
    attention = {"attn": "layer.0.SelfAttention"}
    if decoder:  # T5's names: ln1 self-attention, ln2 cross-attention, ln3 feed-forward
        sites["ln2.hook_normalized"] = ("out", "layer.1.layer_norm")
        sites["hook_cross_attn_out"] = ("out", "layer.1.EncDecAttention")
        sites["hook_resid_mid_cross"] = ("out", "layer.1")
        attention["cross_attn"] = "layer.1.EncDecAttention"
    sites["ln3.hook_normalized" if decoder else "ln2.hook_normalized"] = ("out", f"{ff}.layer_norm")
    sites["hook_mlp_out"] = ("out", f"{ff}.DenseReluDense")
    sites["hook_resid_post"] = ("out", "")
    return StackLayout(
        prefix=prefix,
        blocks=f"{prefix}.block",
        final_norm=f"{prefix}.final_layer_norm",
        final_norm_name=f"{prefix}_final_ln",
        sites=sites,
        attention=attention,
        readonly=frozenset(),
        softmax_in_float32=False,
    )


def _whisper_stack(prefix: str) -> StackLayout:
    decoder = prefix == "decoder"
    # Whisper scales q before the attention function: hook_q is the projection, before that scaling
    sites: dict[str, SiteSpec] = {
        "hook_resid_pre": ("in", ""),
        "ln1.hook_normalized": ("out", "self_attn_layer_norm"),
        "attn.hook_q": ("heads", "self_attn.q_proj"),
        "hook_attn_out": ("out", "self_attn"),
    }
    attention = {"attn": "self_attn"}
    readonly = {"hook_resid_mid"}
    if decoder:  # T5's names: ln1 self-attention, ln2 cross-attention, ln3 MLP
        sites["hook_resid_mid"] = ("in", "encoder_attn_layer_norm")
        sites["ln2.hook_normalized"] = ("out", "encoder_attn_layer_norm")
        sites["cross_attn.hook_q"] = ("heads", "encoder_attn.q_proj")
        sites["hook_cross_attn_out"] = ("out", "encoder_attn")
        sites["hook_resid_mid_cross"] = ("in", "final_layer_norm")
        attention["cross_attn"] = "encoder_attn"
        readonly.add("hook_resid_mid_cross")
    else:
        sites["hook_resid_mid"] = ("in", "final_layer_norm")
    sites.update(
        {
            "ln3.hook_normalized" if decoder else "ln2.hook_normalized": ("out", "final_layer_norm"),
            "mlp.hook_pre": ("out", "fc1"),
            "mlp.hook_post": ("in", "fc2"),
            "hook_mlp_out": ("out", "fc2"),
            "hook_resid_post": ("out", ""),
        }
    )
    return StackLayout(
        prefix=prefix,
        blocks=f"{prefix}.layers",
        final_norm=f"{prefix}.layer_norm",
        final_norm_name=f"{prefix}_final_ln",
        sites=sites,
        attention=attention,
        readonly=frozenset(readonly),
        softmax_in_float32=False,
    )


_VIT = ModelLayout(
    unembed=None,
    stacks=(
        StackLayout(
            prefix="blocks",
            blocks="layers",
            final_norm="layernorm",
            attention={"attn": "attention"},
            sites=_pre_norm_sites(
                attn="attention",
                mlp="mlp",
                ln1="layernorm_before",
                ln2="layernorm_after",
                mlp_parts={"mlp.hook_pre": ("out", "mlp.fc1"), "mlp.hook_post": ("in", "mlp.fc2")},
            ),
        ),
    ),
)

LAYOUTS: dict[str, ModelLayout] = {
    "gpt2": _GPT2,
    "gpt_neox": _GPT_NEOX,
    "llama": _llama_like(),
    "mistral": _llama_like(),
    "qwen2": _llama_like(),
    "qwen3": _llama_like(qk_norm=True),
    "gemma2": _GEMMA2,
    "phi3": _PHI3,
    "olmo2": _OLMO2,
    "bert": _BERT,
    "t5": ModelLayout(stacks=(_t5_stack("encoder"), _t5_stack("decoder"))),
    "vit": _VIT,
    "whisper": ModelLayout(unembed="proj_out", stacks=(_whisper_stack("encoder"), _whisper_stack("decoder"))),
}

# Canonical per-block names every report checks for, so a missing one is named, not silently absent.
EXPECTED_BLOCK_NAMES = (
    "hook_resid_pre",
    "hook_resid_mid",
    "hook_resid_post",
    "hook_attn_out",
    "hook_mlp_out",
    "attn.hook_q",
    "attn.hook_k",
    "attn.hook_v",
    "attn.hook_pattern",
    "attn.hook_z",
)


def find_path(module: nn.Module, suffix: str) -> str | None:
    """The shortest module path equal to ``suffix`` or ending in ``"." + suffix``; None if none.

    The shortest wins so that ``layers`` finds the model's block list, not some nested ``.layers``.
    """
    matches = [name for name, _ in module.named_modules() if name == suffix or name.endswith("." + suffix)]
    return min(matches, key=len) if matches else None
