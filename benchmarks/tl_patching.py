"""TransformerLens's own ``get_act_patch_resid_pre``, timed in ANOTHER interpreter (one with transformer-lens).

Run by ``bench_patching.py --tl-python PATH``; it imports torch, transformers and transformer_lens only (no
hookscope). It loads the Llama-family weights that bench_patching.py saved in Hugging Face format (the same
weights hookscope ran), builds a ``HookedTransformer`` from them offline (TransformerLens's own config and
weight conversion, no processing, so logits equal the HF model's), runs its residual patching over the given
``(layer, pos)`` indices (``generic_activation_patch`` with ``get_act_patch_resid_pre``'s setter and an
``index_df``: TransformerLens runs one forward per index, so a sample is timed and scaled) and prints one
JSON line: ``{"seconds": CPU s of the sampled sweep, "forward_seconds": CPU s of one forward, "result": [one
metric per index], "version": ...}``.

Usage: PATH/python benchmarks/tl_patching.py WEIGHTS_DIR INPUTS_JSON (keys: clean, corrupted, answers, indices)
"""

from __future__ import annotations

import json
import os
import sys
import time
from importlib.metadata import version

import torch

os.environ["HF_HUB_OFFLINE"] = "1"  # never download: the weights are in the folder


def load(folder: str):
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformer_lens.loading_from_pretrained import convert_hf_model_config
    from transformer_lens.pretrained.weight_conversions.llama import convert_llama_weights
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    cfg_dict = convert_hf_model_config(folder)
    if cfg_dict.get("original_architecture") != "LlamaForCausalLM":
        raise SystemExit(f"expected a Llama-family model, got {cfg_dict.get('original_architecture')}")
    cfg_dict.pop("tokenizer_name", None)  # token ids are given: no tokenizer needed
    cfg = HookedTransformerConfig(**cfg_dict, device="cpu", dtype=torch.float32)
    model = HookedTransformer(cfg)
    model.load_and_process_state_dict(convert_llama_weights(hf, cfg), fold_ln=False, center_writing_weights=False,
                                      center_unembed=False, fold_value_biases=False)
    return model.eval()


def main() -> None:
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)  # as bench_patching.py: SmolLM2's denormals slow CPU kernels
    from transformer_lens import patching

    folder, inputs_file = sys.argv[1], sys.argv[2]
    with open(inputs_file) as f:
        spec = json.load(f)
    clean, corrupted = torch.tensor(spec["clean"]), torch.tensor(spec["corrupted"])
    a, b = spec["answers"]
    model = load(folder)

    def metric(logits: torch.Tensor) -> torch.Tensor:
        return (logits[:, -1, a] - logits[:, -1, b]).mean()

    with torch.no_grad():
        _, cache = model.run_with_cache(clean)
        model(corrupted)  # warm-up
        start = time.process_time()
        model(corrupted)
        forward = time.process_time() - start
    import pandas as pd  # a TransformerLens dependency

    indices = pd.DataFrame(spec["indices"], columns=["layer", "pos"])
    start = time.process_time()
    # get_act_patch_resid_pre is this call with every (layer, pos) as index_axis_names; it takes no index_df
    result = patching.generic_activation_patch(model, corrupted, cache, metric, patching.layer_pos_patch_setter,
                                               "resid_pre", index_df=indices)
    seconds = time.process_time() - start
    print(json.dumps({"seconds": seconds, "forward_seconds": forward, "result": result.tolist(),
                      "version": version("transformer-lens")}))


if __name__ == "__main__":
    main()
