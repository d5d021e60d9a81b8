"""Choose timing defaults on data: replay candidate protocols on the samples two passes already stored.

Two modes. `replay_protocols.py A B --seconds-per-arch S` (below: p10, the first k rounds, caps and CI
targets) is how the NB201 defaults were chosen. `replay_protocols.py --bench scripts/bench_models.json
--keep DIR` (see `bench_mode`) replays a wider family on the sets scripts/bench_models.py recorded (the
model zoo and NB201 cells, with their A/A twins): the statistic, rounds, runs per round as a function of
latency, warmup, the CI stop and rounds added when the host moved, and writes the figures to JSON.

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
import dataclasses
import itertools
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from latkit.agents.agent import CI_QUANTILE, quantile_ci_rel
from latkit.collector.retest import compare
from latkit.collector.store import Store

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_models  # noqa: E402  (scripts/ is no package)


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


# ---------------------------------------------------------------------------------------------------------------
# --bench mode: the model zoo and NB201 cells, recorded by scripts/bench_models.py --tag record --keep DIR


def _stat_p(q):
    return lambda kept, rounds: float(np.percentile(kept, q))


def _iqm(kept, rounds):
    lo, hi = np.percentile(kept, [25, 75])
    mid = kept[(kept >= lo) & (kept <= hi)]
    return float(mid.mean())


def _trim(frac):
    def f(kept, rounds):
        x = np.sort(kept)
        k = int(len(x) * frac)
        return float(x[k:len(x) - k].mean())
    return f


# statistic -> (function of (all kept samples, [kept per round]), the quantile its CI stop watches)
STATISTICS_R = {
    "p10": (_stat_p(10), 0.1), "p25": (_stat_p(25), 0.25), "median": (_stat_p(50), 0.5),
    "iqm": (_iqm, 0.5), "trim10": (_trim(0.1), 0.5),
    "mean_round_median": (lambda kept, rounds: float(np.mean([np.median(r) for r in rounds])), 0.5),
    "median_round_median": (lambda kept, rounds: float(np.median([np.median(r) for r in rounds])), 0.5),
    "min_round_median": (lambda kept, rounds: float(np.min([np.median(r) for r in rounds])), 0.5),
    "mean_round_p10": (lambda kept, rounds: float(np.mean([np.percentile(r, 10) for r in rounds])), 0.1),
}


@dataclasses.dataclass(frozen=True)
class Protocol:
    """A candidate timing protocol. Per round: warmup max(warmup_count runs, warmup_s), then timed runs until
    >= min_count and >= min_s, on until the CI of the statistic's quantile is within ci (None: no CI stop) or
    max_s of timed work. rounds: fixed; with spread, rounds are added up to max_rounds while the round
    medians spread by more than `spread` (max / min - 1): the host moved during the model's rounds."""

    stat: str
    rounds: int
    min_count: int
    min_s: float
    max_s: float
    ci: object = None
    warmup_count: int = 2
    warmup_s: float = 0.05
    max_rounds: int = 0
    spread: float = 0.0

    @property
    def name(self) -> str:
        r = f"{self.rounds}" + (f"+ to {self.max_rounds} if spread > {self.spread:g}" if self.max_rounds else "")
        ci = f", ci {self.ci:g}" if self.ci else ""
        return (f"{self.stat}; {r} rounds x (>= {self.min_count} runs, {self.min_s:g}-{self.max_s:g} s{ci}); "
                f"warmup {self.warmup_count} / {self.warmup_s:g} s")


def ci_rel(xs, q, z=1.96) -> float:
    """agents/agent.py's quantile_ci_rel on a sorted numpy array (same order statistics, same quantile)."""
    n = len(xs)
    if n < 6:
        return math.inf
    half = z * math.sqrt(n * q * (1.0 - q))
    lo = max(0, int(math.floor(n * q - half)) - 1)
    hi = min(n - 1, int(math.ceil(n * q + half)) - 1)
    v = float(np.quantile(xs, q))
    return (xs[hi] - xs[lo]) / 2.0 / v if v > 0 else math.inf


_TAKEN: dict = {}


