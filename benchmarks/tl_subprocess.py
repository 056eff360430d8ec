"""TransformerLens's own ``HookedTransformer``, timed in another Python (``--tl-python PATH``) beside HF.

TransformerLens is no hookscope dependency and may pin other library versions, so it runs in the
interpreter of an environment where it is installed. That process builds a random GPT-2-small-shaped
``HookedTransformer`` from a ``HookedTransformerConfig`` and a random HF ``GPT2LMHeadModel`` of the same
shape, times a bare forward and ``run_with_cache`` of every hook with this directory's ``timing.py``,
and prints the medians as JSON: the ratios to HF are measured in the same process, with the same thread
count, so they compare with hookscope's ratios to HF.
"""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

SHAPES = ((1, 16), (4, 128))

_SCRIPT = r"""
import json, sys
import torch, transformers
sys.path.insert(0, sys.argv[1])
from timing import median_seconds
from transformer_lens import HookedTransformer, HookedTransformerConfig

repeats, device, threads = int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
torch.set_num_threads(threads)
torch.manual_seed(0)
cfg = HookedTransformerConfig(d_model=768, d_head=64, n_heads=12, n_layers=12, n_ctx=1024, d_vocab=50257,
                              d_mlp=3072, act_fn="gelu_new", normalization_type="LN", device=device, seed=0)
tl = HookedTransformer(cfg).eval()
hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(attn_implementation="sdpa")).eval().to(device)
from importlib.metadata import version
out = {"version": version("transformer-lens")}
for batch, pos in json.loads(sys.argv[5]):
    ids = torch.randint(0, 50000, (batch, pos), device=device)
    with torch.inference_mode():
        s = median_seconds({"hf": lambda i=ids: hf(i), "tl": lambda i=ids: tl(i),
                            "tl_cache": lambda i=ids: tl.run_with_cache(i)}, repeats, device)
    out[f"{batch}x{pos}"] = s
print("TLJSON" + json.dumps(out))
"""


def transformer_lens_times(python: str, repeats: int, device: str, threads: int) -> dict[str, dict[str, float]]:
    """Median seconds ``{"1x16": {"hf", "tl", "tl_cache"}, ...}`` measured by ``python`` (TransformerLens's
    environment); a clear error when that interpreter cannot run it."""
    here = str(pathlib.Path(__file__).resolve().parent)
    args = [python, "-c", _SCRIPT, here, str(repeats), device, str(threads), json.dumps(SHAPES)]
    done = subprocess.run(args, capture_output=True, text=True, check=False)
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("TLJSON")), None)
    if done.returncode != 0 or line is None:
        tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
        raise RuntimeError(f"{python} could not time TransformerLens (exit {done.returncode}): " + " | ".join(tail))
    return json.loads(line[len("TLJSON"):])


if __name__ == "__main__":  # python benchmarks/tl_subprocess.py /path/to/tl-venv/bin/python
    print(transformer_lens_times(sys.argv[1], 5, "cpu", 1))
