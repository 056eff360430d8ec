"""benchmarks/run_all.py: tables from the scripts' machine-readable lines replace README sections by marker."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="module")
def run_all():
    sys.path.insert(0, str(BENCH))
    try:
        import run_all

        yield run_all
    finally:
        sys.path.remove(str(BENCH))


def test_emitted_tables_render_between_their_markers_only(run_all, capsys) -> None:
    import report

    report.emit([report.Table("load", "caption line", ["a", "b"], [["1", "2"], ["3", "4"]])])
    line = capsys.readouterr().out.strip()
    assert line.startswith(report.MARKER)
    (table,) = run_all.tables_in("human output\n" + line + "\nmore output\n")
    assert table == json.loads(line[len(report.MARKER):])["tables"][0]
    readme = "intro\n<!-- bench:load -->\nold table\n<!-- /bench:load -->\n<!-- bench:other -->\nkeep\n" \
             "<!-- /bench:other -->\nend\n"
    out = run_all.rewrite(readme, "load", run_all.render(table))
    assert out == ("intro\n<!-- bench:load -->\ncaption line\n\n| a | b |\n|---|---|\n| 1 | 2 |\n| 3 | 4 |\n"
                   "<!-- /bench:load -->\n<!-- bench:other -->\nkeep\n<!-- /bench:other -->\nend\n")
    assert run_all.rewrite(readme, "missing", "x") is None


def test_every_benchmark_script_is_discovered_and_flags_read_from_source(run_all) -> None:
    scripts = run_all.discover(None)
    names = {s.name for s in scripts}
    assert {"bench_load.py", "bench_generate.py"} <= names
    assert "run_all.py" not in names and "report.py" not in names
    load = BENCH / "bench_load.py"
    assert run_all.accepts(load, "--json") and run_all.accepts(load, "--quick")
    assert not run_all.accepts(load, "--no-such-flag")
    with pytest.raises(SystemExit, match="no benchmark named"):
        run_all.discover(["nonexistent"])


def test_the_readme_has_a_marker_pair_for_the_tables_this_branch_writes() -> None:
    readme = (BENCH.parent / "README.md").read_text()
    for name in ("load", "generate"):
        assert f"<!-- bench:{name} -->" in readme and f"<!-- /bench:{name} -->" in readme
