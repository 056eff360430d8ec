"""Greedy generation speed against HF ``generate`` and against this machine's memory-bandwidth floor.

Run: ``python benchmarks/bench_generate.py [--models llama16m,gpt2,smollm2] [--no-compile] [--cpu-time] [--json]``.
Models: ``llama16m`` (random Llama: 6 layers, width 384, 6 heads / 2 KV heads, SwiGLU 1024, vocab 8192,
untied: per-step overhead matters), ``gpt2`` (GPT-2 small shape, random), ``smollm2`` (the packaged
SmolLM2-135M; HF side ``model.to_hf()``), ``narrow`` (12-layer width-64 GPT-2). Both sides decode ``--new``
tokens greedily with no EOS from a ``--prompt``-token prompt with a KV cache; HF uses sdpa attention.
Reported per batch: tokens/s (median of interleaved repeats), the ratio to HF, the fraction of the floor, and
the cost of caching every ``hook_resid_post`` each step, and ``generate(compile=True)`` (its one-off compile
time printed; ``--no-compile`` skips it; it runs on a copy of the model, since its first call re-lays the
copy's linear weights row-major for the compiled step's products, which would slow the eager column). Outputs
are checked equal to HF's (fp32).

The floor: a decode step must read every weight matrix once (the embedding table only by row) plus the KV
cache. The script times, in the same process, thread setting and clock, and interleaved with the decoding
runs (so the same machine noise hits it), ``--new`` vector-matrix products over one matrix of that many bytes
(one per generated token: what a decoder that did nothing but stream its weights would do), laid out as the
fastest-streaming weights are; the floor is ``batch * new / median seconds`` tokens/s, and ``stream GB/s`` the
bandwidth it shows. (Earlier versions took the best of 30 single products instead of the median under the
same noise as the decoding runs, which overstated the floor on a shared machine, and then streamed a
row-major matrix, ~15 GB/s where the column-major one streams ~22 GB/s on the 2-core EPYC, which understated
it: "of floor" figures before this change are not comparable.) On a CUDA device ``compile=True`` replays
CUDA graphs; on a machine without one the script prints ``skipped: no CUDA device``.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from collections.abc import Callable

import torch
import transformers
from report import Table, emit, machine
from timing import median_seconds

import hookscope

LABELS = {
    "llama16m": "Llama 16M (6 x 384, GQA 6/2, vocab 8192)",
    "gpt2": "GPT-2 small shape (random)",
    "smollm2": "SmolLM2-135M (packaged)",
    "narrow": "GPT-2 12 x 64, vocab 2048",
}


def llama16m() -> transformers.PreTrainedModel:
    """The overhead-bound model of issue 21: 15.7 M parameters, fp32."""
    cfg = transformers.LlamaConfig(
        hidden_size=384, intermediate_size=1024, num_hidden_layers=6, num_attention_heads=6,
        num_key_value_heads=2, vocab_size=8192, tie_word_embeddings=False, max_position_embeddings=2048,
    )
    return transformers.LlamaForCausalLM(cfg)


def _models(kind: str, dtype: torch.dtype, device: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(0)
    if kind == "smollm2":
        model = hookscope.load("smollm2-135m", progress=False)
        hf = model.to_hf()
    else:
        if kind == "llama16m":
            hf = llama16m()
        elif kind == "narrow":
            hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_embd=64, n_head=4, vocab_size=2048))
        else:
            hf = transformers.GPT2LMHeadModel(transformers.GPT2Config())
        model = hookscope.load(hf, progress=False)
    return hf.to(device=device, dtype=dtype).eval(), model.to(device=device, dtype=dtype).eval()


def bytes_per_step(model: torch.nn.Module, batch: int, mean_len: float) -> float:
    """Bytes a decode step must read: every weight once (embedding rows only) plus the KV cache so far."""
    cfg = model.cfg
    params = {id(p): p for p in model.parameters()}
    looked_up = [model.embed.weight] + ([model.pos_embed.weight] if model.pos_embed is not None else [])
    read = sum(p.numel() * p.element_size() for p in params.values())
    read -= sum(w.numel() * w.element_size() for w in looked_up if w is not model.unembed.weight)
    kv = 2 * cfg.n_layers * batch * cfg.n_kv_heads * cfg.d_head * mean_len * model.embed.weight.element_size()
    return read + kv


def streaming(n_bytes: float, steps: int, dtype: torch.dtype, device: str) -> Callable[[], object]:
    """``steps`` vector-matrix products over one ``n_bytes`` matrix: weight streaming and nothing else.

    The matrix is laid out as the fastest-streaming weights are (``vector @ matrix`` over a row-major
    ``[1024, n]``: ~22 GB/s on the 2-core EPYC; the row-major ``matrix @ vector`` of earlier versions
    streamed ~15 GB/s there, which understated the floor).
    """
    rows = 1024
    cols = max(int(n_bytes / (rows * torch.finfo(dtype).bits / 8)), 1)
    matrix = torch.randn(rows, cols, dtype=dtype, device=device)
    vector = torch.randn(1, rows, dtype=dtype, device=device)

    def run() -> None:
        for _ in range(steps):
            vector @ matrix

    run.n_bytes = matrix.numel() * matrix.element_size()  # type: ignore[attr-defined]
    return run


def bench_batch(
    hf: torch.nn.Module, model: torch.nn.Module, compiled_model: torch.nn.Module | None, batch: int,
    args: argparse.Namespace,
) -> dict:
    gen = torch.Generator().manual_seed(batch)
    tokens = torch.randint(100, 1000, (batch, args.prompt), generator=gen).to(args.device)
    mask = torch.ones_like(tokens)
    resid = [f"blocks.{i}.hook_resid_post" for i in range(model.cfg.n_layers)]

    def run_hf() -> torch.Tensor:
        with torch.no_grad():
            return hf.generate(tokens, attention_mask=mask, max_new_tokens=args.new, do_sample=False,
                               eos_token_id=None, pad_token_id=0)

    fns: dict[str, Callable[[], object]] = {
        "hf": run_hf,
        "eager": lambda: model.generate(tokens, args.new, eos_token_id=[]),
        "cached": lambda: model.generate(tokens, args.new, eos_token_id=[], return_cache=resid),
    }
    result: dict = {"equal": True}
    if args.dtype == "float32":
        result["equal"] = torch.equal(run_hf(), fns["eager"]())
    if args.compile:
        compiled = lambda: compiled_model.generate(tokens, args.new, eos_token_id=[], compile=True)  # noqa: E731
        start = time.perf_counter()
        out = compiled()  # the compile, outside the timing
        result["compile_s"] = time.perf_counter() - start
        result["equal"] &= torch.equal(out, fns["eager"]())
        fns["compiled"] = compiled
    floor = streaming(bytes_per_step(model, batch, args.prompt + args.new / 2), args.new,
                      model.embed.weight.dtype, args.device)
    fns["floor"] = floor
    clock = time.process_time if args.cpu_time else time.perf_counter
    seconds = median_seconds(fns, args.repeats, args.device, clock=clock)
    result["tok_s"] = {name: batch * args.new / s for name, s in seconds.items()}
    result["floor_tok_s"] = result["tok_s"].pop("floor")
    result["stream_gb_s"] = floor.n_bytes * args.new / seconds["floor"] / 1e9  # type: ignore[attr-defined]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="llama16m,gpt2,smollm2", help=f"comma-separated: {', '.join(LABELS)}")
    parser.add_argument("--smollm2", action="store_true", help="only SmolLM2 (older spelling)")
    parser.add_argument("--narrow", action="store_true", help="only the width-64 GPT-2 (older spelling)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--new", type=int, default=64)
    parser.add_argument("--prompt", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True,
                        help="also time generate(compile=True) (default; --no-compile skips the minutes of compiling)")
    parser.add_argument("--quick", action="store_true", help="llama16m only, batch 1, 3 repeats")
    parser.add_argument("--json", action="store_true", help="also print the table for run_all.py")
    parser.add_argument("--cpu-time", action="store_true",
                        help="time with this process's CPU time, not wall time (a shared machine; 1 thread)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    kinds = ["smollm2"] if args.smollm2 else ["narrow"] if args.narrow else args.models.split(",")
    if args.quick:
        kinds, args.batches, args.repeats = ["llama16m"], "1", 3
    dtype = getattr(torch, args.dtype)
    clock_name = "CPU time" if args.cpu_time else "wall time"
    print(f"greedy, prompt {args.prompt} + {args.new} new tokens, {args.dtype}, {clock_name}; {machine()}")
    columns = ["model", "batch", "HF tok/s", "hookscope tok/s", "/ HF", "of floor", "floor tok/s", "stream GB/s",
               "+ resid cache"] + (["compile=True tok/s", "/ HF", "of floor", "compile wall s"] if args.compile else [])
    print(" | ".join(columns))
    rows = []
    for kind in kinds:
        hf, model = _models(kind, dtype, args.device)
        # its own copy: compile=True re-lays a CPU model's linears row-major, which would slow the eager column
        compiled_model = copy.deepcopy(model) if args.compile else None
        for batch in (int(b) for b in args.batches.split(",")):
            r = bench_batch(hf, model, compiled_model, batch, args)
            tps, floor = r["tok_s"], r["floor_tok_s"]
            row = [LABELS[kind], str(batch), f"{tps['hf']:.1f}", f"{tps['eager']:.1f}",
                   f"{tps['eager'] / tps['hf']:.2f}x", f"{tps['eager'] / floor:.2f}", f"{floor:.1f}",
                   f"{r['stream_gb_s']:.1f}",
                   f"{tps['eager'] / tps['cached'] - 1:+.0%} time"]
            if args.compile:
                row += [f"{tps['compiled']:.1f}", f"{tps['compiled'] / tps['hf']:.2f}x",
                        f"{tps['compiled'] / floor:.2f}", f"{r['compile_s']:.1f}"]
            print(" | ".join(row) + ("" if r["equal"] else "  WARNING: tokens differ from HF's"))
            rows.append(row)
    if not args.device.startswith("cuda"):
        print("CUDA graphs: skipped: no CUDA device" if not torch.cuda.is_available()
              else "CUDA graphs: run with --device cuda")
    if args.json:
        flags = " ".join(a for a in sys.argv[1:] if a != "--json")
        caption = (f"`python benchmarks/bench_generate.py {flags}`: greedy, "
                   f"prompt {args.prompt} + {args.new} new tokens, {args.dtype}, median of {args.repeats} "
                   f"interleaved runs, {clock_name}; floor = weight streaming alone, in the same runs; {machine()}")
        emit([Table("generate", caption, columns, rows)])


if __name__ == "__main__":
    main()
