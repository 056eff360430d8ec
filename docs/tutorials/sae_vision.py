# %% [markdown]
# # Sparse autoencoders on a vision transformer: train a ViT → harvest → train an SAE → evaluate → look → steer
#
# A small ViT learns scikit-learn's 8x8 digits from scratch (2x2 patches: 16 patch positions and a class
# token), then a TopK SAE learns its middle residual stream. We check the classifier still works with the SAE
# spliced in, look at which patches latents fire on, and steer "8"s toward "3".
# Set `HOOKSCOPE_TUTORIAL_SMALL=1` to run it in seconds (the test suite does).

# %%
import os

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits

import hookscope
from hookscope.models.vit_config import ViTConfig
from hookscope.sae import SAETrainingConfig, harvest, mean_difference, steered, train_sae
from hookscope.sae.evaluate import classification_change, reconstruction_metrics
from hookscope.viz.feature_view import feature_page
from hookscope.viz.sae_views import image_cards

SMALL = os.environ.get("HOOKSCOPE_TUTORIAL_SMALL") == "1"
torch.set_num_threads(1)
digits = load_digits()
x = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 16.0  # [1797, 1, 8, 8]
y = torch.tensor(digits.target)
order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
x, y = x[order], y[order]
x_train, y_train, x_test, y_test = x[:1400], y[:1400], x[1400:], y[1400:]
if SMALL:
    x_train, y_train, x_test, y_test = x_train[:400], y_train[:400], x_test[:200], y_test[:200]

# %% [markdown]
# ## A ViT, trained from scratch
# hookscope's native `ViT` is an ordinary `nn.Module`: train it like any other. Its hook points are there
# from the start.

# %%
torch.manual_seed(0)
cfg = ViTConfig(d_model=64, n_layers=3, n_heads=4, d_head=16, d_mlp=128, image_size=(8, 8), patch_size=2,
                n_channels=1, head="class", n_classes=10, norm_eps=1e-6)
vit = hookscope.ViT(cfg)
opt = torch.optim.AdamW(vit.parameters(), lr=2e-3, weight_decay=0.01)
epochs = 3 if SMALL else 40
gen = torch.Generator().manual_seed(0)
for _ in range(epochs):
    perm = torch.randperm(len(x_train), generator=gen)
    for i in range(0, len(x_train) - 63, 64):
        idx = perm[i : i + 64]
        loss = F.cross_entropy(vit(x_train[idx]), y_train[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
vit.eval()
with torch.no_grad():
    print("test accuracy", float((vit(x_test).argmax(-1) == y_test).float().mean()))

# %% [markdown]
# ## Harvest and train the SAE on block 1's output (every position: class token and patches)

# %%
HOOK = "blocks.1.hook_resid_post"
acts = harvest(vit, HOOK, x_train, batch_size=200, progress=False)  # [1400 * 17, 64]
sae = train_sae(None, HOOK, acts, SAETrainingConfig(
    architecture="topk", d_sae=512, k=16, batch_size=256, lr=2e-3, training_tokens=len(acts) * (1 if SMALL else 10),
    lr_warmup_steps=20, seed=0, progress=False))
test_acts = harvest(vit, HOOK, x_test, batch_size=200, progress=False)
print(reconstruction_metrics(sae, test_acts))

# %% [markdown]
# ## Evaluate: classification with the SAE spliced in

# %%
print(classification_change(vit, sae, x_test, y_test))

# %% [markdown]
# ## Look: the top images of a few latents, each patch shaded by the latent, the strongest boxed

# %%
with torch.no_grad():
    density = sae.encode(test_acts).gt(0).float().mean(0)
some = density.argsort(descending=True)[[3, 30, 60]].tolist()
cards = image_cards(vit, sae, x_test, some, grid=(4, 4))
feature_page(cards, title="ViT digits SAE", path="sae_vision_features.html")
print([(c.index, round(c.density, 3), len(c.image_examples)) for c in cards])

# %% [markdown]
# ## Steer: "3" minus "8" at block 1, added to the test set's 8s
# Each image is run alone and averaged over its positions; the vector is then added at every position.

# %%
n_each = 10 if SMALL else 50
three_minus_eight = mean_difference(vit, HOOK, list(x_train[y_train == 3][:n_each, None]),
                                    list(x_train[y_train == 8][:n_each, None]))
eights = x_test[y_test == 8]
with torch.no_grad():
    for strength in (0.0, 0.5, 1.0, 1.5):
        with steered(vit, HOOK, three_minus_eight, strength=strength):
            p3 = vit(eights).softmax(-1)[:, 3].mean()
        print(f"strength {strength}: mean p('3') on 8s = {float(p3):.3f}")
