"""Small, shape-hostile HF BERT / RoBERTa models and inputs (shared by the BERT-family tests)."""

from __future__ import annotations

import torch
import transformers as T

from tests.helpers import redraw_parameters

VOCAB, N_CTX, N_TYPES, N_LABELS = 101, 29, 3, 3
BATCH, POS = 5, 7

# name -> (HF class, config class)
CLASSES = {
    "BertModel": (T.BertModel, T.BertConfig),
    "BertForMaskedLM": (T.BertForMaskedLM, T.BertConfig),
    "BertForPreTraining": (T.BertForPreTraining, T.BertConfig),
    "BertForSequenceClassification": (T.BertForSequenceClassification, T.BertConfig),
    "RobertaModel": (T.RobertaModel, T.RobertaConfig),
    "RobertaForMaskedLM": (T.RobertaForMaskedLM, T.RobertaConfig),
    "RobertaForSequenceClassification": (T.RobertaForSequenceClassification, T.RobertaConfig),
}


def hf_config(name: str, **overrides: object) -> T.PretrainedConfig:
    """d_model 48, 4 heads of 12, d_mlp 37, vocab 101, 29 positions, 3 token types, 3 labels: all differ."""
    _, config_cls = CLASSES[name]
    kwargs: dict = dict(
        vocab_size=VOCAB,
        hidden_size=48,
        num_hidden_layers=3,
        num_attention_heads=4,
        intermediate_size=37,
        max_position_embeddings=N_CTX,
        type_vocab_size=N_TYPES,
        layer_norm_eps=1e-12,
        num_labels=N_LABELS,
        hidden_act="gelu",
        attn_implementation="eager",
    )
    kwargs.update(overrides)
    return config_cls(**kwargs)


def redraw(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """:func:`redraw_parameters`, then HF's ``LayerNorm`` / ``layer_norm`` weights around 1 (the shared helper
    keys norm weights on lower-case names, which BERT's ``LayerNorm`` does not match)."""
    redraw_parameters(model, seed=seed)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ("LayerNorm" in name or "layer_norm" in name) and name.endswith("weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen, dtype=torch.float32).to(p.dtype))
    return model


def random_hf_model(
    name: str, dtype: torch.dtype = torch.float32, seed: int = 0, **overrides: object
) -> torch.nn.Module:
    """The HF reference: eager attention, every parameter re-drawn, eval mode."""
    torch.manual_seed(seed)
    model_cls, _ = CLASSES[name]
    model = model_cls(hf_config(name, **overrides))
    return redraw(model, seed).to(dtype).eval()


def inputs(pad_token_id: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Tokens, mask and non-zero token types ``[5, 7]``; rows padded by 0, 2, 3 (right) and 1 (left)."""
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(3, VOCAB, (BATCH, POS), generator=gen)
    mask = torch.ones(BATCH, POS, dtype=torch.long)
    mask[1, 5:] = 0
    mask[2, 4:] = 0
    mask[3, :1] = 0
    mask[4, 6:] = 0
    tokens = tokens.masked_fill(mask == 0, pad_token_id)
    types = torch.randint(0, N_TYPES, (BATCH, POS), generator=gen)
    return tokens, mask, types
