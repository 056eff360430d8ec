"""Run every ``benchmarks/bench_*.py`` in its own process and rewrite README.md's performance tables.

Usage: python benchmarks/run_all.py [--quick] [--only NAME ...] [--no-readme] [--timeout S] [--from-logs LOG ...]
A script that accepts ``--quick`` gets it with ``--quick``; one that accepts ``--json`` prints its tables as a
``BENCH-JSON`` line (see report.py) and each table replaces the text between ``<!-- bench:NAME -->`` and
``<!-- /bench:NAME -->`` in README.md. Scripts without ``--json`` still run and print their usual output.
A script that fails or times out is reported and the others still run; the exit status is then 1.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from report import MARKER

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def discover(only: list[str] | None) -> list[Path]:
    scripts = sorted(HERE.glob("bench_*.py"))
    if only:
        wanted = {n.removeprefix("bench_").removesuffix(".py") for n in only}
        unknown = wanted - {s.stem.removeprefix("bench_") for s in scripts}
        if unknown:
            raise SystemExit(f"no benchmark named {sorted(unknown)}; have {[s.stem for s in scripts]}")
        scripts = [s for s in scripts if s.stem.removeprefix("bench_") in wanted]
    return scripts


def accepts(script: Path, flag: str) -> bool:
    """Whether the script declares ``flag`` to argparse (read from its source: no import needed)."""
    return re.search(rf"""["']{re.escape(flag)}["']""", script.read_text()) is not None


def run(script: Path, quick: bool, timeout: float) -> tuple[bool, list[dict]]:
    """Run one script, streaming its output; return (succeeded, its tables)."""
    cmd = [sys.executable, str(script)]
    cmd += ["--quick"] if quick and accepts(script, "--quick") else []
    cmd += ["--json"] if accepts(script, "--json") else []
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(HERE), os.environ.get("PYTHONPATH", "")])}
    print(f"\n=== {' '.join([script.name, *cmd[2:]])}", flush=True)
    start = time.perf_counter()
    tables: list[dict] = []
    try:
        out = subprocess.run(cmd, cwd=HERE, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        print(f"--- {script.name}: timed out after {timeout:.0f} s")
        return False, tables
    print("\n".join(line for line in out.stdout.splitlines() if not line.startswith(MARKER)))
    tables = tables_in(out.stdout)
    if out.returncode != 0:
        print(out.stderr[-3000:])
        print(f"--- {script.name}: FAILED (exit {out.returncode})")
        return False, tables
    print(f"--- {script.name}: {time.perf_counter() - start:.0f} s, {len(tables)} table(s)")
    return True, tables


def tables_in(output: str) -> list[dict]:
    """The tables of every ``BENCH-JSON`` line in a script's output."""
    return [t for line in output.splitlines() if line.startswith(MARKER)
            for t in json.loads(line[len(MARKER):])["tables"]]


def render(table: dict) -> str:
    """A table as markdown: its caption, then the header, separator and rows."""
    lines = [table["caption"], "", "| " + " | ".join(table["columns"]) + " |",
             "|" + "---|" * len(table["columns"])]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in table["rows"]]
    return "\n".join(lines)


def rewrite(readme: str, name: str, body: str) -> str | None:
    """Replace the text between this table's markers; None when README.md has no such markers."""
    pattern = re.compile(rf"(<!-- bench:{re.escape(name)} -->\n).*?(<!-- /bench:{re.escape(name)} -->)", re.S)
    if not pattern.search(readme):
        return None
    return pattern.sub(lambda m: m.group(1) + body + "\n" + m.group(2), readme, count=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="pass --quick to every script that takes it")
    parser.add_argument("--only", nargs="+", help="run only these (e.g. load generate)")
    parser.add_argument("--no-readme", action="store_true", help="print the tables, leave README.md alone")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds allowed per script")
    parser.add_argument("--from-logs", nargs="+", metavar="LOG",
                        help="run nothing: take the tables from saved outputs of scripts run with --json")
    args = parser.parse_args()
    failed, tables = [], []
    if args.from_logs:
        tables = [t for log in args.from_logs for t in tables_in(Path(log).read_text())]
    for script in [] if args.from_logs else discover(args.only):
        ok, found = run(script, args.quick, args.timeout)
        tables += found
        if not ok:
            failed.append(script.name)
    readme_path = ROOT / "README.md"
    readme = readme_path.read_text()
    for table in tables:
        body = render(table)
        updated = None if args.no_readme else rewrite(readme, table["name"], body)
        if updated is None:
            print(f"\n<!-- bench:{table['name']} --> (not written to README.md)\n{body}")
        else:
            readme = updated
            print(f"README.md: table {table['name']!r} rewritten")
    if not args.no_readme:
        readme_path.write_text(readme)
    if failed:
        print(f"failed: {', '.join(failed)}")
        sys.exit(1)


if __name__ == "__main__":
    main()
