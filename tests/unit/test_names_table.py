"""The hook-name table lives in names.py: its answers do not depend on which model modules were imported,
every hook point of every native family is in it, and the renamed keywords keep their old spelling as
deprecated aliases."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
import transformers as T

import hookscope
from hookscope.hooks import HookedModule
from hookscope.models.dit import DiT
from hookscope.models.dit_config import DiTConfig
from hookscope.names import FAMILY_TABLES, shape_of

_PROBE = """
import json, sys
{imports}
from hookscope.names import FAMILY_TABLES, position_axis, shape_of
names = ["blocks.0.attn.hook_k", "encoder.1.cross_attn.hook_k", "decoder.0.hook_resid_mid_cross",
         "embed.hook_patch_embed", "encoder_embed.hook_conv1", "pooler.hook_pooler_out", "hook_decoder_embed"]
print(json.dumps({{"tables": FAMILY_TABLES, "shapes": [shape_of(n) for n in names],
                  "axes": [position_axis(n, 4) for n in names]}}, sort_keys=True))
"""

IMPORT_ORDERS = [
    "",
    "import hookscope.models.dit, hookscope.models.whisper, hookscope.models.vit, hookscope.models.t5, "
    "hookscope.models.bert",
]


def test_answers_do_not_depend_on_what_was_imported() -> None:
    answers = []
    for imports in IMPORT_ORDERS:
        code = _PROBE.format(imports=imports)
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        answers.append(json.loads(out.stdout))
    assert answers[0] == answers[1]
    assert set(answers[0]["tables"]) == {"decoder", "bert", "t5", "vit", "whisper", "dit"}


def _tiny(family: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return BUILDERS[family]().eval()


BUILDERS = {
    "decoder": lambda: T.LlamaForCausalLM(T.LlamaConfig(vocab_size=23, hidden_size=8, intermediate_size=12,
                                                num_hidden_layers=1, num_attention_heads=2)),
    "bert": lambda: T.BertForPreTraining(T.BertConfig(vocab_size=23, hidden_size=8, num_hidden_layers=1,
                                              num_attention_heads=2, intermediate_size=12)),
    "t5": lambda: T.T5ForConditionalGeneration(T.T5Config(vocab_size=23, d_model=8, d_kv=4, d_ff=12, num_layers=1,
                                                  num_heads=2, feed_forward_proj="gated-gelu")),
    "vit": lambda: T.ViTForImageClassification(T.ViTConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                                                   intermediate_size=12, image_size=8, patch_size=4)),
    "whisper": lambda: T.WhisperForConditionalGeneration(T.WhisperConfig(
        vocab_size=23, num_mel_bins=4, d_model=8, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=12, decoder_ffn_dim=12, max_source_positions=4,
        max_target_positions=6, suppress_tokens=[], begin_suppress_tokens=[], pad_token_id=0, bos_token_id=0,
        eos_token_id=1, decoder_start_token_id=2)),
    "dit": lambda: DiT(DiTConfig(n_layers=1, n_heads=2, d_head=4, in_channels=3, out_channels=3, sample_size=8,
                                 patch_size=4, n_classes=3)),
}


@pytest.mark.parametrize("family", sorted(FAMILY_TABLES))
def test_every_hook_point_of_a_family_is_in_its_table(family: str) -> None:
    model = _tiny(family)
    model = model if isinstance(model, HookedModule) else hookscope.load(model)
    missing = [n for n in model.hook_dict if shape_of(n, family) is None]
    assert not missing
    with pytest.raises(ValueError, match="unknown family"):
        shape_of("hook_embed", "gpt")


def test_renamed_keywords_keep_their_old_spelling_with_a_warning() -> None:
    bert = hookscope.load(_tiny("bert"))
    tokens = torch.tensor([[2, 5, 7, 3]])
    with torch.no_grad():
        hidden = bert(tokens, return_type="hidden")
        with pytest.warns(DeprecationWarning, match="hidden"):
            assert torch.equal(bert(tokens, return_type="embeddings"), hidden)
    whisper = hookscope.load(_tiny("whisper"))
    feats, dec = torch.randn(1, 4, 8), torch.tensor([[1, 2]])
    with torch.no_grad():
        enc = whisper.encode(feats)
        logits = whisper(None, dec, encoder_output=enc)
        with pytest.warns(DeprecationWarning, match="encoder_output"):
            assert torch.equal(whisper(None, dec, encoder_out=enc), logits)
        assert torch.equal(whisper(feats, dec), logits)