def take(x, cs, p: Protocol, q) -> int:
    """How many of a round's samples (cs: their cumulative sum, ms) the protocol keeps; len(x) + 1 when the
    recording ended first (the candidate would have timed longer than what was recorded). Memoised per round
    (the arrays live as long as the replay): schedules that differ in rounds only share their rounds."""
    key = (id(x), p.min_count, p.min_s, p.max_s, p.ci, q if p.ci else None)
    if key not in _TAKEN:
        _TAKEN[key] = _take(x, cs, p, q)
    return _TAKEN[key]


def _take(x, cs, p: Protocol, q) -> int:
    n = len(x)
    n0 = max(p.min_count, int(np.searchsorted(cs, p.min_s * 1e3)) + 1)
    cap = max(n0, int(np.searchsorted(cs, p.max_s * 1e3)) + 1)
    if p.ci:
        c = n0
        while c < cap and c <= n:
            if ci_rel(np.sort(x[:c]), q) <= p.ci:
                return c
            c = max(int(c * 1.1) + 1, c + 1)
    return cap if cap <= n else n + 1


def kept_row(rounds, p: Protocol, q) -> tuple:
    """(kept samples per round, whether the recording was too short) under protocol p (its stat aside)."""
    kept, short = [], False

    def one(r):
        nonlocal short
        x, cs = r
        k = take(x, cs, p, q)
        short |= k > len(x)
        kept.append(x[:min(k, len(x))])

    for r in rounds[:p.rounds]:
        one(r)
    while p.max_rounds and len(kept) < min(p.max_rounds, len(rounds)):
        med = [float(np.median(k)) for k in kept]
        if max(med) / min(med) - 1 <= p.spread:
            break
        one(rounds[len(kept)])
    return kept, short


def replay_row(rounds, p: Protocol) -> dict:
    """The protocol's value, rounds used, seconds of timed work and whether the recording was too short."""
    fn, q = STATISTICS_R[p.stat]
    kept, short = kept_row(rounds, p, q)
    allk = np.concatenate(kept)
    return {"value": fn(allk, kept), "rounds": len(kept), "timed_s": float(allk.sum()) / 1e3, "short": short}


def recorded_rounds(row) -> list:
    """A recorded row's rounds as (samples, cumulative sum) arrays."""
    return [(np.asarray(r, float), np.cumsum(r)) for r in rounds_of(row)]


def evaluate_many(sets: dict, p: Protocol, stats) -> dict:
    """{stat: figures} of protocol p (its stat replaced by each of `stats`, all watching the same CI quantile)
    on every recorded set: pass vs pass over the models, A/A over the twins."""
    q = STATISTICS_R[stats[0]][1]
    out = {st: {} for st in stats}
    for label, s in sets.items():
        vals, secs, short = {st: [{}, {}] for st in stats}, [], 0
        for k in (0, 1):
            for arch, rr in s["rounds"][k].items():
                kept, sh = kept_row(rr, p, q)
                allk = np.concatenate(kept)
                for st in stats:
                    vals[st][k][arch] = STATISTICS_R[st][0](allk, kept)
                lat = s["lat_ms"][k][arch] / 1e3
                warm = max(p.warmup_count * lat, p.warmup_s)
                secs.append(s["load_s"][k][arch] + len(kept) * (s["overhead_round_s"] + warm) + allk.sum() / 1e3)
                short += sh
        for st in stats:
            v = vals[st]
            names = [a for a in s["models"] if a in v[0] and a in v[1]]
            a, b = np.array([v[0][n] for n in names]), np.array([v[1][n] for n in names])
            rel = np.abs(b - a) / a
            aa = bench_models.aa_diffs(v, s["aa"])
            out[st][label] = {"spearman": compare(a, b)["spearman"], "median_rel_diff": float(np.median(rel)),
                              "max_rel_diff": float(rel.max()), "seconds_per_model": float(np.mean(secs)),
                              "seconds_max": float(np.max(secs)),
                              "aa_median": float(np.median(aa)) if aa else None,
                              "aa_max": float(np.max(aa)) if aa else None, "short_rows": short}
    return out


def evaluate(sets: dict, p: Protocol) -> dict:
    return evaluate_many(sets, p, [p.stat])[p.stat]


GOALS = {"median_rel_diff": 0.03, "max_rel_diff": 0.10, "spearman": 0.995, "seconds_per_model": 2.5}


def met(fig: dict) -> int:
    """How many of the goals a set's figures meet."""
    return ((fig["median_rel_diff"] <= GOALS["median_rel_diff"]) + (fig["max_rel_diff"] <= GOALS["max_rel_diff"])
            + (fig["spearman"] >= GOALS["spearman"]) + (fig["seconds_per_model"] <= GOALS["seconds_per_model"]))


