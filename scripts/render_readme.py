"""Render the README's benchmark tables from the JSON the benchmark scripts wrote, so no figure is pasted
by hand. A block in README.md looks like

    <!-- table: scripts/bench_measure.json -->
    ...generated...
    <!-- end table -->

and is rewritten by the renderer named after the JSON file (RENDERERS). `--check` exits 1 if the README
differs from what the JSON gives (the tests run it).
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"(<!-- table: (?P<src>[^ ]+) -->\n)(?P<body>.*?)(<!-- end table -->)", re.S)


def bench_measure(d: dict) -> str:
    lines = [f"{d['n']} NB201 archs, two passes each, on {d['machine']} ({d['date']}):", "",
             "| timer | statistic | Spearman (pass 1 vs 2) | median rel. diff | p90 rel. diff | s / arch |",
             "|---|---|---|---|---|---|"]
    for name, run in d["runs"].items():
        for stat, c in run["statistics"].items():
            lines.append(f"| {name} | {stat} | {c['spearman']:.4f} | {c['median_rel_diff'] * 100:.2f} % | "
                         f"{c['p90_rel_diff'] * 100:.2f} % | {run['seconds_per_arch']:.2f} |")
    return "\n".join(lines) + "\n"


RENDERERS = {"bench_measure.json": bench_measure}


def render(text: str) -> str:
    def one(m):
        src = ROOT / m["src"]
        body = RENDERERS[src.name](json.loads(src.read_text()))
        return m.group(1) + body + m.group(4)
    return BLOCK.sub(one, text)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--check", action="store_true", help="exit 1 if README.md is not what the JSON renders to")
    args = ap.parse_args()
    readme = ROOT / "README.md"
    text = readme.read_text()
    new = render(text)
    if args.check:
        if new != text:
            print("README.md tables differ from the benchmark JSON; run scripts/render_readme.py", file=sys.stderr)
            return 1
        return 0
    readme.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
