"""Does a kept session time the same as a fresh one? A paired A/B on this machine.

Two local agents take turns on the same NB201 models: A loads every request afresh (--max-sessions 0, as
latkit did before sessions were kept), B keeps its sessions (the default; it holds every model of the run
loaded, as in a collection). Each model is timed A B B A (one round of the default protocol each), so
drift hits both alike. Prints and writes per runtime: the median and p90 of |B/A - 1| per model (the
median of each side's two rounds), the median B/A (a systematic shift), Spearman between A and B, and
A's and B's wall time per request.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from scipy.stats import spearmanr

from latkit.collector import Job, Settings
from latkit.collector.api import space_artifacts
from latkit.collector.devices import Device
from latkit.collector.runner import DeviceRunner
from latkit.collector.samplers import sample
from latkit.collector.spaces import get_space


def runner(tmp: Path, name: str, max_sessions: int) -> DeviceRunner:
    """A started, leased local agent (its own workdir and lease) with --max-sessions from the environment."""
    os.environ["LATKIT_MAX_SESSIONS"] = str(max_sessions)
    try:
        r = DeviceRunner(Device(name=name, transport="local", workdir=str(tmp / name), lease=str(tmp / f"{name}.lease")))
        r.start()
        r.lease()
    finally:
        del os.environ["LATKIT_MAX_SESSIONS"]
    return r


def ab(archs, runtime: str, tmp: Path) -> dict:
    arts = space_artifacts("nb201", archs, runtime)
    settings = Settings(runtime=runtime, rounds=1)
    a, b = runner(tmp, "fresh", 0), runner(tmp, "kept", 64)
    lat, wall, reused = {"A": [], "B": []}, {"A": [], "B": []}, []
    load0 = os.getloadavg()[0]
    try:
        for art in arts:
            got = {"A": [], "B": []}
            for side in "ABBA":
                t0 = time.perf_counter()
                m = (a if side == "A" else b).measure(Job(art, "fresh" if side == "A" else "kept", settings))
                wall[side].append(time.perf_counter() - t0)
                assert m.status == "ok", m.error
                got[side].append(m.latency_ms)
                if side == "B":
                    reused.append(m.round_session_reused[0])
            for side in got:
                lat[side].append(float(np.median(got[side])))
    finally:
        a.close()
        b.close()
    ratio = np.array(lat["B"]) / np.array(lat["A"])
    return {"n": len(archs), "median_abs_diff": float(np.median(abs(ratio - 1))),
            "p90_abs_diff": float(np.percentile(abs(ratio - 1), 90)), "median_ratio_kept_over_fresh": float(np.median(ratio)),
            "spearman": float(spearmanr(lat["A"], lat["B"]).statistic),
            "kept_requests_on_reused_session": float(np.mean(reused)),
            "wall_s_per_request": {"fresh": float(np.median(wall["A"])), "kept": float(np.median(wall["B"]))},
            "load_1min": [load0, os.getloadavg()[0]]}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=30, help="NB201 archs (uniform, seed 0)")
    ap.add_argument("--runtimes", default="onnxruntime,torch")
    ap.add_argument("--json", type=Path, default=Path("scripts/bench_sessions.json"))
    args = ap.parse_args()
    console = Console(width=None if sys.stdout.isatty() else 130)
    archs = sample(get_space("nb201"), args.n, "uniform", 0)
    res = {"date": time.strftime("%Y-%m-%d"), "cpus": os.cpu_count(), "runtimes": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for rt in args.runtimes.split(","):
            res["runtimes"][rt] = r = ab(archs, rt, Path(tmp))
            console.print(f"{rt}: kept/fresh median {r['median_ratio_kept_over_fresh']:.4f}, |diff| median "
                          f"{r['median_abs_diff'] * 100:.2f} % p90 {r['p90_abs_diff'] * 100:.2f} %, Spearman "
                          f"{r['spearman']:.4f}, s/request fresh {r['wall_s_per_request']['fresh']:.2f} kept "
                          f"{r['wall_s_per_request']['kept']:.2f}, load {r['load_1min']}")
    args.json.write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
