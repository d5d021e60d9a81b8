"""Choose timing defaults on data: replay candidate protocols on the samples two passes already stored.

Give it two datasets of the same archs timed with a generous protocol (e.g. `Settings(rounds=6)` through
`scripts/bench_measure.py --keep DIR`, or `latkit collect --rounds 6`). A row's samples_ms are in time
order, rounds one after the other, so each round is recovered by replaying the agent's own stopping rule
(checked against the stored round medians). A candidate (first k rounds, minimum and cap of timed work per
round, ci_target) then takes from each round the samples the agent would have taken, and latency_ms (p10)
of both passes is compared. Seconds per arch are estimated as the median load + k x the recorded per-round
overhead (warmup, requests) + the candidate's timed work. Candidates can only be stricter than what was
recorded: fewer rounds, lower caps, wider CI targets.
"""
from __future__ import annotations

import argparse
import itertools
import json

import numpy as np
from rich.console import Console
from rich.table import Table

from latkit.agents.agent import CI_QUANTILE, quantile_ci_rel
from latkit.collector.retest import compare
from latkit.collector.store import Store


def stop(x, min_count, min_s, max_s, ci_target, q=CI_QUANTILE["cpu"]):
    """How many samples of x the agent's time_callable keeps (None: x ends before it would stop)."""
    total, check_at = 0.0, 0
    for n in range(1, len(x) + 1):
        total += x[n - 1]
        if n < min_count or total < min_s * 1e3:
            continue
        if n >= check_at:
            check_at = int(n * 1.1) + 1
            if quantile_ci_rel(x[:n], q) <= ci_target:
                return n
        if total >= max_s * 1e3:
            return n
    return None


def rounds_of(row) -> list:
    """The row's samples split into its rounds, by the agent's rule under the row's own settings."""
    s = row["settings"]
    x, out = [float(v) for v in row["samples_ms"]], []
    for median in row["round_ms"]:
        n = stop(x, s["repeats_min_count"], s["repeats_min_s"], s["repeats_max_s"], s["ci_target"])
        if n is None or abs(np.median(x[:n]) - median) > 1e-4 * median:
            raise SystemExit(f"cannot recover the rounds of {row['arch']}; were these rows timed by agent >= 0.3.1?")
        out.append(x[:n])
        x = x[n:]
    return out


def load(path) -> dict:
    rows = {}
    for r in Store(path).read().to_pylist():
        if r["status"] == "ok":
            r["settings"] = json.loads(r["settings"])
            rows[r["arch"]] = r
    return rows


def replay(rounds, k, min_s, max_s, ci_target, min_count) -> tuple:
    """(p10 of the kept samples, seconds of timed work)."""
    kept = []
    for x in rounds[:k]:
        n = stop(x, min_count, min_s, max_s, ci_target)
        kept += x[:n or len(x)]
    return float(np.percentile(kept, 10)), sum(kept) / 1e3


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("a", help="dataset of pass 1")
    ap.add_argument("b", help="dataset of pass 2")
    ap.add_argument("--seconds-per-arch", type=float, required=True,
                    help="wall seconds per arch the recorded passes took (their mean)")
    ap.add_argument("--top", type=int, default=30, help="rows to print, fastest first among the best")
    args = ap.parse_args()
    a, b = load(args.a), load(args.b)
    archs = sorted(set(a) & set(b))
    ra, rb = {x: rounds_of(a[x]) for x in archs}, {x: rounds_of(b[x]) for x in archs}
    recorded = a[archs[0]]["settings"]
    k_max = len(a[archs[0]]["round_ms"])
    load_s = float(np.median([r[x]["load_ms"] for r in (a, b) for x in archs])) / 1e3
    timed = float(np.mean([sum(map(sum, rr[x])) / 1e3 for rr in (ra, rb) for x in archs]))
    per_round = (args.seconds_per_arch - load_s - timed) / k_max
    grid = itertools.product(range(1, k_max + 1), (0.1, 0.2), (0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5),
                             (0.005, 0.01, 0.02))
    results = []
    for k, min_s, max_s, ci in grid:
        if min_s > max_s or max_s > recorded["repeats_max_s"] or ci < recorded["ci_target"]:
            continue
        pa = [replay(ra[x], k, min_s, max_s, ci, recorded["repeats_min_count"]) for x in archs]
        pb = [replay(rb[x], k, min_s, max_s, ci, recorded["repeats_min_count"]) for x in archs]
        c = compare([p[0] for p in pa], [p[0] for p in pb])
        seconds = load_s + k * per_round + float(np.mean([p[1] for p in pa + pb]))
        results.append((k, min_s, max_s, ci, c["spearman"], c["median_rel_diff"], seconds))
    table = Table("rounds", "min s", "max s", "ci_target", "Spearman", "median rel. diff", "~ s / arch")
    best = sorted(results, key=lambda r: -r[4])[:args.top]
    for r in sorted(best, key=lambda r: r[6]):
        table.add_row(str(r[0]), f"{r[1]:.2f}", f"{r[2]:.2f}", f"{r[3]:.3f}", f"{r[4]:.4f}", f"{r[5] * 100:.2f} %",
                      f"{r[6]:.2f}")
    console = Console()
    console.print(f"{len(archs)} archs; recorded: {k_max} rounds, {recorded['repeats_min_s']}-"
                  f"{recorded['repeats_max_s']} s, ci_target {recorded['ci_target']}; load {load_s:.2f} s, "
                  f"per-round overhead {per_round:.2f} s")
    console.print(table)


if __name__ == "__main__":
    main()
