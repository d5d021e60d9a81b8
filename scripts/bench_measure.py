"""Test-retest of latkit's default timing protocol on this machine, beside torch.utils.benchmark.

N NB201 archs (uniform, seed 0) are measured twice on `local` with latkit's defaults, once as ONNX in
ONNX Runtime and once as torch.export files in torch; the peer (torch.utils.benchmark's
`blocked_autorange`, the usual way to time a torch module) measures the same torch modules twice,
given the same time per arch as latkit's torch passes took. Passes alternate (latkit, peer, latkit, peer)
so drift of the host hits both. For every statistic it prints Spearman's rho between the two passes and
the median relative difference, and writes everything to a JSON file that README tables are rendered
from (scripts/render_readme.py).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.utils.benchmark as tub
from rich.console import Console
from rich.table import Table

from latkit.collector import Settings, probe
from latkit.collector.api import collect_space, space_artifacts
from latkit.collector.retest import STATISTICS, compare
from latkit.collector.samplers import sample
from latkit.collector.spaces import get_space
from latkit.collector.store import Store


def latkit_pass(archs, runtime, out, settings) -> tuple:
    """One collection of every arch; returns (wall seconds per arch, {arch: row})."""
    t0, load0 = time.perf_counter(), os.getloadavg()[0]
    report = collect_space("nb201", len(archs), ["local"], runtime, "uniform", 0, settings, out, progress=False,
                           reference=False)
    wall = time.perf_counter() - t0
    assert report.ok, report.devices[0].message
    rows = {r["arch"]: r for r in Store(out).read().to_pylist() if r["status"] == "ok"}
    return wall / len(archs), rows, [load0, os.getloadavg()[0]]


def peer_pass(archs, min_run_time) -> tuple:
    """torch.utils.benchmark on the same modules (same seeded weights as latkit's exports)."""
    space = get_space("nb201")
    torch.set_num_threads(1)
    medians = {}
    t0, load0 = time.perf_counter(), os.getloadavg()[0]
    for a in archs:
        torch.manual_seed(int(hashlib.sha256(f"nb201\n{a}".encode()).hexdigest()[:15], 16))
        m, x = space.build(a).eval(), torch.randn(space.input_shape(a))
        with torch.inference_mode():
            r = tub.Timer("m(x)", globals={"m": m, "x": x}, num_threads=1).blocked_autorange(min_run_time=min_run_time)
        medians[a] = r.median * 1e3
    return (time.perf_counter() - t0) / len(archs), medians, [load0, os.getloadavg()[0]]


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=60, help="NB201 archs (default 60)")
    ap.add_argument("--json", default="scripts/bench_measure.json", help="where to write the figures")
    ap.add_argument("--keep", metavar="DIR", help="keep latkit's datasets in DIR (RUNTIME-PASS per pass) for "
                    "offline analysis of their samples; default: a temporary directory, removed")
    args = ap.parse_args()
    console = Console(width=None if sys.stdout.isatty() else 130)
    p = probe("local")
    archs = sample(get_space("nb201"), args.n, "uniform", 0)
    settings = {rt: Settings(runtime=rt) for rt in ("onnxruntime", "torch")}
    for rt in settings:  # exports happen before any timing (cached by content)
        space_artifacts("nb201", archs, rt)
    res = {"machine": f"{p['cpu_model']}, {p['cpu_count']} CPUs, {p['memory_mb']} MB, Python {p['python']}, "
                      + ", ".join(f"{k} {v['version']}" for k, v in p["runtimes"].items() if k != "tflite"),
           "n": args.n, "settings": json.loads(Settings().canonical()), "date": time.strftime("%Y-%m-%d"),
           "runs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = args.keep or tmp
        passes = {}
        for k in (0, 1):
            for rt in settings:
                console.print(f"latkit pass {k + 1}, {rt} ...")
                passes[(rt, k)] = latkit_pass(archs, rt, f"{tmp}/{rt}-{k + 1}", settings[rt])
            budget = passes[("torch", 0)][0]
            console.print(f"peer pass {k + 1} (min_run_time {0.9 * budget:.2f} s) ...")
            passes[("peer", k)] = peer_pass(archs, 0.9 * budget)
    for rt in settings:
        (s_a, a, l_a), (s_b, b, l_b) = passes[(rt, 0)], passes[(rt, 1)]
        common = [x for x in archs if x in a and x in b]
        reused = [u for r in (a, b) for x in common for u in r[x]["round_session_reused"]]
        res["runs"][f"latkit {rt}"] = {
            "seconds_per_arch": (s_a + s_b) / 2, "n": len(common), "load_1min": [l_a, l_b],
            "stopped_by_ci": float(np.mean([a[x]["stopped_by"] == "ci_target" for x in common])),
            "rounds_on_reused_session": float(np.mean(reused)),
            "load_ms_median": float(np.median([r[x]["load_ms"] for r in (a, b) for x in common])),
            "statistics": {s: compare([a[x][s] for x in common], [b[x][s] for x in common]) for s in STATISTICS}}
    (s_a, a, l_a), (s_b, b, l_b) = passes[("peer", 0)], passes[("peer", 1)]
    res["runs"]["torch.utils.benchmark"] = {"seconds_per_arch": (s_a + s_b) / 2, "n": len(archs),
                                            "load_1min": [l_a, l_b],
                                            "statistics": {"median": compare([a[x] for x in archs],
                                                                             [b[x] for x in archs])}}
    table = Table("timer", "statistic", "Spearman", "median rel. diff", "s / arch")
    for name, run in res["runs"].items():
        for stat, c in run["statistics"].items():
            table.add_row(name, stat, f"{c['spearman']:.4f}", f"{c['median_rel_diff'] * 100:.2f} %",
                          f"{run['seconds_per_arch']:.2f}")
    console.print(f"[bold]test-retest, {args.n} NB201 archs, two passes[/] on {res['machine']}")
    console.print(table)
    Path(args.json).write_text(json.dumps(res, indent=1))
    console.print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
