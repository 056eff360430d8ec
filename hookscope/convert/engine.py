"""The one conversion engine: rules as data, strict accounting both ways, invertible.

A :class:`Rule` maps source tensors to target tensors through a pure function (and back through its
inverse). :func:`convert_tensors` applies a rule list to a source, yields targets one at a time (so a
loader can place each weight and free it before the next), and raises :class:`ConversionError` naming
every source key left unused or target parameter left unfilled.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace

import torch

from hookscope.errors import ConversionError

Tensors = list[torch.Tensor]
Transform = Callable[[Tensors], Tensors]


def identity(ts: Tensors) -> Tensors:
    return ts


@dataclass(frozen=True)
class Rule:
    """``targets = fwd(sources)``; ``sources = inv(targets)``. ``{i}`` in a name means every layer."""

    sources: tuple[str, ...]
    targets: tuple[str, ...]
    fwd: Transform = identity
    inv: Transform = identity

    def inverted(self) -> Rule:
        return Rule(self.targets, self.sources, self.inv, self.fwd)


def rename(src: str, dst: str) -> Rule:
    return Rule((src,), (dst,))


@dataclass(frozen=True)
class RuleSet:
    """A family's rules plus the source keys it may ignore (buffers, tied copies) by regex."""

    rules: tuple[Rule, ...]
    ignore_sources: tuple[str, ...] = field(default=())
    # (regex, replacement) applied to source names first: older checkpoints' names for the same tensor
    aliases: tuple[tuple[str, str], ...] = field(default=())

    def inverted(self) -> RuleSet:
        return RuleSet(tuple(r.inverted() for r in self.rules))


def alias_name(name: str, aliases: Iterable[tuple[str, str]]) -> str:
    """``name`` after every ``(regex, replacement)`` alias in turn: the name the rules are written against."""
    for pattern, repl in aliases:
        name = re.sub(pattern, repl, name)
    return name


def aliased_keys(keys: Iterable[str], aliases: Iterable[tuple[str, str]]) -> dict[str, str]:
    """``{normalised name: source key}``: each key after every ``(regex, replacement)`` alias in turn.

    Rules are written against the normalised names, so one table serves every checkpoint layout.
    """
    aliases = tuple(aliases)
    out: dict[str, str] = {}
    for key in keys:
        name = alias_name(key, aliases)
        if name in out:
            raise ConversionError(f"source tensors {out[name]!r} and {key!r} both read as {name!r}: "
                                  "the checkpoint holds the same weight under two layouts")
        out[name] = key
    return out


def expand(rules: Iterable[Rule], n_layers: int) -> list[Rule]:
    """Instantiate ``{i}`` templates for each layer."""
    out: list[Rule] = []
    for rule in rules:
        names = rule.sources + rule.targets
        if any("{i}" in n for n in names):
            for i in range(n_layers):
                out.append(replace(
                    rule,
                    sources=tuple(s.replace("{i}", str(i)) for s in rule.sources),
                    targets=tuple(t.replace("{i}", str(i)) for t in rule.targets),
                ))
        else:
            out.append(rule)
    return out


def convert_tensors(
    source_keys: Iterable[str],
    get: Callable[[str], torch.Tensor],
    ruleset: RuleSet,
    n_layers: int,
    expected_targets: Iterable[str],
) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``(target_name, tensor)`` for every rule, after checking both sides are fully accounted for.

    The accounting check runs before any tensor is read, so a mismatch costs nothing.
    """
    rules = expand(ruleset.rules, n_layers)
    original = aliased_keys(source_keys, ruleset.aliases)
    available = set(original)
    ignore = [re.compile(p) for p in ruleset.ignore_sources]
    used = {s for r in rules for s in r.sources}
    produced = [t for r in rules for t in r.targets]
    expected = set(expected_targets)
    problems = []
    missing_sources = sorted(used - available)
    if missing_sources:
        problems.append(f"missing in the source: {_short(missing_sources)}")
    unused = sorted(k for k in available - used if not any(p.search(k) for p in ignore))
    if unused:
        problems.append(f"source tensors no rule consumes: {_short(unused)}")
    unfilled = sorted(expected - set(produced))
    if unfilled:
        problems.append(f"target parameters no rule fills: {_short(unfilled)}")
    extra = sorted(set(produced) - expected)
    if extra:
        problems.append(f"rules produce unknown targets: {_short(extra)}")
    if problems:
        raise ConversionError("weight conversion is not exact:\n  " + "\n  ".join(problems))
    for rule in rules:
        outs = rule.fwd([get(original[s]) for s in rule.sources])
        if len(outs) != len(rule.targets):
            raise ConversionError(f"rule {rule.sources} -> {rule.targets} produced {len(outs)} tensors")
        yield from zip(rule.targets, outs)


def convert_state_dict(
    state: Mapping[str, torch.Tensor], ruleset: RuleSet, n_layers: int, expected_targets: Iterable[str]
) -> dict[str, torch.Tensor]:
    """Eager form of :func:`convert_tensors` over an in-memory state dict."""
    return dict(convert_tensors(state.keys(), state.__getitem__, ruleset, n_layers, expected_targets))


def _short(names: list[str], n: int = 8) -> str:
    more = f" (+{len(names) - n} more)" if len(names) > n else ""
    return ", ".join(names[:n]) + more


# ---------------------------------------------------------------------- pure tensor transforms
def transpose(ts: Tensors) -> Tensors:
    """HF Conv1D stores ``[in, out]``; PyTorch Linear stores ``[out, in]``.

    A view, not a copy: ``F.linear`` reads a transposed weight at full speed, and the load stays zero-copy.
    """
    return [t.T for t in ts]


def split_rows(sizes: list[int], dim: int = 0) -> Transform:
    """One fused tensor -> pieces of ``sizes`` along ``dim`` (and back by concatenation)."""

    def fwd(ts: Tensors) -> Tensors:
        return list(ts[0].split(sizes, dim=dim))  # views: no copy

    return fwd


def concat(dim: int = 0) -> Transform:
    def fwd(ts: Tensors) -> Tensors:
        return [torch.cat(ts, dim=dim)]

    return fwd


def chain(*fns: Transform) -> Transform:
    def fwd(ts: Tensors) -> Tensors:
        for fn in fns:
            ts = fn(ts)
        return ts

    return fwd


def split_heads_interleaved(n_heads: int, d_head: int, parts: int = 3) -> Transform:
    """GPT-NeoX fuses q, k, v per head: rows ``[head, part, d_head]`` -> ``parts`` tensors ``[head*d_head, ...]``."""

    def fwd(ts: Tensors) -> Tensors:
        t = ts[0]
        grouped = t.reshape(n_heads, parts, d_head, *t.shape[1:])
        return [grouped[:, j].reshape(n_heads * d_head, *t.shape[1:]).contiguous() for j in range(parts)]

    return fwd


def merge_heads_interleaved(n_heads: int, d_head: int) -> Transform:
    """Inverse of :func:`split_heads_interleaved`."""

    def fwd(ts: Tensors) -> Tensors:
        stacked = torch.stack([t.reshape(n_heads, d_head, *t.shape[1:]) for t in ts], dim=1)
        return [stacked.reshape(n_heads * len(ts) * d_head, *ts[0].shape[1:]).contiguous()]

    return fwd
