"""Predictor benchmark on the public HELP tables shipped in datasets/help.

1. Every few-shot transfer task in tasks.json, with the same defaults for all (20 target samples chosen by
   latkit's own sampler, <= 900 archs per source, 3 seeds): latkit's mean Spearman over the targets, beside
   the published NASFLAT / MultiPredict / HELP numbers (published.json, with their papers), and the wall
   time of the whole task.
2. `fit` (ESM pipeline, budget 500, model auto) on a few single devices: Spearman, MAPE, +-5 % / +-10 %.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from collector.dataset import HELP_DIR
from predictor.data import LatencyTable
from predictor.esm import fit
from predictor.transfer import transfer

FIT_DEVICES = {"nb201": ["titan_rtx_256", "gold_6226", "raspi4", "pixel3"], "fbnet": ["1080ti_32", "raspi4", "pixel3"]}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--help-dir", default=str(HELP_DIR))
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--skip-fit", action="store_true")
    ap.add_argument("--skip-transfer", action="store_true")
    ap.add_argument("--json", help="write every figure here")
    args = ap.parse_args()
    console = Console(width=None if sys.stdout.isatty() else 150)
    tasks = json.loads((Path(args.help_dir) / "tasks.json").read_text())
    published = json.loads((Path(args.help_dir) / "published.json").read_text())["tasks"]
    console.print(f"machine: {platform.processor() or platform.machine()}, {len(os.sched_getaffinity(0))} CPUs; "
                  f"seeds {args.seeds}")
    out = {"transfer": {}, "fit": {}}
    table = Table("task", "latkit ρ (mean ± std over seeds)", "NASFLAT", "MultiPredict", "HELP", "beats NASFLAT",
                  "seconds (all seeds)")
    tables = {}
    for space, by_id in tasks.items():
        tables[space] = LatencyTable(Path(args.help_dir) / f"{space}_latency.parquet", space)
        for tid, task in by_id.items():
            if args.skip_transfer:
                continue
            r = transfer(tables[space], space, task["source"], task["target"], seeds=args.seeds)
            paper = published.get(f"{space} {tid}", {})
            nasflat, multi, helpn = (paper.get(m, float("nan")) for m in ("NASFLAT", "MultiPredict", "HELP"))
            out["transfer"][f"{space} {tid}"] = r
            table.add_row(f"{space} {tid}", f"{r['mean_spearman']:.3f} ± {r['mean_spearman_std']:.3f}",
                          f"{nasflat:.3f}", f"{multi:.3f}", f"{helpn:.3f}",
                          "yes" if r["mean_spearman"] > nasflat else "no", f"{r['seconds']:.0f}")
            console.print(f"{space} {tid}: " + ", ".join(f"{d} {m['spearman']:.3f}" for d, m in r["per_target"].items()))
    if not args.skip_transfer:
        console.print(table)
    if not args.skip_fit:
        ft = Table("space", "device", "model", "n_train", "spearman", "kendall", "mape %", "acc5", "acc10", "seconds")
        for space, devices in FIT_DEVICES.items():
            for dev in devices:
                _, r, _ = fit(tables[space], space, dev, budget=500)
                out["fit"][f"{space} {dev}"] = {k: v for k, v in r.items() if k != "rounds"}
                ft.add_row(space, dev, r["model"], str(r["n_train"]), f"{r['spearman']:.3f}", f"{r['kendall']:.3f}",
                           f"{r['mape']:.1f}", f"{r['acc5']:.3f}", f"{r['acc10']:.3f}", f"{r['seconds']:.0f}")
        console.print(ft)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2, default=float))


if __name__ == "__main__":
    t0 = time.time()
    main()
    print(f"total {time.time() - t0:.0f} s")
