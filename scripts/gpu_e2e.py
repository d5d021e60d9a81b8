#!/usr/bin/env python3
"""The GPU study in one run that fits a lent GPU machine: ~10 minutes of wall clock, once, and only what
is written to $OUT comes back (at most 8 files of <= 16 MiB). So the script plans its own time: the budget
(--budget-s) is a hard limit, and it stops starting work early enough to write its outputs. It writes

  summary.json                 goals reached, rates, phase times, test results, retest and fit figures
  log.txt                      this log
  <space>-bs<B>.parquet        each dataset as one Parquet file (every stored column, samples included)
  <space>-bs1.parquet
  <space>-bs<B>-retest.parquet the test-retest side table
  <space>-bs<B>-energy.parquet the energy rows (both passes; role "retest" marks the second)
  reports.tar.gz               dataset cards, device probes, retest.json, fit metrics, predictions and plots,
                               pytest's output, nvidia-smi

Phases: (a) GPU info; (b) archs from the balanced sampler, measured in a shuffled order, so that wherever
the budget cuts, the archs measured are a random part of a balanced sample; exported on cores-1 processes
as TorchScript traced at batch 1, which the agent runs at both batch sizes and loads in ~0.07 s where a .pt2
takes ~0.6 s (measured on a CPU); each file is deleted once timed; (c) one agent, started while the first
exports run, times each arch at the big batch and a share of them at batch 1 too, as the exports arrive,
until the plan says stop; (d) the first --retest big-batch archs measured again, shuffled, by the same agent
into a side table; (d2) the first --energy-n of them with energy on (NVML on the GPU: an idle 0.5 s and >= 1 s
of replays each), twice, reshuffled: energy per inference and its retest; (e) the datasets written to OUT;
(f) predictor fits (ESM, model auto) on both datasets and on the energy rows (--target energy_mj) in child
processes stopped at the deadline, and beside them tests/test_gpu.py (the GPU is free by then, so the tests
cost the collection no time); (g) the reports and the summary. Where the device has no energy counter (a CPU
without RAPL, as this project's VM) the energy rows say why and the energy figures are skipped with it.

    python3 scripts/gpu_e2e.py --out "$OUT"                 # the GPU run, sized for ~9 minutes
    python3 scripts/gpu_e2e.py --smoke --out /tmp/smoke     # the same plumbing on a CPU in ~1 minute
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing
import os
import random
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# --smoke: nb201 on the CPU, just enough archs for a fit (budget 10, 11 to test); ~1 minute on 2 idle cores
SMOKE = dict(space="nb201", accelerator="cpu", batch=2, goal_big=14, goal_small=3, retest=3, energy_n=3,
             budget_s=150, min_time=0.005, max_time=0.03, warmup_time=0.002, fit_model="ridge", fit_reserve_s=12,
             pack_reserve_s=4, export_workers=2, export_ahead=8, tests_timeout_s=30,
             tests="tests/test_gpu.py -k 'settings_are_checked or cuda_defaults'")


# What energy adds to one measurement (one round): the idle span and the counter's least span (agents/agent.py
# ENERGY_SPANS: NVML 0.5 + 1 s, RAPL 0.2 + 0.2 s)
ENERGY_EXTRA_S = {"cuda": 1.5, "cpu": 0.4}


class Log:
    """Lines with the seconds since start, to stdout and to OUT/log.txt as they happen (a run killed at the
    machine's limit still brings its log back)."""

    def __init__(self, path: Path, t0: float):
        self.file, self.t0 = open(path, "a", buffering=1), t0

    def __call__(self, message: str) -> None:
        line = f"[{time.monotonic() - self.t0:6.1f}s] {message}"
        print(line, flush=True)
        self.file.write(line + "\n")


class Plan:
    """Whether there is time to start more work: the deadline minus what the later phases need, from the
    cost of each kind of measurement so far (host seconds between two results: export waits, agent
    set-up and timing included)."""

    def __init__(self, args, t0: float):
        self.args, self.deadline = args, t0 + args.budget_s
        self.cost = {"big": [], "small": [], "retest": [], "energy": []}

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def per(self, kind: str) -> float:
        seen = self.cost[kind][-50:] or self.cost["big"][-50:]
        return statistics.median(seen) if seen else 1.0  # a guess until the second result (the first paid for the
                                                         # agent's start)

    def per_energy(self) -> float:
        """An energy measurement, until one is seen: one without an export to wait for (a retest or a batch-1
        one) plus the idle span and the longer counter span."""
        if self.cost["energy"]:
            return self.per("energy")
        like = "retest" if self.cost["retest"] else "small" if self.cost["small"] else "big"
        return self.per(like) + ENERGY_EXTRA_S[self.args.accelerator]

    def after_retest_s(self) -> float:
        return 2 * self.args.energy_n * self.per_energy() + self.args.fit_reserve_s + self.args.pack_reserve_s

    def tail_s(self, retest_n: int) -> float:
        return retest_n * self.per("big") + self.after_retest_s()

    def room_for_arch(self, small_share: float) -> bool:
        need = self.per("big") + small_share * self.per("small")
        return self.left() > need + self.tail_s(self.args.retest)


def settings(args, batch: int):
    from latkit.collector import Settings
    return Settings(runtime="torch", accelerator=args.accelerator, batch_size=batch, rounds=1,
                    warmup_min_s=args.warmup_time, repeats_min_s=args.min_time, repeats_max_s=args.max_time)


def gpu_info(out_dir: Path, log) -> dict:
    """nvidia-smi's view of the GPU (its full text goes into the reports)."""
    if not shutil.which("nvidia-smi"):
        log("no nvidia-smi on this machine")
        return {"nvidia_smi": None}
    fields = "name,driver_version,memory.total,clocks.sm,clocks.max.sm,clocks.mem,power.limit,temperature.gpu,pstate"
    q = subprocess.run(["nvidia-smi", f"--query-gpu={fields}", "--format=csv,noheader"], capture_output=True,
                       text=True, timeout=30)
    full = subprocess.run(["nvidia-smi", "-q"], capture_output=True, text=True, timeout=30)
    (out_dir / "nvidia-smi.txt").write_text(full.stdout + full.stderr)
    gpus = [dict(zip(fields.split(","), (v.strip() for v in line.split(",")))) for line in q.stdout.splitlines()]
    log(f"GPU: {q.stdout.strip() or q.stderr.strip()}")
    return {"gpus": gpus}


def start_tests(args, work: Path, limit_s: float) -> dict:
    """pytest in the background, killed with the agents it started if it outlives `limit_s` (a watchdog,
    so a hung test cannot keep the device lease the study's own agent waits for)."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--junitxml", str(work / "gpu-tests.xml"),
           *shlex.split(args.tests)]
    with open(work / "gpu-tests.txt", "w") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    run = {"proc": proc, "started": time.monotonic(), "timed_out": False}

    def watchdog():
        try:
            proc.wait(timeout=max(1.0, limit_s))
        except subprocess.TimeoutExpired:
            run["timed_out"] = True
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    run["watchdog"] = threading.Thread(target=watchdog, daemon=True)
    run["watchdog"].start()
    return run


def finish_tests(run: dict, work: Path, log) -> dict:
    """pytest's result (from its JUnit XML), once it has ended or been stopped."""
    run["watchdog"].join()
    proc = run["proc"]
    proc.wait()
    result = {"returncode": proc.returncode, "timed_out": run["timed_out"],
              "seconds": round(time.monotonic() - run["started"], 1)}
    xml = work / "gpu-tests.xml"
    if xml.exists():
        suite = ET.parse(xml).getroot()
        suite = suite.find("testsuite") if suite.tag == "testsuites" else suite
        result.update({k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")})
        result["failed"] = []
        for case in suite.iter("testcase"):
            bad = case.find("failure") if case.find("failure") is not None else case.find("error")
            if bad is not None:
                message = (bad.get("message") or bad.tag).strip().splitlines() or [bad.tag]
                result["failed"].append(f"{case.get('name')}: {message[0][:200]}")
    tail = (work / "gpu-tests.txt").read_text().strip().splitlines()[-1:] or ["(no output)"]
    log(f"GPU tests: {tail[0]}{' (stopped at its time limit)' if run['timed_out'] else ''}")
    return result


def collect(args, plan: Plan, work: Path, stores: dict, log) -> dict:
    """Phases (b)-(d): export while the device times; one agent for the big batch, batch 1 and the retest
    (it starts while the first exports run)."""
    from latkit.collector import Device, Job
    from latkit.collector.api import iter_space_artifacts
    from latkit.collector.retest import compare_side, side_table
    from latkit.collector.samplers import sample
    from latkit.collector.spaces import get_space
    from latkit.collector.stream import measure_stream

    n_pool = int(args.goal_big * 1.5)
    archs = sample(get_space(args.space), n_pool, "balanced", args.seed)
    random.Random(args.seed).shuffle(archs)
    label = f"balanced(seed={args.seed})"
    share = args.goal_small / args.goal_big
    log(f"sampled {len(archs)} {args.space} archs ({label}, shuffled); exporting on {args.export_workers} processes")
    arts = iter_space_artifacts(args.space, archs, "torchscript", 1, workers=args.export_workers,
                                ahead=args.export_ahead, cache_dir=work / "exports")
    big, small = settings(args, args.batch), settings(args, 1)
    dev = Device("local", lease=args.lease)
    stamp, stores["retest"] = side_table(stores["big"])
    stores["energy_retest"] = side_table(stores["energy"])[1]
    state = {"stop": "", "export_wait_s": 0.0, "archs": 0}
    left, keep, retest_jobs = {}, [], []

    def jobs():
        for i in range(len(archs)):
            if not plan.room_for_arch(share):
                state["stop"] = f"budget: {plan.left():.0f} s left, kept for the retest, fits and outputs"
                break
            t = time.monotonic()
            art = next(arts)
            state["export_wait_s"] += time.monotonic() - t
            state["archs"] += 1
            with_small = int((i + 1) * share) > int(i * share)
            left[art.path] = 1 + with_small
            yield Job(art, dev.name, big, sampler=label)
            if with_small:
                yield Job(art, dev.name, small, sampler=label)
        else:
            state["stop"] = "every sampled arch measured"
        arts.close()  # cancels exports not yet started
        n = max(0, min(len(retest_jobs), int((plan.left() - plan.after_retest_s()) / plan.per("big"))))
        state["retest_planned"] = n
        log(f"main collection stopped ({state['stop']}); retest of {n} of {len(retest_jobs)} kept archs")
        for job in random.Random(args.seed + 1).sample(retest_jobs, n) if n >= 2 else []:
            if plan.left() < plan.per("retest") + plan.after_retest_s():
                break
            yield dataclasses.replace(job, role="retest")
        yield from energy_jobs(args, plan, retest_jobs, log)

    def store_of(job):
        if job.settings.energy:
            return stores["energy_retest" if job.role == "retest" else "energy"]
        if job.role == "retest":
            return stores["retest"]
        return stores["big"] if job.settings.batch_size == args.batch else stores["small"]

    counts = {"big": 0, "small": 0, "retest": 0, "energy": 0, "errors": 0}
    timing = {k: [] for k in counts if k != "errors"}
    last = None  # the first result also paid for the agent's start: not a rate
    result = {"stop": "", "retest": None}
    try:
        for m in measure_stream(dev, jobs(), store_of, job_timeout=args.job_timeout_s):
            now = time.monotonic()
            kind = ("energy" if m.job.settings.energy else "retest" if m.job.role == "retest" else
                    "big" if m.job.settings.batch_size == args.batch else "small")
            if last is not None:
                plan.cost[kind].append(now - last)
            last = now
            if m.status != "ok":
                counts["errors"] += 1
                log(f"{kind} {m.job.artifact.arch[:60]}: {m.error_kind}: {m.error}")
            else:
                counts[kind] += 1
                timing[kind].append((m.load_ms or 0) / 1e3 + m.warmup_s + sum(m.samples_ms) / 1e3)
                if kind == "big" and len(retest_jobs) < args.retest:
                    retest_jobs.append(m.job)
                    keep.append(m.job.artifact.path)
            if kind in ("big", "small"):
                left[m.job.artifact.path] -= 1
                if left[m.job.artifact.path] == 0 and m.job.artifact.path not in keep:
                    m.job.artifact.path.unlink(missing_ok=True)  # ~20 MB each: the disk holds a few hundred
            done = sum(counts.values()) - counts["errors"]
            if done % 100 == 0:
                log(f"{counts['big']} big-batch, {counts['small']} batch-1, {counts['retest']} retest rows; "
                    f"{plan.per('big'):.2f} s per big-batch arch, {plan.left():.0f} s left")
    except Exception as e:  # a device that cannot go on: report it and keep what is stored
        result["error"] = f"{type(e).__name__}: {e}"
        log(f"collection ended early: {result['error']}")
    finally:
        arts.close()
        shutil.rmtree(work / "exports", ignore_errors=True)  # the retest's files and exports never timed
    result.update(stop=state["stop"], counts=counts, archs_started=state["archs"], sampled=len(archs),
                  export_wait_s=round(state["export_wait_s"], 1), export_workers=args.export_workers,
                  settings={"big": big.canonical(), "small": small.canonical()},
                  seconds_per_measurement={k: _quantiles(v) for k, v in plan.cost.items()},
                  agent_seconds_per_measurement={k: _quantiles(v) for k, v in timing.items()})
    if counts["retest"] >= 2:
        original = {r["key"]: r for r in stores["big"].read().to_pylist()
                    if r["key"] in {j.key for j in retest_jobs} and r["status"] == "ok"}
        result["retest"] = compare_side(stores["big"], stamp, original, args.seed)
        lat = result["retest"]["statistics"]["latency_ms"]
        log(f"retest of {result['retest']['n']}: spearman {lat['spearman']:.4f}, median rel. diff "
            f"{lat['median_rel_diff'] * 100:.3f} %")
    result["energy"] = energy_figures(stores, log)
    return result


def energy_jobs(args, plan: Plan, kept: list, log):
    """Phase (d2): the first --energy-n kept big-batch archs with energy on, then again reshuffled as a retest
    (their files are kept for the retest)."""
    picked = kept[:args.energy_n]
    if len(picked) < 2:
        return
    log(f"energy: {len(picked)} archs, twice")
    for role, order in (("", picked), ("retest", random.Random(args.seed + 2).sample(picked, len(picked)))):
        for job in order:
            if plan.left() < plan.per_energy() + args.fit_reserve_s + args.pack_reserve_s:
                return
            yield dataclasses.replace(job, settings=dataclasses.replace(job.settings, energy=True), role=role)


def energy_figures(stores: dict, log) -> dict:
    """Energy per inference, power and idle power over the energy rows, and how energy_mj retests; or why not."""
    from latkit.collector.retest import compare
    read = lambda s: s.read().to_pylist() if s.exists() and s.files() else []  # noqa: E731
    first = {r["key"]: r for r in read(stores["energy"]) if r["status"] == "ok"}
    again = {r["key"]: r for r in read(stores["energy_retest"]) if r["status"] == "ok"}
    have = [r for r in first.values() if r["energy_mj"] is not None]
    out = {"rows": len(first), "read": len(have)}
    if not have:
        said = [r["warnings"][r["warnings"].find("energy:"):] for r in first.values() if "energy:" in (r["warnings"] or "")]
        out["skipped"] = said[0] if said else "energy: no energy rows measured (the budget)"
        log(out["skipped"])
        return out
    out.update(method=have[0]["energy_method"], **{c: _quantiles([r[c] for r in have if r[c] is not None])
                                                   for c in ("energy_mj", "power_w", "idle_power_w", "energy_s")})
    both = [k for k in first if first[k]["energy_mj"] is not None and (again.get(k) or {}).get("energy_mj")]
    if len(both) >= 2:
        out["retest"] = {c: compare([first[k][c] for k in both], [again[k][c] for k in both])
                         for c in ("energy_mj", "power_w", "latency_ms")}
        out["retest"]["n"] = len(both)
        log(f"energy retest of {len(both)}: spearman {out['retest']['energy_mj']['spearman']:.4f}, median rel. "
            f"diff {out['retest']['energy_mj']['median_rel_diff'] * 100:.2f} %")
    return out


def describe(table) -> dict:
    """What a dataset's rows say about the protocol: errors, spread, set-up costs, graphs, GPU state."""
    df = table.to_pandas()
    ok = df[df["status"] == "ok"]

    def q(col):
        v = ok[col].dropna()
        return [round(float(x), 4) for x in v.quantile([0.1, 0.5, 0.9])] if len(v) else None
    columns = ("latency_ms", "robust_cv", "ci_rel", "repeats", "load_ms", "first_ms", "launch_ms",
               "telemetry_before_gpu_temp_c", "telemetry_before_gpu_sm_mhz", "telemetry_before_gpu_power_w")
    return {"rows": len(df), "ok": len(ok),
            "errors": df.loc[df["status"] != "ok", "error_kind"].value_counts().to_dict(),
            "p10_p50_p90": {c: q(c) for c in columns},
            "stopped_by": ok["stopped_by"].value_counts().to_dict(),
            "cuda_graphs": int(ok["cuda_graphs"].fillna(False).astype(bool).sum()),
            "graph_fallbacks": int((ok["graph_fallback"].fillna("") != "").sum()),
            "warnings": int((ok["warnings"].fillna("") != "").sum())}


def _quantiles(values) -> dict:
    if not values:
        return {}
    q = statistics.quantiles(values, n=10, method="inclusive") if len(values) > 1 else [values[0]] * 9
    return {"n": len(values), "median": round(statistics.median(values), 4), "p10": round(q[0], 4),
            "p90": round(q[-1], 4), "sum": round(sum(values), 1)}


def fit_one(data: str, space: str, device: str, budget: int, model: str, prefix: str,
            target: str = "latency_ms") -> None:
    """One ESM fit in a child process (the parent stops it at the deadline): metrics JSON, the test archs'
    measured and predicted latency (CSV, to plot anywhere), and the report's plot where matplotlib is."""
    import csv
    from latkit.predictor.data import LatencyTable
    from latkit.predictor.esm import fit
    from latkit.predictor.metrics import METRICS
    try:
        table = LatencyTable(data, space, target)
        surrogate, result, test = fit(table, space, device, budget, model=model)
    except Exception as e:  # the parent reports it: this process's stderr may never come back
        Path(f"{prefix}.json").write_text(json.dumps({"error": f"{type(e).__name__}: {e}"}))
        raise
    pred, true = surrogate.predict(test), table.latency(device, test)
    Path(f"{prefix}.json").write_text(json.dumps(result, indent=1, default=float))
    with open(f"{prefix}-pred.csv", "w", newline="") as f:
        csv.writer(f).writerows([("arch", f"measured_{target}", f"predicted_{target}")] + list(zip(test, true, pred)))
    try:
        from latkit.predictor.report import write_report
        shown = {k: result[k] for k in (*METRICS, "n_train", "model")}
        write_report(f"{prefix}-report", f"{space} / {Path(data).name} / {result['model']}", pred, true, shown, target)
    except ImportError:
        pass  # no matplotlib here: the CSV holds the same points


def fits(args, plan: Plan, work: Path, stores: dict, log) -> dict:
    """Phase (f): the fits at once in child processes (both batches' latency, the energy rows' energy_mj); what
    has not finished by the deadline is stopped."""
    from latkit.collector.dataset import read_latency
    from latkit.predictor.metrics import METRICS
    ctx, procs, out = multiprocessing.get_context("spawn"), {}, {}
    for name in ("big", "small", "energy"):
        target = "energy_mj" if name == "energy" else "latency_ms"
        n = read_latency(stores[name].uri, target=target).num_rows if stores[name].exists() and stores[name].files() \
            else 0
        budget = min(args.fit_budget_small if name == "small" else args.fit_budget, n // 2)
        if budget < 10:
            out[name] = {"skipped": f"{n} archs; a fit needs at least 20"}
            log(f"fit {name}: {out[name]}")
            continue
        prefix = str(work / "fits" / f"{Path(stores[name].uri).name}-fit")
        procs[name] = (ctx.Process(target=fit_one, args=(stores[name].uri, args.space, "local", budget,
                                                         args.fit_model, prefix, target)), prefix, budget)
    (work / "fits").mkdir(exist_ok=True)
    for p, _, _ in procs.values():
        p.start()
    for name, (p, prefix, budget) in procs.items():
        p.join(timeout=max(0.0, plan.left() - args.pack_reserve_s))
        if p.is_alive():
            p.terminate()
            p.join()
            out[name] = {"skipped": f"stopped at the deadline (budget {budget})"}
        elif Path(f"{prefix}.json").exists() and "error" not in json.loads(Path(f"{prefix}.json").read_text()):
            r = json.loads(Path(f"{prefix}.json").read_text())
            out[name] = {k: r[k] for k in ("model", "n_train", "n_test", *METRICS, "seconds")}
        else:
            said = json.loads(Path(f"{prefix}.json").read_text()) if Path(f"{prefix}.json").exists() else {}
            out[name] = {"skipped": f"the fit failed (exit code {p.exitcode}): {said.get('error', 'no message')}"}
        log(f"fit {name}: {out[name]}")
    return out


def card_notes(args, summary: dict, batch: int) -> str:
    gpus = summary.get("gpu", {}).get("gpus") or [{}]
    return (f"Collected by `scripts/gpu_e2e.py` in one run on {gpus[0].get('name', 'this machine')} (driver "
            f"{gpus[0].get('driver_version', '?')}): {args.space} archs from the balanced sampler (seed {args.seed}) "
            f"measured in a shuffled order until the run's time budget was spent, so the archs here are a random "
            f"part of a balanced sample. Each arch was traced to TorchScript at batch 1 and timed at batch {batch} "
            f"(the other batch size was timed in the same run, by the same agent, interleaved). Protocol: "
            f"{'CUDA graphs (replays timed with CUDA events)' if args.accelerator == 'cuda' else 'CPU, one thread'}"
            f", one round, >= {args.warmup_time} s warmup and >= {args.min_time} s of timed runs, until the median's "
            f"95 % CI is within +-0.5 % (cap {args.max_time} s).")


def pack_datasets(args, out_dir: Path, stores: dict, summary: dict, log) -> dict:
    """Each dataset as one Parquet file in OUT, with its card written beside the rows (for the reports);
    done as soon as the collection ends, so a run stopped later still brings the data back."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from latkit.collector.dataset import write_card
    written = {}
    for name, batch in (("big", args.batch), ("small", 1), ("retest", args.batch), ("energy", args.batch)):
        store = stores.get(name)
        if store is None or not (store.exists() and store.files()):
            continue
        base = Path(store.uri).name if name != "retest" else f"{Path(stores['big'].uri).name}-retest"
        if name in ("big", "small"):
            write_card(store.uri, title=f"{args.space} on the GPU, batch {batch} (latkit GPU study)",
                       notes=card_notes(args, summary, batch))
        table = store.read()
        again = stores.get("energy_retest")
        if name == "energy" and again is not None and again.exists() and again.files():  # both passes in one file
            table = pa.concat_tables([table, again.read()])
        pq.write_table(table, out_dir / f".{base}.parquet", compression="zstd")
        os.replace(out_dir / f".{base}.parquet", out_dir / f"{base}.parquet")
        written[f"{base}.parquet"] = {"bytes": (out_dir / f"{base}.parquet").stat().st_size, **describe(table)}
        log(f"{base}.parquet: {table.num_rows} rows, {written[f'{base}.parquet']['bytes']} bytes")
    return written


def pack_reports(out_dir: Path, work: Path, stores: dict, log) -> dict:
    """The small things in one tar: cards, device probes, retest figures, fits, pytest's output, nvidia-smi."""
    with tarfile.open(out_dir / ".reports.tar.gz", "w:gz") as tar:
        for name in ("big", "small"):
            folder = Path(stores[name].uri)
            for f in [folder / "README.md", *folder.glob("devices/*.json"), *folder.glob("_retest/*/retest.json")]:
                if f.exists():
                    tar.add(f, arcname=f"{folder.name}/{f.name}")
        for f in (work / "gpu-tests.txt", work / "gpu-tests.xml", work / "nvidia-smi.txt", work / "fits"):
            if f.exists():
                tar.add(f, arcname=f.name)
    os.replace(out_dir / ".reports.tar.gz", out_dir / "reports.tar.gz")
    sizes = {p.name: p.stat().st_size for p in out_dir.iterdir() if p.is_file()}
    if any(v > 16 * 2 ** 20 for v in sizes.values()) or len(sizes) > 8:
        log(f"more than a lent machine brings back (8 files of <= 16 MiB): {sizes}")
    return sizes


def write_summary(out_dir: Path, summary: dict) -> None:
    tmp = out_dir / ".summary.json"
    tmp.write_text(json.dumps(summary, indent=1, default=str))
    os.replace(tmp, out_dir / "summary.json")


def goals(args, summary: dict) -> dict:
    """Each goal of the study against what the written datasets hold (also after an early stop)."""
    ok = {name: v.get("ok", 0) for name, v in summary.get("datasets", {}).items() if isinstance(v, dict)}
    rt = ((summary.get("collect") or {}).get("retest") or {}).get("n", 0)
    fit = (summary.get("fits") or {}).get("big", {})
    energy = ((summary.get("collect") or {}).get("energy") or {}).get("read", 0)
    big, small = ok.get(f"{args.space}-bs{args.batch}.parquet", 0), ok.get(f"{args.space}-bs1.parquet", 0)
    reached = {f"batch {args.batch} archs >= {args.goal_big}": (big, args.goal_big),
               f"batch 1 archs >= {args.goal_small}": (small, args.goal_small),
               f"retest archs >= {args.retest}": (rt, args.retest),
               f"energy archs >= {args.energy_n}": (energy, args.energy_n),
               "big-batch fit +-10 % accuracy >= 0.99": (fit.get("acc10"), 0.99),
               "big-batch fit spearman >= 0.99": (fit.get("spearman"), 0.99)}
    return {k: {"value": v, "reached": (v or 0) >= goal} for k, (v, goal) in reached.items()}


def main(argv=None) -> int:
    args = parse(argv)
    t0 = time.monotonic()
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    work = Path(args.work or tempfile.mkdtemp(prefix="latkit-gpu-"))
    work.mkdir(parents=True, exist_ok=True)
    log = Log(out_dir / "log.txt", t0)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a kill at the limit still packs what is stored
    plan = Plan(args, t0)
    summary = {"argv": sys.argv[1:], "budget_s": args.budget_s, "work": str(work), "cpus": os.cpu_count(),
               "python": sys.version.split()[0], "phases": {}}
    from latkit.collector import Store
    stores = {"big": Store(work / f"{args.space}-bs{args.batch}"), "small": Store(work / f"{args.space}-bs1"),
              "energy": Store(work / f"{args.space}-bs{args.batch}-energy")}

    def phase(name, fn, *a):
        t = time.monotonic()
        try:
            summary[name] = fn(*a)
        except Exception as e:
            summary[name] = {"error": f"{type(e).__name__}: {e}"}
            log(f"{name} failed: {summary[name]['error']}")
        summary["phases"][name] = {"start_s": round(t - t0, 1), "seconds": round(time.monotonic() - t, 1)}
        write_summary(out_dir, summary)

    log(f"GPU study: budget {args.budget_s:.0f} s, work in {work}, outputs in {out_dir}")
    tests = None
    try:
        phase("gpu", gpu_info, work, log)
        phase("collect", collect, args, plan, work, stores, log)
        phase("datasets", pack_datasets, args, out_dir, stores, summary, log)
        # the GPU is free now and the fits need only CPUs: the tests run beside them
        tests = start_tests(args, work, min(args.tests_timeout_s, plan.left() - args.pack_reserve_s))
        phase("fits", fits, args, plan, work, stores, log)
    finally:
        if "datasets" not in summary:  # stopped (SIGTERM) before they were written
            phase("datasets", pack_datasets, args, out_dir, stores, summary, log)
        if tests is not None:
            summary["tests"] = finish_tests(tests, work, log)
        summary["goals"] = goals(args, summary)
        phase("outputs", pack_reports, out_dir, work, stores, log)
        summary["wall_s"] = round(time.monotonic() - t0, 1)
        write_summary(out_dir, summary)
        for g, v in summary["goals"].items():
            log(f"goal {g}: {v['value']} ({'reached' if v['reached'] else 'NOT reached'})")
        log(f"done in {summary['wall_s']} s; {len(list(out_dir.iterdir()))} files in {out_dir}")
    return 0


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=os.environ.get("OUT", "gpu-out"), help="outputs (default $OUT, else gpu-out)")
    p.add_argument("--work", help="working folder for the stores and model files (default: a new temporary one)")
    p.add_argument("--budget-s", type=float, default=500, help="hard limit on this script's wall time (default 500)")
    p.add_argument("--smoke", action="store_true", help="the same plumbing on a CPU in about a minute (nb201)")
    p.add_argument("--space", default="ofa")
    p.add_argument("--accelerator", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--batch", type=int, default=64, help="the big batch size (the other is 1)")
    p.add_argument("--goal-big", type=int, default=1000, help="archs to time at the big batch")
    p.add_argument("--goal-small", type=int, default=300, help="archs to time at batch 1 (interleaved)")
    p.add_argument("--retest", type=int, default=100, help="big-batch archs to measure again")
    p.add_argument("--energy-n", type=int, default=30, help="of those, archs measured twice more with energy on "
                                                             "(~1.5 s more each on NVML; 0: none)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--min-time", type=float, default=0.05, help="minimum timed seconds per model")
    p.add_argument("--max-time", type=float, default=0.3, help="cap on timed seconds once the minimums are met")
    p.add_argument("--warmup-time", type=float, default=0.02, help="minimum warmup seconds (after the agent's own "
                                                                     "first runs and graph capture)")
    p.add_argument("--fit-budget", type=int, default=500)
    p.add_argument("--fit-budget-small", type=int, default=150)
    p.add_argument("--fit-model", default="auto", help="predictor fit --model (default auto)")
    p.add_argument("--fit-reserve-s", type=float, default=60, help="seconds kept for the fits")
    p.add_argument("--pack-reserve-s", type=float, default=20, help="seconds kept for writing the outputs")
    p.add_argument("--export-workers", type=int, default=max(1, (os.cpu_count() or 2) - 1))
    p.add_argument("--export-ahead", type=int, default=256, help="exports at most this far ahead of the device "
                                                                  "(~20 MB of disk each)")
    p.add_argument("--job-timeout-s", type=float, default=60)
    p.add_argument("--tests", default="tests/test_gpu.py", help="pytest arguments for phase (b)")
    p.add_argument("--tests-timeout-s", type=float, default=150)
    p.add_argument("--lease", help="the device lease file (default: the machine's)")
    args = p.parse_args(argv)
    if args.smoke:
        given = {a.lstrip("-").split("=")[0].replace("-", "_") for a in (argv if argv is not None else sys.argv[1:])}
        for k, v in SMOKE.items():
            if k not in given:
                setattr(args, k, v)
    if args.batch < 2 or args.goal_big < 1 or args.goal_small < 0 or args.retest < 0 or args.energy_n < 0:
        p.error("--batch must be >= 2 (batch 1 is the other dataset); goals, --retest and --energy-n >= 0")
    return args


if __name__ == "__main__":
    sys.exit(main())
