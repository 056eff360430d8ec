"""Whisper equals its Hugging Face source: logits, every encoder and decoder layer, self and cross attention
patterns, the conv stem, gradients, cached decoding, and greedy generation token for token.

Both attention paths are checked: the explicit one (a cache asks for the patterns) and the fused SDPA one.
The first divergent hook is named on failure.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import hookscope
from hookscope.generation.kv_cache import KVCache
from hookscope.generation.whisper_decode import WhisperDecoderView, generate
from tests.equivalence.whisper_cases import (
    BEGIN_SUPPRESS,
    EOS,
    N_AUDIO_CTX,
    N_DEC,
    N_ENC,
    N_MELS,
    N_TEXT_CTX,
    START,
    SUPPRESS,
    VOCAB,
    inputs,
    random_hf_whisper,
)
from tests.helpers import TOLERANCES, encoder_decoder_pairs, first_divergence, redraw_parameters


def _conv_stem(hf: object, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    enc = hf.model.encoder
    h1 = F.gelu(enc.conv1(feats))
    return h1.transpose(1, 2), F.gelu(enc.conv2(h1)).transpose(1, 2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
def test_every_layer_and_pattern_matches_hf(dtype: torch.dtype) -> None:
    hf = random_hf_whisper(dtype)
    model = hookscope.load(hf, dtype=dtype)
    assert (model.cfg.n_encoder_layers, model.cfg.n_decoder_layers) == (N_ENC, N_DEC)
    feats, tokens = inputs(dtype=dtype)
    with torch.no_grad():
        out = hf(
            input_features=feats, decoder_input_ids=tokens, output_hidden_states=True, output_attentions=True
        )
        logits, cache = model.run_with_cache(feats, tokens)
        fused = model(feats, tokens)  # no hooks: the SDPA path
        conv1, conv2 = _conv_stem(hf, feats)
    pairs = [
        ("encoder_embed.hook_conv1", cache["encoder_embed.hook_conv1"], conv1),
        ("encoder_embed.hook_conv2", cache["encoder_embed.hook_conv2"], conv2),
        *encoder_decoder_pairs(cache, out, N_ENC, N_DEC),
        ("logits", logits, out.logits),
        ("logits (fused path)", fused, out.logits),
    ]
    atol, rtol = TOLERANCES[dtype]
    problem = first_divergence(pairs, atol, rtol)
    assert problem is None, f"Whisper {dtype}: first divergence at {problem}"


def test_every_hook_fires_once_and_names_are_canonical() -> None:
    model = hookscope.load(random_hf_whisper())
    feats, tokens = inputs(batch=2)
    counts: dict[str, int] = {}

    def count(t: torch.Tensor, hook: object) -> None:
        counts[hook.name] = counts.get(hook.name, 0) + 1  # type: ignore[attr-defined]

    with model.hooks([(lambda n: True, count)]), torch.no_grad():
        model(feats, tokens)
    assert set(counts) == set(model.hook_dict)
    assert set(counts.values()) == {1}
    for name in (
        "encoder_embed.hook_conv1",
        "encoder.2.attn.hook_pattern",
        "decoder.1.cross_attn.hook_k",
        "decoder.0.hook_cross_attn_in",
        "decoder.0.hook_resid_mid_cross",
        "decoder.1.ln3.hook_normalized",
    ):
        assert name in model.hook_dict
    assert hookscope.names.shape_of("encoder_embed.hook_conv2") == "batch pos d_model"


def test_gradients_match_hf() -> None:
    hf = random_hf_whisper(torch.float64)
    model = hookscope.load(hf, dtype=torch.float64)
    feats, tokens = inputs(batch=2, dtype=torch.float64)
    hf(input_features=feats, decoder_input_ids=tokens).logits.pow(2).mean().backward()
    model(feats, tokens).pow(2).mean().backward()
    pairs = [
        (
            "encoder_embed.conv1.weight",
            model.encoder_embed.conv1.weight.grad,
            hf.model.encoder.conv1.weight.grad,
        ),
        (
            "encoder.0.attn.q_proj.weight",
            model.encoder[0].attn.q_proj.weight.grad,
            hf.model.encoder.layers[0].self_attn.q_proj.weight.grad,
        ),
        (
            "decoder.1.cross_attn.k_proj.weight",
            model.decoder[1].cross_attn.k_proj.weight.grad,
            hf.model.decoder.layers[1].encoder_attn.k_proj.weight.grad,
        ),
        ("embed.weight (tied)", model.embed.weight.grad, hf.model.decoder.embed_tokens.weight.grad),
    ]
    problem = first_divergence(pairs, 1e-10, 1e-10)
    assert problem is None, f"gradient divergence at {problem}"


def test_cached_decoding_equals_full_forward() -> None:
    model = hookscope.load(random_hf_whisper())
    feats, tokens = inputs(batch=3, n_tokens=9)
    with torch.no_grad():
        full = model(feats, tokens)
        view = WhisperDecoderView(model, model.cross_kv(model.encode(feats)))
        cache = KVCache.for_model(view, 3, 9)  # the shared static cache the generation loops allocate
        steps = [view(tokens[:, :4], None, kv_cache=cache)]
        for t in range(4, 9):
            steps.append(view(tokens[:, t : t + 1], None, kv_cache=cache))
        assert cache.length == 9
        torch.testing.assert_close(view(tokens), full, atol=0, rtol=0)  # no cache: the plain decoder
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)


def _hf_generate(
    hf: object, feats: torch.Tensor, n_new: int, eos: int | list[int] = EOS, **kwargs: object
) -> torch.Tensor:
    """HF's own decoding loop (``GenerationMixin.generate``) with Whisper's suppression processors."""
    from transformers import GenerationMixin

    prompt = torch.full((feats.shape[0], 1), START)
    return GenerationMixin.generate(
        hf,
        input_features=feats,
        decoder_input_ids=prompt,
        max_new_tokens=n_new,
        do_sample=False,
        suppress_tokens=SUPPRESS,
        begin_suppress_tokens=BEGIN_SUPPRESS,
        eos_token_id=eos,
        pad_token_id=eos if isinstance(eos, int) else eos[0],
        **kwargs,
    )


def test_greedy_generation_equals_hf() -> None:
    hf = random_hf_whisper()
    model = hookscope.load(hf)
    feats, _ = inputs(batch=4)
    ours = generate(model, feats, [START], max_new_tokens=15)
    with torch.no_grad():
        ref = _hf_generate(hf, feats, 15, num_beams=1)
    assert ours.tolist() == ref.tolist()
    assert torch.equal(model.generate(feats, 15), ours)  # the model's method: same loop, same prompt
    assert not torch.isin(ours[:, 1:], torch.tensor(SUPPRESS)).any()
    assert not torch.isin(ours[:, 1], torch.tensor(BEGIN_SUPPRESS)).any()


# An end-of-text id this random model reaches within 12 steps on some clips (not others), so beams finish at
# different lengths and the length penalty and early stopping change the result (checked below).
BEAM_EOS = 88
BEAM_SETTINGS = [(1.0, False), (0.6, True), (1.3, "never")]


@pytest.mark.parametrize(("length_penalty", "early_stopping"), BEAM_SETTINGS)
def test_beam_search_equals_hf(length_penalty: float, early_stopping: object) -> None:
    hf = random_hf_whisper(eos=BEAM_EOS)
    model = hookscope.load(hf)
    feats, _ = inputs(batch=4)
    ours = model.generate(
        feats, 12, num_beams=3, length_penalty=length_penalty, early_stopping=early_stopping
    )
    with torch.no_grad():
        ref = _hf_generate(
            hf, feats, 12, BEAM_EOS, num_beams=3, length_penalty=length_penalty, early_stopping=early_stopping
        )
    assert ours.tolist() == ref.tolist()
    assert not torch.isin(ours[:, 1:], torch.tensor(SUPPRESS)).any()
    assert not torch.isin(ours[:, 1], torch.tensor(BEGIN_SUPPRESS)).any()


def test_beam_settings_change_the_result() -> None:
    """The beam cases above are not all the same search: the settings matter on this model."""
    model = hookscope.load(random_hf_whisper(eos=BEAM_EOS))
    feats, _ = inputs(batch=4)
    greedy = model.generate(feats, 12).tolist()
    outs = [
        model.generate(feats, 12, num_beams=3, length_penalty=lp, early_stopping=es).tolist()
        for lp, es in BEAM_SETTINGS
    ]
    assert outs[0] != greedy and outs[0] != outs[1] and outs[0] != outs[2]
    assert any(BEAM_EOS in row for row in outs[0]), "some returned beams must have finished"


def test_generation_errors_are_clear() -> None:
    model = hookscope.load(random_hf_whisper())
    feats, _ = inputs(batch=1)
    with pytest.raises(ValueError, match="exceeds the model's context of 23"):
        model.generate(feats, 23)
    with pytest.raises(ValueError, match="num_beams must be"):
        model.generate(feats, 5, num_beams=0)
    with pytest.raises(ValueError, match="at least one token"):
        model.generate(feats, 5, prompt=[])


def test_to_hf_round_trip() -> None:
    hf = random_hf_whisper()
    model = hookscope.load(hf)
    back = model.to_hf()
    feats, tokens = inputs(batch=2)
    with torch.no_grad():
        torch.testing.assert_close(
            back(input_features=feats, decoder_input_ids=tokens).logits,
            hf(input_features=feats, decoder_input_ids=tokens).logits,
            atol=1e-5,
            rtol=1e-5,
        )


def test_wrong_feature_length_is_a_clear_error() -> None:
    model = hookscope.load(random_hf_whisper())
    feats, tokens = inputs(batch=1)
    with pytest.raises(ValueError, match="log-mel features"):
        model(feats[..., :-2], tokens)


def test_conv_stem_is_gelu_whatever_the_activation() -> None:
    """HF's encoder stem applies exact GELU after both convolutions; activation_function sets the MLPs only."""
    import transformers

    cfg = transformers.WhisperConfig(
        vocab_size=VOCAB, num_mel_bins=N_MELS, d_model=18, encoder_layers=1, decoder_layers=1,
        encoder_attention_heads=2, decoder_attention_heads=3, encoder_ffn_dim=11, decoder_ffn_dim=13,
        max_source_positions=N_AUDIO_CTX, max_target_positions=N_TEXT_CTX, activation_function="relu",
        decoder_start_token_id=START, eos_token_id=EOS, pad_token_id=EOS, bos_token_id=EOS,
    )
    cfg._attn_implementation = "eager"
    torch.manual_seed(0)
    hf = redraw_parameters(transformers.WhisperForConditionalGeneration(cfg).eval()).to(torch.float64)
    model = hookscope.load(hf, dtype=torch.float64)
    feats, tokens = inputs(batch=2, dtype=torch.float64)
    with torch.no_grad():
        expected = hf(input_features=feats, decoder_input_ids=tokens).logits
        got = model(feats, tokens)
    torch.testing.assert_close(got, expected, atol=1e-10, rtol=1e-10)
