"""The logit lens in a few lines: per-layer predictions, a PNG and an HTML page.

Usage: python examples/logit_lens.py [--model smollm2-135m] [--out lens-example]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import hookscope


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--out", default="lens-example")
    args = parser.parse_args()
    model = hookscope.load(args.model, progress=False)
    result = hookscope.logit_lens(model, "The Eiffel Tower is in the city of", target=" Paris",
                                  include_subblocks=True)
    print(result.table())
    out = Path(args.out)
    out.mkdir(exist_ok=True)
    result.plot().savefig(out / "lens.png", dpi=100)
    result.to_html(out / "lens.html")
    print(f"wrote {out / 'lens.png'} and {out / 'lens.html'}")


if __name__ == "__main__":
    main()
