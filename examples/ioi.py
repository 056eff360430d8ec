"""Indirect object identification (Wang et al. 2022) on the packaged SmolLM2-135M, end to end.

"When Mary and John went to the store, John gave a drink to" -> " Mary". The corrupted prompt repeats the
other name ("..., Mary gave a drink to"), which flips the answer. The script measures the clean and corrupted
logit difference, then localises the behaviour: activation patching by layer x position and per head,
attribution patching for everything at once (and its correlation with activation patching), direct logit
attribution per head (name-mover candidates), path patching into the name movers' queries (S-inhibition
candidates), and the induction heads the detector finds on repeated random tokens. Figures and an attention
page are written to --out; the findings are printed.

Usage: python examples/ioi.py [--out DIR] [--prompts N] [--small]
(--small: 2 prompts, and activation patching only for the heads attribution patching ranks highest; path
patching always sweeps the senders attribution patching ranks highest: 32, or 8 with --small)
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

import hookscope
from hookscope.analysis import patching as P
from hookscope.analysis.attribution import attribution_patch, correlation
from hookscope.analysis.dla import head_logit_diff_attribution, logit_diff, normalized_logit_diff_metric
from hookscope.analysis.head_detection import detect_head, induction_scores, repeated_random_tokens
from hookscope.analysis.path_patching import path_patch
from hookscope.viz.attention import save_attention_html

torch.set_num_threads(1)
torch.set_flush_denormal(True)  # SmolLM2 makes denormal floats that slow CPU kernels ~20x

NAMES = [" Mary", " John", " Tom", " James", " Sarah", " Paul", " Kate", " Mike", " Alice", " David"]
PLACES = [" store", " park", " school", " garden"]
OBJECTS = [" drink", " book", " ball", " bag"]


def build_prompts(model, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(clean tokens, corrupted tokens, answers [n, 2] = (indirect object, subject)), all the same length."""
    clean, corrupted, answers = [], [], []
    for i in range(n):
        io, s = NAMES[(2 * i) % len(NAMES)], NAMES[(2 * i + 1) % len(NAMES)]
        first, second = (io, s) if i % 2 == 0 else (s, io)  # both name orders
        place, obj = PLACES[i % len(PLACES)], OBJECTS[(i // 2) % len(OBJECTS)]
        text = "When{} and{} went to the{},{} gave a{} to"
        clean.append(text.format(first, second, place, s, obj))
        corrupted.append(text.format(first, second, place, io, obj))
        answers.append([model.to_single_token(io), model.to_single_token(s)])
    c, k = model.to_tokens(clean), model.to_tokens(corrupted)
    if c.shape != k.shape or bool((model.to_tokens(clean, return_mask=True)[1] == 0).any()):
        raise SystemExit("the IOI prompts must all have the same number of tokens")
    return c, k, torch.tensor(answers)


def top(scores: torch.Tensor, k: int, largest: bool = True) -> list[tuple[int, int, float]]:
    """The k (layer, head, score) with the largest (or smallest) scores, NaNs ignored."""
    flat = scores.flatten().nan_to_num(float("-inf") if largest else float("inf"))
    idx = flat.topk(k, largest=largest).indices.tolist()
    return [(i // scores.shape[1], i % scores.shape[1], float(flat[i])) for i in idx]


def heatmap(values: torch.Tensor, xlabels: list[str], ylabel: str, title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(6, 0.45 * values.shape[1] + 2), max(4, 0.22 * values.shape[0] + 1.5)))
    limit = float(values.nan_to_num(0).abs().max()) or 1.0
    image = ax.imshow(values.numpy(), cmap="RdBu", vmin=-limit, vmax=limit, aspect="auto", origin="lower")
    ax.set_xticks(range(len(xlabels)), xlabels, rotation=90, fontsize=7)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def patching_sweeps(model, clean, corrupted, metric, cache, small: bool, out: Path) -> torch.Tensor:
    """Residual stream by layer x position, and attribution vs activation patching; returns head attributions."""
    str_tokens = model.to_str_tokens(clean[:1])
    resid = P.get_act_patch_resid_pre(model, corrupted, cache, metric, logits_to_keep=1)  # [layer, pos]
    heatmap(resid, str_tokens, "layer", "resid_pre patching (1 = clean logit diff)", out / "ioi_resid_patching.png")
    differ = (clean != corrupted).any(0).nonzero()[:, 0].tolist()  # where the two prompts differ (S2)
    for pos in (*differ, resid.shape[1] - 1):
        best = int(resid[:, pos].argmax())
        print(f"  resid_pre at position {pos} ({str_tokens[pos]!r}): up to {resid[best, pos]:.2f} (layer {best})")
    attr = attribution_patch(model, clean, corrupted, metric, activations=("resid_pre", "z"))
    print(f"  attribution vs activation patching (resid_pre, {resid.numel()} cells): correlation "
          f"{correlation(attr.grid('resid_pre'), resid):.3f}")
    heads_attr = attr.grid("z", all_pos=True)  # [layer, head]
    if small:  # activation-patch only the heads attribution ranks highest
        rows = [[layer, head] for layer, head, _ in top(heads_attr.abs(), 12)]
        values = P.generic_activation_patch(model, corrupted, cache, metric, P.layer_head_vector_patch_setter, "z",
                                            index_df=rows, logits_to_keep=1)
        act_heads = torch.full_like(heads_attr, float("nan"))
        for (layer, head), v in zip(rows, values, strict=True):
            act_heads[layer, head] = v
    else:
        act_heads = P.get_act_patch_attn_head_out_all_pos(model, corrupted, cache, metric, logits_to_keep=1)
    done = ~act_heads.isnan()
    print(f"  attribution vs activation patching (head outputs, {int(done.sum())} heads): correlation "
          f"{correlation(heads_attr[done], act_heads[done]):.3f}")
    heatmap(act_heads, [str(h) for h in range(act_heads.shape[1])], "layer", "head output patching (z, all positions)",
            out / "ioi_head_patching.png")
    for layer, head, v in top(act_heads, 5):
        print(f"  patching head L{layer}H{head}'s output restores {v:.2f} of the logit difference")
    return heads_attr


def circuit_heads(model, clean, corrupted, answers, metric, heads_attr, small: bool, out: Path) -> None:
    """Name movers by direct logit attribution, S-inhibition candidates by path patching into their queries."""
    with torch.no_grad():
        _, cache = model.run_with_cache(clean)
        dla = head_logit_diff_attribution(cache, answers)  # [layer, head]
    movers = top(dla, 3)
    print("name-mover candidates (largest direct logit-diff attribution):",
          ", ".join(f"L{layer}H{head} ({v:+.2f})" for layer, head, v in movers))
    negative = top(dla, 2, largest=False)
    print("negative name-mover candidates:", ", ".join(f"L{layer}H{head} ({v:+.2f})" for layer, head, v in negative))
    receivers = [(layer, head) for layer, head, _ in movers]
    last = max(layer for layer, _ in receivers)
    earlier = heads_attr.clone()
    earlier[last:] = float("nan")  # only heads before the last receiver can reach it
    senders = [(layer, head) for layer, head, _ in top(earlier.abs(), 8 if small else 32)]
    for kind, role in (("q", "S-inhibition"), ("k", "duplicate-token / induction")):
        effect = path_patch(model, clean, corrupted, metric, receivers, kind, senders=senders, logits_to_keep=1)
        drop = effect - 1.0  # the clean run scores 1: a negative value is what the path carries
        print(f"{role} candidates (path patching sender -> name movers' {kind}):",
              ", ".join(f"L{layer}H{head} ({v:+.2f})" for layer, head, v in top(drop, 3, largest=False)))
        heatmap(drop, [str(h) for h in range(drop.shape[1])], "layer", f"path patching -> name movers' {kind}",
                out / f"ioi_path_patching_{kind}.png")
    layer, head, _ = movers[0]
    pattern = cache[f"blocks.{layer}.attn.hook_pattern"][0]
    save_attention_html(out / "ioi_name_mover_attention.html", pattern, model.to_str_tokens(clean[:1]),
                        head_labels=[f"L{layer}H{h}" for h in range(pattern.shape[0])])
    io_pos = int((clean[0] == answers[0, 0]).nonzero()[0, 0])
    s1_pos, s2_pos = ((clean[0] == answers[0, 1]).nonzero()[:, 0]).tolist()[:2]
    for layer, head, _ in movers:
        p = cache[f"blocks.{layer}.attn.hook_pattern"][0, head, -1]
        print(f"  L{layer}H{head} attention from the last token: IO {float(p[io_pos]):.2f}, S1 {float(p[s1_pos]):.2f}, "
              f"S2 {float(p[s2_pos]):.2f}")


def induction(model, small: bool) -> None:
    seq_len, batch = (10, 2) if small else (25, 8)
    tokens = repeated_random_tokens(model.cfg.d_vocab, seq_len, batch=batch, seed=0, low=1000)
    scores = induction_scores(model, tokens, seq_len)
    print("induction heads on repeated random tokens:",
          ", ".join(f"L{layer}H{head} ({v:.2f})" for layer, head, v in top(scores["induction"], 5)))
    detected = detect_head(model, tokens[0], "induction_head", exclude_bos=False)
    layer, head, _ = top(scores["induction"], 1)[0]
    print(f"  detect_head('induction_head') on one such sequence: L{layer}H{head} scores "
          f"{detected[layer, head]:.2f}, median head {detected.median():.2f}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=Path("ioi_out"))
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--small", action="store_true")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    model = hookscope.load("smollm2-135m", progress=False)
    clean, corrupted, answers = build_prompts(model, 2 if args.small else args.prompts)
    with torch.no_grad():
        clean_logits, cache = model.run_with_cache(clean)
        corrupted_logits = model(corrupted)
    clean_diff, corrupted_diff = float(logit_diff(clean_logits, answers)), float(logit_diff(corrupted_logits, answers))
    print(f"{len(clean)} IOI prompts, e.g. {model.to_string(clean[0])!r}")
    print(f"logit difference (IO - S): clean {clean_diff:.2f}, corrupted {corrupted_diff:.2f}")
    metric = normalized_logit_diff_metric(answers, clean_diff, corrupted_diff)
    heads_attr = patching_sweeps(model, clean, corrupted, metric, cache, args.small, args.out)
    circuit_heads(model, clean, corrupted, answers, metric, heads_attr, args.small, args.out)
    induction(model, args.small)
    print(f"figures written to {args.out}")


if __name__ == "__main__":
    main()