def rank(pr) -> tuple:
    """Most goals met over all sets first, then the smallest sum of the figures over their goals, then time."""
    figs = pr[1].values()
    return (-sum(met(f) for f in figs), sum(f["median_rel_diff"] / GOALS["median_rel_diff"]
                                            + f["max_rel_diff"] / GOALS["max_rel_diff"]
                                            + (1 - f["spearman"]) / (1 - GOALS["spearman"]) for f in figs),
            sum(f["seconds_per_model"] for f in figs))


def score(fig: dict) -> float:
    """How far from the goals (<= 1 meets every goal on that set): the worst ratio."""
    return max(fig["median_rel_diff"] / GOALS["median_rel_diff"], fig["max_rel_diff"] / GOALS["max_rel_diff"],
               (1 - fig["spearman"]) / (1 - GOALS["spearman"]))


def schedules() -> list:
    """The replayed family (each then paired with every statistic); everything is at most what was recorded
    (8 rounds of >= 5 runs and >= 0.5 s, warmup 2 runs / 0.05 s). Runs per round follow the latency: a round
    is >= min_count runs and >= min_s of timed work, so a 2 ms model takes ~100 runs and a 120 ms one min_count."""
    out = []
    per_round = [(0.1, 0.25), (0.1, 0.1), (0.15, 0.15), (0.2, 0.2), (0.3, 0.3), (0.5, 0.5)]
    for rounds in (3, 4, 5, 6, 8):
        for m in (3, 5):
            for lo, hi in per_round:
                for ci in (None, 0.005, 0.01):
                    out.append(Protocol("", rounds, m, lo, hi, ci))
    for r0, rmax, spread in itertools.product((3, 4), (6, 8), (0.02, 0.05, 0.1)):
        for m in (3, 5):
            for lo, hi in per_round:
                out.append(Protocol("", r0, m, lo, hi, None, max_rounds=rmax, spread=spread))
    return out


# the defaults as they are (warmup 5 runs: the replay's warmup estimate; its samples follow the recorded 2)
CURRENT = Protocol("p10", 4, 3, 0.1, 0.3, 0.005, warmup_count=2, warmup_s=0.05)  # collector/job.py Settings (agent 0.3.4)


def load_set(bench: dict, keep: Path, tag: str, label: str, runtime: str) -> dict:
    """A recorded set: its rows' rounds per pass, latencies, load times and the per-round overhead."""
    run = bench["runs"][f"{tag} {label} {runtime}"]
    s = {"models": run["models"], "aa": run["aa"], "rounds": [], "lat_ms": [], "load_s": [],
         "load_1min": run["timers"]["latkit"]["load_1min"]}
    wall_rounds = []
    for k in (1, 2):
        rows = load(keep / f"{label}-{runtime}-{k}")
        s["rounds"].append({a: recorded_rounds(r) for a, r in rows.items()})
        s["lat_ms"].append({a: float(np.median(r["samples_ms"])) for a, r in rows.items()})
        s["load_s"].append({a: r["load_ms"] / 1e3 for a, r in rows.items()})
        wall_rounds += [(sum((f - b).total_seconds() for b, f in zip(r["round_started_at"], r["round_finished_at"])),
                         r["load_ms"] / 1e3, len(r["round_ms"])) for r in rows.values()]
    per_model = run["timers"]["latkit"]["seconds_per_model"]
    in_rounds = float(np.mean([w + ld for w, ld, _ in wall_rounds]))
    s["overhead_round_s"] = max(0.0, (per_model - in_rounds) / wall_rounds[0][2])
    return s


