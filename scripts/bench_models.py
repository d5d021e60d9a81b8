"""Test-retest of latkit's timing protocol on real networks (the model zoo), beside the usual peers.

A sibling of scripts/bench_measure.py (NB201 cells, two runtimes, one table): this one times files, not
archs, so it serves every runtime and any set (`--set zoo`, `--set nb201`), adds an A/A check and keeps
the samples for scripts/replay_protocols.py; bench_measure.py's JSON and README table stay as they are.

For each runtime (`--runtimes`, default onnxruntime) and set:
  - the files: every zoo model exported to the runtime's format (collector/zoo.py; failures recorded), or
    N NB201 cells sampled uniformly (seed 0);
  - the A/A pairs: a few of those files (`--aa`) once more under a second name: the same network, a byte of
    metadata apart (an ONNX doc_string, a .pt2 extra file, bytes after a TFLite flatbuffer), so the store
    sees two models. Timed in the same run as everything else, their difference is the host's own noise at
    that time per model: the floor any protocol can reach;
  - pass 1 and pass 2 of latkit (`collect` on `local`, default settings or `--settings KEY=VALUE,...`),
    each followed by the peer, torch.utils.benchmark's `Timer.blocked_autorange` around an ONNX Runtime
    session / the .pt2's module / a TFLite interpreter (1 thread, its median), given the seconds per model
    latkit's first pass took; and for ONNX Runtime its own timing (session profiling, `model_run`
    durations, their median) for as long. Passes alternate so drift of the host hits all timers alike.

For each timer it reports Spearman's rho between the passes, the median, p90 and max |b - a| / a over the
models (A/A twins excluded), seconds per model, the A/A differences, and the 1-min load average at the
start and end of every pass (`os.getloadavg()`; the host is shared). Everything goes to a JSON file that
README tables are rendered from (scripts/render_readme.py); `--keep DIR` keeps latkit's datasets (every
sample, round medians and round times) for scripts/replay_protocols.py.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from latkit.collector import Settings, probe
from latkit.collector.api import collect_models, space_artifacts
from latkit.collector.job import Artifact
from latkit.collector.retest import compare
from latkit.collector.store import Store

FORMAT = {"onnxruntime": "onnx", "torch": "pt2", "tflite": "tflite"}
STATS = ("latency_ms", "median_ms", "p10_ms", "mean_ms", "min_ms", "mode_ms")
AA_DEFAULT = ("mobilenet_v3_small", "efficientnet_b0", "resnet18", "resnet50")
AA_NB201 = 4  # A/A twins among NB201 cells: the first N of the sample


def load_now() -> float:
    return os.getloadavg()[0]


# ---------------------------------------------------------------- the files


def twin(art: Artifact, folder: Path) -> Artifact:
    """The same network as `art` under another name and hash (a few bytes of metadata apart)."""
    fmt, out = art.format, folder / f"{art.arch.replace('/', '_')}~aa{art.path.suffix}"
    if fmt == "onnx":
        import onnx
        m = onnx.load(str(art.path))
        m.doc_string = (m.doc_string or "") + " latkit A/A twin"
        onnx.save(m, str(out))
    elif fmt == "pt2":
        import torch
        ep = torch.export.load(str(art.path))
        torch.export.save(ep, str(out), extra_files={"latkit_aa_twin": "1"})
    elif fmt == "tflite":  # a flatbuffer is read from its root offset: bytes after it are never looked at
        out.write_bytes(art.path.read_bytes() + b"latkit-aa-twin\0\0")
    else:
        raise SystemExit(f"no A/A twin for format {fmt}")
    return Artifact.from_file(out, space=art.space, arch=f"{art.arch}~aa", inputs=art.inputs)


def zoo_files(runtime: str, names, folder: Path) -> tuple:
    from latkit.collector import zoo
    done, failed = zoo.export_all(names, FORMAT[runtime])
    return [done[n] for n in names if n in done], failed


def nb201_files(runtime: str, n: int) -> list:
    from latkit.collector.samplers import sample
    from latkit.collector.spaces import get_space
    archs = sample(get_space("nb201"), n, "uniform", 0)
    return space_artifacts("nb201", archs, runtime)


# ---------------------------------------------------------------- timers


def latkit_pass(arts, runtime, settings, out, reference=False, **kwargs) -> dict:
    """One `collect` of every file on `local`: wall seconds per model, load, {arch: row}; with `reference`, the
    reference's checks as collect makes them by default (their time counted in the seconds per model) and the
    drift it saw. Other keywords go to collect (`reference_every_s`)."""
    l0, t0 = load_now(), time.perf_counter()
    report = collect_models(arts, ["local"], runtime, settings, out=out, progress=False,
                            reference=reference, **kwargs)
    wall = time.perf_counter() - t0
    if not report.ok:
        raise SystemExit(f"latkit pass failed: {report.devices[0].message}")
    rows = {r["arch"]: r for r in Store(out).read().to_pylist() if r["status"] == "ok"}
    checks = report.devices[0].checks if reference else []
    return {"seconds_per_model": wall / len(arts), "load_1min": [l0, load_now()], "rows": rows,
            "reference": [[c.a_ms, c.b_ms] for c in checks], "drift": report.devices[0].drift() if reference else None}


def aa_diffs(passes, names) -> list:
    """|twin - original| / original for each network of `names` timed with its twin, in every pass ({arch: value})."""
    return [abs(p[f"{n}~aa"] - p[n]) / p[n] for p in passes for n in names if n in p and f"{n}~aa" in p]


def reference_level(checks) -> float:
    """A pass's reference level: the median over its checks [a_ms, b_ms] of the twins' mean."""
    return float(np.median([(a + b) / 2 for a, b in checks]))


def reference_figures(pa: dict, pb: dict) -> dict:
    """How far the reference moved between the passes (the median of each pass's checks) beside its A/A floor."""
    level = [reference_level(p["reference"]) for p in (pa, pb)]
    floor = [abs(b - a) / a for p in (pa, pb) for a, b in p["reference"]]
    return {"shift": level[1] / level[0] - 1, "ms": level, "aa_floor": float(np.median(floor)),
            "checks": [len(pa["reference"]), len(pb["reference"])]}


def _runner(art: Artifact, runtime: str, profile_dir=None):
    """(callable running the model once, its load seconds, session) for the peers, 1 thread."""
    shape = art.inputs[0].shape if art.inputs else None
    t0 = time.perf_counter()
    if runtime == "onnxruntime":
        import onnxruntime as ort
        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads = 1, 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        if profile_dir:
            so.enable_profiling = True
            so.profile_file_prefix = str(Path(profile_dir) / "ort")
        sess = ort.InferenceSession(str(art.path), so, providers=["CPUExecutionProvider"])
        i = sess.get_inputs()[0]
        x = np.random.default_rng(0).standard_normal([d if isinstance(d, int) else 1 for d in i.shape]).astype(
            np.float32)
        feed = {i.name: x}
        return (lambda: sess.run(None, feed)), time.perf_counter() - t0, sess
    if runtime == "torch":
        import torch
        torch.set_num_threads(1)
        m = torch.export.load(str(art.path)).module()
        x = torch.randn(shape)

        def run():
            with torch.inference_mode():
                return m(x)
        return run, time.perf_counter() - t0, m
    if runtime == "tflite":
        from ai_edge_litert.interpreter import Interpreter
        it = Interpreter(model_path=str(art.path), num_threads=1)
        it.allocate_tensors()
        d = it.get_input_details()[0]
        it.set_tensor(d["index"], np.random.default_rng(0).standard_normal(d["shape"]).astype(d["dtype"]))
        return it.invoke, time.perf_counter() - t0, it
    raise SystemExit(runtime)


def peer_pass(arts, runtime, seconds) -> dict:
    """torch.utils.benchmark's blocked_autorange (min_run_time `seconds`) on every file: its median."""
    import torch
    import torch.utils.benchmark as tub
    torch.set_num_threads(1)
    out, l0, t0 = {}, load_now(), time.perf_counter()
    for art in arts:
        run, _, _ = _runner(art, runtime)
        r = tub.Timer("run()", globals={"run": run}, num_threads=1).blocked_autorange(min_run_time=seconds)
        out[art.arch] = r.median * 1e3
    return {"seconds_per_model": (time.perf_counter() - t0) / len(arts), "load_1min": [l0, load_now()],
            "ms": out}


def ort_profile_pass(arts, seconds) -> dict:
    """ONNX Runtime's own timing: profiling on, run for `seconds` (after 3 warmup runs), the median of its
    `model_run` event durations."""
    out, l0, t0 = {}, load_now(), time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for art in arts:
            run, _, sess = _runner(art, "onnxruntime", profile_dir=tmp)
            for _ in range(3):
                run()
            start = time.perf_counter()
            while time.perf_counter() - start < seconds:
                run()
            path = sess.end_profiling()
            events = json.loads(Path(path).read_text())
            durs = [e["dur"] for e in events if e.get("name") == "model_run"][3:]
            out[art.arch] = float(np.median(durs)) / 1e3
            Path(path).unlink()
    return {"seconds_per_model": (time.perf_counter() - t0) / len(arts), "load_1min": [l0, load_now()],
            "ms": out}


def cpu_pass(arts, runtime, seconds, rounds=4, seed=0) -> dict:
    """A proposal's timer (not latkit's agent): every file loaded once, then `rounds` shuffled rounds of
    seconds / rounds each (>= 3 runs, after 1 warmup run), each run timed by the wall clock and by the calling
    thread's CPU time (CLOCK_THREAD_CPUTIME_ID). With 1 runtime thread the model runs in the calling thread,
    so its CPU time leaves out the time the host gave to other processes: what the model costs, unpreempted."""
    import random
    out = {k: {} for k in ("cpu median", "cpu p10", "wall median", "wall p10")}
    l0, t0 = load_now(), time.perf_counter()
    runs = {a.arch: _runner(a, runtime)[0] for a in arts}
    wall, cpu = {a: [] for a in runs}, {a: [] for a in runs}
    rng = random.Random(seed)
    for _ in range(rounds):
        order = list(runs)
        rng.shuffle(order)
        for a in order:
            run = runs[a]
            run()
            start, n = time.perf_counter(), 0
            while n < 3 or time.perf_counter() - start < seconds / rounds:
                c, w = time.thread_time_ns(), time.perf_counter_ns()
                run()
                wall[a].append((time.perf_counter_ns() - w) / 1e6)
                cpu[a].append((time.thread_time_ns() - c) / 1e6)
                n += 1
    for a in runs:
        out["cpu median"][a], out["cpu p10"][a] = float(np.median(cpu[a])), float(np.percentile(cpu[a], 10))
        out["wall median"][a], out["wall p10"][a] = float(np.median(wall[a])), float(np.percentile(wall[a], 10))
    return {"seconds_per_model": (time.perf_counter() - t0) / len(arts), "load_1min": [l0, load_now()],
            "stats": out}


# ---------------------------------------------------------------- figures


def figures(pa: dict, pb: dict, names, aa, stats) -> dict:
    """Pass-vs-pass comparison over `names` and the A/A differences (per pass, twin vs original)."""
    out = {"seconds_per_model": (pa["seconds_per_model"] + pb["seconds_per_model"]) / 2,
           "load_1min": [pa["load_1min"], pb["load_1min"]], "statistics": {}, "aa": {}}
    for stat in stats:
        if "rows" in pa:
            get, has = (lambda p, n: p["rows"][n][stat]), (lambda p: p["rows"])
        elif "stats" in pa:
            get, has = (lambda p, n: p["stats"][stat][n]), (lambda p: p["stats"][stat])
        else:
            get, has = (lambda p, n: p["ms"][n]), (lambda p: p["ms"])
        common = [n for n in names if all(n in has(p) for p in (pa, pb))]
        out["statistics"][stat] = compare([get(pa, n) for n in common], [get(pb, n) for n in common])
        out["n"] = len(common)
        diffs = aa_diffs([{n: get(p, n) for n in has(p)} for p in (pa, pb)], aa)
        if diffs:
            out["aa"][stat] = {"median_rel_diff": float(np.median(diffs)), "max_rel_diff": float(np.max(diffs)),
                               "n": len(diffs)}
    return out


def latkit_extras(pa, pb, names) -> dict:
    rows = [p["rows"][n] for p in (pa, pb) for n in names if n in p["rows"]]
    return {"stopped_by": {k: float(np.mean([r["stopped_by"] == k for r in rows]))
                           for k in sorted({r["stopped_by"] for r in rows})},
            "load_ms_median": float(np.median([r["load_ms"] for r in rows])),
            "latency_ms_range": [float(min(r["latency_ms"] for r in rows)), float(max(r["latency_ms"] for r in rows))],
            "samples_median": float(np.median([len(r["samples_ms"]) for r in rows]))}


def parse_settings(text: str) -> Settings:
    """`KEY=VALUE,...` over latkit's defaults (numbers as numbers)."""
    kw = {}
    for part in filter(None, (text or "").split(",")):
        k, _, v = part.partition("=")
        kw[k.strip()] = json.loads(v)
    return Settings(**kw)


def cpu_set(label, runtime, arts, aa, seconds, keep, console) -> dict:
    """Only the thread-CPU-time timer (two passes at `seconds` per model), A/A twins included."""
    folder = Path(keep) / "twins" / f"{label}-{runtime}"
    folder.mkdir(parents=True, exist_ok=True)
    files = arts + [twin(a, folder) for a in arts if a.arch in aa]
    runs = []
    for k in range(2):
        console.print(f"{label} {runtime}: thread CPU time pass {k + 1} ({seconds:.2f} s / model) ...")
        runs.append(cpu_pass(files, runtime, seconds, seed=k))
    return figures(runs[0], runs[1], [a.arch for a in arts], aa,
                   ("cpu median", "cpu p10", "wall median", "wall p10"))


def run_set(label, runtime, arts, aa, settings, passes, keep, peer, console, reference=False) -> dict:
    names = [a.arch for a in arts]
    folder = Path(keep) / "twins" / f"{label}-{runtime}"
    folder.mkdir(parents=True, exist_ok=True)
    twins = [twin(a, folder) for a in arts if a.arch in aa]
    files = arts + twins
    res, runs = {"models": names, "aa": [t.arch[:-3] for t in twins], "passes": passes}, {}
    for k in range(passes):
        out = Path(keep) / f"{label}-{runtime}-{k + 1}"
        if out.exists():
            shutil.rmtree(out)
        console.print(f"{label} {runtime}: latkit pass {k + 1} ({len(files)} files) ...")
        runs[("latkit", k)] = latkit_pass(files, runtime, settings, str(out), reference)
        budget = runs[("latkit", 0)]["seconds_per_model"]
        if peer:
            console.print(f"{label} {runtime}: torch.utils.benchmark pass {k + 1} ({0.9 * budget:.2f} s / model) ...")
            runs[("peer", k)] = peer_pass(files, runtime, 0.9 * budget)
            if runtime == "onnxruntime":
                console.print(f"{label} {runtime}: ONNX Runtime profiling pass {k + 1} ...")
                runs[("ort", k)] = ort_profile_pass(files, 0.9 * budget)
    timers = {"latkit": ("latkit", STATS), "torch.utils.benchmark": ("peer", ("median",)),
              "onnxruntime profiling": ("ort", ("median",))}
    res["timers"] = {}
    for name, (key, stats) in timers.items():
        if (key, 1) in runs:
            res["timers"][name] = figures(runs[(key, 0)], runs[(key, 1)], names, res["aa"], stats)
    if ("latkit", 1) in runs:
        res["timers"]["latkit"].update(latkit_extras(runs[("latkit", 0)], runs[("latkit", 1)], names))
        if reference:
            res["timers"]["latkit"]["reference"] = reference_figures(runs[("latkit", 0)], runs[("latkit", 1)])
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--set", action="append", choices=("zoo", "nb201"), help="model sets (default: zoo)")
    ap.add_argument("--models", help="zoo names, comma-separated (default: the whole zoo)")
    ap.add_argument("--nb201", type=int, default=40, help="NB201 cells for --set nb201 (default 40)")
    ap.add_argument("--runtimes", default="onnxruntime", help="comma-separated: onnxruntime, torch, tflite")
    ap.add_argument("--aa", help=f"zoo models timed twice as an A/A pair (default {','.join(AA_DEFAULT)})")
    ap.add_argument("--settings", default="", help="KEY=VALUE,... over latkit's default Settings (e.g. "
                    "rounds=8,repeats_max_s=0.5 to record samples for replay_protocols.py)")
    ap.add_argument("--passes", type=int, default=2)
    ap.add_argument("--no-peer", action="store_true", help="latkit's passes only (recording for replay)")
    ap.add_argument("--reference", action="store_true", help="latkit's passes time the reference as collect does by "
                    "default (off: the passes time the files only); reports how far it moved between the passes")
    ap.add_argument("--cpu-timer", type=float, metavar="SECONDS", help="instead of latkit's passes: two passes of "
                    "the thread-CPU-time timer (cpu_pass, a proposal) at SECONDS per model, added to the run TAG")
    ap.add_argument("--json", default="scripts/bench_models.json", help="where to write the figures (merged "
                    "into an existing file by set, runtime and settings)")
    ap.add_argument("--tag", default="default", help="name of this run in the JSON (default: default)")
    ap.add_argument("--keep", metavar="DIR", help="keep latkit's datasets in DIR (SET-RUNTIME-PASS); default: "
                    "a temporary directory, removed")
    args = ap.parse_args()
    from rich.console import Console
    console = Console(width=None if sys.stdout.isatty() else 130)
    settings = parse_settings(args.settings)
    from latkit.collector import zoo
    names = args.models.split(",") if args.models else list(zoo.ZOO)
    aa = args.aa.split(",") if args.aa else list(AA_DEFAULT)
    p = probe("local")
    path = Path(args.json)
    res = json.loads(path.read_text()) if path.exists() else {}
    res.update({"machine": f"{p['cpu_model']}, {p['cpu_count']} CPUs, {p['memory_mb']} MB, Python {p['python']}",
                "runtimes": {k: v["version"] for k, v in p["runtimes"].items()},
                "torchvision": zoo.torchvision_version(), "date": time.strftime("%Y-%m-%d")})
    res.setdefault("exports", {})
    res.setdefault("runs", {})
    tmp = tempfile.mkdtemp(prefix="bench-models-")
    keep = args.keep or tmp
    try:
        for runtime in args.runtimes.split(","):
            for label in args.set or ["zoo"]:
                if label == "zoo":
                    t0 = time.perf_counter()
                    arts, failed = zoo_files(runtime, names, Path(keep))
                    res["exports"][FORMAT[runtime]] = {"ok": [a.arch for a in arts], "failed": failed,
                                                       "seconds": time.perf_counter() - t0}
                    pair = [n for n in aa if n in {a.arch for a in arts}]
                else:
                    arts = nb201_files(runtime, args.nb201)
                    pair = [a.arch for a in arts[:AA_NB201]]
                if args.cpu_timer:
                    f = cpu_set(label, runtime, arts, pair, args.cpu_timer, keep, console)
                    r = res["runs"][f"{args.tag} {label} {runtime}"]
                    r["timers"][f"thread CPU time {args.cpu_timer:g} s (proposal)"] = f
                else:
                    r = run_set(label, runtime, arts, pair, settings, args.passes, keep, not args.no_peer, console,
                                args.reference)
                    r["settings"] = json.loads(settings.canonical())
                res["runs"][f"{args.tag} {label} {runtime}"] = r
                path.write_text(json.dumps(res, indent=1))
                show(console, f"{args.tag} {label} {runtime}", r)
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    console.print(f"wrote {path}")


def show(console, title, r):
    from rich.table import Table
    t = Table("timer", "statistic", "Spearman", "median |diff|", "max |diff|", "A/A median", "A/A max", "s / model",
              "1-min load (start-end per pass)", title=title)
    for name, f in r["timers"].items():
        for stat, c in f["statistics"].items():
            a = f["aa"].get(stat, {})
            t.add_row(name, stat, f"{c['spearman']:.4f}", f"{c['median_rel_diff'] * 100:.2f} %",
                      f"{c['max_rel_diff'] * 100:.1f} %",
                      f"{a['median_rel_diff'] * 100:.2f} %" if a else "-",
                      f"{a['max_rel_diff'] * 100:.1f} %" if a else "-", f"{f['seconds_per_model']:.2f}",
                      " / ".join(f"{x:.1f}-{y:.1f}" for x, y in f["load_1min"]))
    console.print(t)


if __name__ == "__main__":
    main()
