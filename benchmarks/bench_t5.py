"""hookscope T5 vs HF T5 on the same weights: forward (plain, and with a cache) and greedy generation.

Run: ``PYTHONPATH=. python benchmarks/bench_t5.py [--small] [--repeats 10]``. Random weights in a
t5-small shape (d_model 512, 6 + 6 layers, 8 heads, d_ff 2048, vocab 32128; ``--small`` for a tiny one).
Times are medians of interleaved runs (HF, ours, HF, ...), so drift affects both alike; the figures are
ratios ours / HF (below 1: we are faster).
"""

from __future__ import annotations

import argparse

import torch
import transformers
from timing import median_seconds

import hookscope


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--small", action="store_true")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--pos", type=int, default=64)
    parser.add_argument("--new", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    torch.manual_seed(0)
    shape = (
        dict(d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4, vocab_size=512) if args.small else {}
    )
    cfg = transformers.T5Config(dropout_rate=0.0, decoder_start_token_id=0, **shape)  # default: t5-small
    hf = transformers.T5ForConditionalGeneration(cfg).eval()  # default attention (sdpa)
    hf.generation_config.eos_token_id = None  # both run the full length: same work per call
    hf_eager = transformers.T5ForConditionalGeneration._from_config(cfg, attn_implementation="eager").eval()
    hf_eager.load_state_dict(hf.state_dict())
    model = hookscope.load(hf)
    ids = torch.randint(2, cfg.vocab_size, (args.batch, args.pos))
    dec = torch.randint(2, cfg.vocab_size, (args.batch, args.pos // 2))
    resid = lambda n: n.endswith("hook_resid_post")  # noqa: E731
    gen_kw = dict(max_new_tokens=args.new, do_sample=False)
    with torch.inference_mode():
        ours_tokens = model.generate(ids, args.new, eos_token_id=[])
        hf_tokens = hf.generate(input_ids=ids, **gen_kw)
        assert torch.equal(ours_tokens, hf_tokens), "greedy tokens differ from HF"
        forward = median_seconds(
            {
                "hf": lambda: hf(input_ids=ids, decoder_input_ids=dec),
                "ours": lambda: model(ids, dec),
                "hf_eager_all": lambda: hf_eager(
                    input_ids=ids, decoder_input_ids=dec, output_hidden_states=True, output_attentions=True
                ),
                "ours_cache_resid": lambda: model.run_with_cache(ids, dec, names_filter=resid),
                "ours_cache_all": lambda: model.run_with_cache(ids, dec),
            },
            args.repeats,
        )
        gen = median_seconds(
            {
                "hf": lambda: hf.generate(input_ids=ids, **gen_kw),
                "ours": lambda: model.generate(ids, args.new, eos_token_id=[]),
            },
            max(3, args.repeats // 3),
        )
    n_tok = args.batch * args.new
    print(
        f"T5 {'tiny' if args.small else 't5-small shape'}, batch {args.batch}, encoder pos {args.pos}, "
        f"decoder pos {args.pos // 2}, {torch.get_num_threads()} threads"
    )
    f = forward
    print(
        f"  forward             HF {1e3 * f['hf']:8.1f} ms  ours {1e3 * f['ours']:8.1f} ms  "
        f"ratio {f['ours'] / f['hf']:.3f}"
    )
    print(
        f"  run_with_cache(resid_post) {1e3 * f['ours_cache_resid']:8.1f} ms  ratio vs HF forward "
        f"{f['ours_cache_resid'] / f['hf']:.3f}"
    )
    print(
        f"  run_with_cache(all) {1e3 * f['ours_cache_all']:8.1f} ms  vs HF eager with hidden states + "
        f"attentions {1e3 * f['hf_eager_all']:8.1f} ms  ratio {f['ours_cache_all'] / f['hf_eager_all']:.3f}"
    )
    print(
        f"  greedy generate {args.new} tokens: HF {n_tok / gen['hf']:8.1f} tok/s  "
        f"ours {n_tok / gen['ours']:8.1f} tok/s  ratio (speed) {gen['hf'] / gen['ours']:.3f}"
    )


if __name__ == "__main__":
    main()