def bench_mode() -> int:
    ap = argparse.ArgumentParser(description="replay candidate protocols on scripts/bench_models.py recordings")
    ap.add_argument("--bench", required=True, help="the JSON scripts/bench_models.py wrote")
    ap.add_argument("--keep", required=True, help="the --keep DIR of the recording run")
    ap.add_argument("--tag", default="record")
    ap.add_argument("--runtime", default="onnxruntime")
    ap.add_argument("--sets", default="zoo,nb201")
    ap.add_argument("--json", default="scripts/replay_protocols.json")
    ap.add_argument("--top", type=int, default=25)
    args = ap.parse_args()
    bench = json.loads(Path(args.bench).read_text())
    sets = {label: load_set(bench, Path(args.keep), args.tag, label, args.runtime) for label in args.sets.split(",")}
    t0 = time.perf_counter()
    results = []
    by_q = {}
    for st, (_, q) in STATISTICS_R.items():
        by_q.setdefault(q, []).append(st)
    for sched in schedules():
        for q, stats in by_q.items():
            if sched.ci is None and q != 0.5:  # without a CI stop the kept samples do not depend on q
                continue
            figs = evaluate_many(sets, dataclasses.replace(sched, stat=stats[0]),
                                 stats if sched.ci else list(STATISTICS_R))
            results += [(dataclasses.replace(sched, stat=st), f) for st, f in figs.items()]
    results.sort(key=rank)
    replayed = len(results)
    seen, unique = set(), []
    for p, f in results:  # a CI target or cap that changes nothing is the same protocol: keep the simplest
        sig = (p.stat, p.warmup_count, json.dumps(f, sort_keys=True))
        if sig not in seen:
            seen.add(sig)
            unique.append((p, f))
    results = unique
    best = results[0]
    enc = lambda p, f: {"protocol": dataclasses.asdict(p), "name": p.name, "sets": f}  # noqa: E731
    named = {"current default": (CURRENT, evaluate(sets, CURRENT)), "recommended": best}
    by_stat = {}
    for p, f in results:  # the best protocol of each statistic (within the time goal), to compare statistics
        by_stat.setdefault(p.stat, (p, f))
    sweeps = {}
    for stat in ("p10", "median", "min_round_median"):  # one lever at a time, the others at the best's values
        for lever, values in (("rounds", (3, 4, 5, 6, 8)), ("per_round", ((0.1, 0.1), (0.1, 0.25), (0.2, 0.2),
                                                                            (0.3, 0.3), (0.5, 0.5)))):
            for v in values:
                kw = {"rounds": v} if lever == "rounds" else {"min_s": v[0], "max_s": v[1]}
                p = dataclasses.replace(best[0], stat=stat, ci=None, max_rounds=0, spread=0.0, **kw)
                sweeps.setdefault(f"{stat} {lever}", []).append(enc(p, evaluate(sets, p)))
    console = Console(width=200)
    table = Table("protocol", *[f"{lb} {h}" for lb in sets for h in ("rho", "med", "max", "s/model", "A/A med")])

    def row(name, f):
        table.add_row(name, *[x for lb in sets for x in (
            f"{f[lb]['spearman']:.4f}", f"{f[lb]['median_rel_diff'] * 100:.2f}%", f"{f[lb]['max_rel_diff'] * 100:.1f}%",
            f"{f[lb]['seconds_per_model']:.2f}",
            f"{f[lb]['aa_median'] * 100:.2f}%" if f[lb]["aa_median"] is not None else "-")])

    for name, (p, f) in named.items():
        row(f"[bold]{name}[/]: {p.name}", f)
    for p, f in results[:args.top]:
        row(p.name, f)
    console.print(f"{replayed} candidates ({len(results)} distinct) replayed in {time.perf_counter() - t0:.0f} s; "
                  + "; ".join(f"{lb}: {len(s['models'])} models, per-round overhead {s['overhead_round_s'] * 1e3:.0f} ms, "
                              f"1-min load {s['load_1min']}" for lb, s in sets.items()))
    console.print(table)
    out = {"machine": bench["machine"], "date": bench["date"], "runtime": args.runtime, "goals": GOALS,
           "recorded": {lb: {"models": len(s["models"]), "aa_pairs": len(s["aa"]), "load_1min": s["load_1min"],
                             "overhead_round_s": s["overhead_round_s"],
                             "settings": bench["runs"][f"{args.tag} {lb} {args.runtime}"]["settings"]}
                        for lb, s in sets.items()},
                 "candidates": replayed, "distinct": len(results), "named": {k: enc(*v) for k, v in named.items()},
                 "best_per_statistic": {k: enc(*v) for k, v in by_stat.items()},
                 "top": [enc(p, f) for p, f in results[:args.top]], "sweeps": sweeps}
    Path(args.json).write_text(json.dumps(out, indent=1))
    console.print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    if "--bench" in sys.argv:
        sys.exit(bench_mode())
    main()
