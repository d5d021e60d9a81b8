"""Predictor benchmark on the public HELP tables shipped in datasets/help, JSON out for the README.

1. transfer: every few-shot task of tasks.json (each task with published numbers in published.json must be
   there), same defaults for all (20 target samples chosen by latkit's own sampler, <= 900 archs per
   source, 3 seeds). Scored on every arch the targets have except the 20 the model was fitted on. The
   published NASFLAT / MultiPredict / HELP numbers are read from published.json (with their papers).
2. fit: the ESM pipeline (budget 500, model auto) on a few HELP devices, and (budget 120) on latkit's own
   local-cpu-nb201-fbnet dataset; scored on every arch it did not choose.
3. live: `latkit predictor build` (nb201 on `local`, default timing settings, 20 held-out + 4 rounds of 10)
   and `latkit predictor adapt --n 20` (nb201 on `local`), each a fresh CLI process with an empty dataset and
   export cache: the build loop's own time per round (fit, score, choose) beside the seconds it spent
   measuring that round, and adapt's wall time end to end.
4. predict: archs per second predicting all 15,625 NB201 archs, per model (fitted on 500 archs; encodings
   cached by a first pass, as in a search that predicts the same space again and again; best of 3 passes).

Sections run are written into --json (default scripts/bench_predictor.json); sections skipped keep what
the file had. scripts/render_readme.py renders the README's tables from it.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import sklearn
from rich.console import Console
from rich.table import Table

from latkit.collector import probe
from latkit.collector.dataset import HELP_DIR
from latkit.collector.spaces import get_space
from latkit.predictor.data import LatencyTable
from latkit.predictor.esm import fit
from latkit.predictor.models import MODELS, make_model
from latkit.predictor.transfer import transfer

ROOT = Path(__file__).resolve().parents[1]
FIT_RUNS = [("help", "nb201", d, 500) for d in ("titan_rtx_256", "gold_6226", "raspi4", "pixel3")] + \
           [("help", "fbnet", d, 500) for d in ("1080ti_32", "raspi4", "pixel3")] + \
           [("own", "nb201", "local", 120), ("own", "fbnet", "local", 120)]
DATA = {"help": lambda space: HELP_DIR / f"{space}_latency.parquet",
        "own": lambda space: ROOT / "datasets" / "local-cpu-nb201-fbnet"}


def machine() -> str:
    import lightgbm
    import torch
    p = probe("local")
    return (f"{p['cpu_model']}, {len(os.sched_getaffinity(0))} CPUs, {p['memory_mb']} MB, Python {p['python']}, "
            f"scikit-learn {sklearn.__version__}, LightGBM {lightgbm.__version__}, torch {torch.__version__}")


def run_transfer(help_dir: Path, seeds: int, console, only=(), before=None) -> dict:
    """Every task, or only those named in `only` ("fbnet 3"); the others keep their results from `before`."""
    tasks = json.loads((help_dir / "tasks.json").read_text())
    published = json.loads((help_dir / "published.json").read_text())["tasks"]
    missing = [k for k in published if k.split()[1] not in tasks.get(k.split()[0], {})]
    if missing:
        sys.exit(f"published.json has task(s) {', '.join(missing)} that tasks.json lacks; add their devices there")
    out = dict((before or {}).get("tasks", {})) if only else {}
    table = Table("task", "latkit ρ", "NASFLAT", "MultiPredict", "HELP", "archs scored", "seconds")
    for space, by_id in tasks.items():
        data = LatencyTable(help_dir / f"{space}_latency.parquet", space)
        for tid, task in by_id.items():
            key = f"{space} {tid}"
            if only and key not in only:
                continue
            r = transfer(data, space, task["source"], task["target"], seeds=seeds)
            out[key] = r
            paper = published.get(key, {})
            table.add_row(key, f"{r['mean_spearman']:.3f} ± {r['mean_spearman_std']:.3f}",
                          *(f"{paper[m]:.3f}" if m in paper else "-" for m in ("NASFLAT", "MultiPredict", "HELP")),
                          str(min(t["n_test"] for t in r["per_target"].values())), f"{r['seconds']:.0f}")
            console.print(f"{key}: " + ", ".join(f"{d} {m['spearman']:.3f}" for d, m in r["per_target"].items()))
    console.print(table)
    order = [f"{space} {tid}" for space, by_id in tasks.items() for tid in by_id]  # tasks.json's, also after --tasks
    return {"seeds": seeds, "target_samples": 20, "source_samples": 900,
            "tasks": {k: out[k] for k in order if k in out}}


def run_fit(console) -> dict:
    out = {}
    table = Table("data", "space", "device", "model", "n_train", "spearman", "kendall", "mape %", "acc5", "acc10",
                  "seconds")
    for data, space, dev, budget in FIT_RUNS:
        _, r, _ = fit(LatencyTable(DATA[data](space), space), space, dev, budget=budget)
        out[f"{data} {space} {dev}"] = dict({k: v for k, v in r.items() if k != "rounds"}, budget=budget)
        table.add_row(data, space, dev, r["model"], str(r["n_train"]), f"{r['spearman']:.3f}", f"{r['kendall']:.3f}",
                      f"{r['mape']:.1f}", f"{r['acc5']:.3f}", f"{r['acc10']:.3f}", f"{r['seconds']:.0f}")
    console.print(table)
    return {"runs": out}


def _timed(f, *args) -> float:
    t0 = time.perf_counter()
    f(*args)
    return time.perf_counter() - t0


LIVE_GOALS = {"fit_share": 0.10, "adapt_s": 120}  # issue 15: refit < 10 % of a round's measuring; adapt < 2 min


def _cli(*args, env) -> tuple:
    """(seconds, stdout) of one `latkit predictor` process."""
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "latkit.collector.cli", "predictor", *args], capture_output=True,
                       text=True, env=env)
    if r.returncode:
        sys.exit(f"latkit predictor {args[0]} failed: {r.stderr.strip()}")
    return time.perf_counter() - t0, r.stdout


def run_live(console) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, LATKIT_CACHE=str(Path(tmp) / "exports"))
        build_args = ["--space", "nb201", "--device", "local", "--target-acc", "0.95", "--max-archs", "60",
                      "--heldout", "20", "--batch", "10"]
        _cli("build", *build_args, "--data", f"{tmp}/build", "--out", f"{tmp}/b.latkit-model", env=env)
        b = json.loads((Path(tmp) / "b-report" / "build.json").read_text())
        adapt_s, text = _cli("adapt", "--device", "local", "--space", "nb201", "--n", "20", "--data", f"{tmp}/adapt",
                             "--out", f"{tmp}/a.latkit-model", env=env)
    rounds = [{k: h[k] for k in ("round", "n_measured", "measure_s", "fit_s", "acc10", "spearman")}
              for h in b["rounds"]]
    share = max(h["fit_s"] / h["measure_s"] for h in rounds[1:])  # round 0 also chooses the model, once
    expected = re.search(r"expected spearman ([0-9.]+), ±10 % ([0-9]+) %", text)
    table = Table("round", "archs measured", "measuring s", "fitting s", "share", "±10 %", "spearman")
    for h in rounds:
        table.add_row(str(h["round"]), str(h["n_measured"]), f"{h['measure_s']:.1f}", f"{h['fit_s']:.2f}",
                      f"{h['fit_s'] / h['measure_s'] * 100:.1f} %", f"{h['acc10']:.3f}", f"{h['spearman']:.3f}")
    console.print(table)
    console.print(f"adapt --n 20: {adapt_s:.0f} s end to end; expected spearman {expected[1]}")
    return {"build": {"args": " ".join(build_args), "rounds": rounds, "fit_share_max": share, "model": b["model"],
                      "acc10": b["acc10"], "spearman": b["spearman"], "measure_s": b["measure_s"],
                      "fit_s": b["fit_s"]},
            "adapt": {"n": 20, "seconds": adapt_s, "cv_spearman": float(expected[1]),
                      "cv_acc10": float(expected[2]) / 100},
            "goals": LIVE_GOALS}


def run_predict(console) -> dict:
    data = LatencyTable(HELP_DIR / "nb201_latency.parquet", "nb201")
    train = data.archs("raspi4")[::31][:500]
    everything = get_space("nb201").enumerate()
    out = {}
    for name in MODELS:
        model = make_model(name, "nb201", n_jobs=-1).fit(train, data.latency("raspi4", train))
        model.predict(everything)  # fills the encoding caches
        seconds = min(_timed(model.predict, everything) for _ in range(3))  # the least disturbed of 3 passes
        out[name] = {"archs": len(everything), "seconds": seconds, "archs_per_second": len(everything) / seconds}
        console.print(f"predict {name}: {len(everything) / seconds:,.0f} archs/s")
    return {"models": out}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--help-dir", default=str(HELP_DIR))
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--sections", default="transfer,fit,live,predict",
                    help="comma-separated: transfer, fit, live, predict")
    ap.add_argument("--tasks", default="", help='transfer: only these tasks, comma-separated ("fbnet 3,fbnet 4")')
    ap.add_argument("--json", default=str(ROOT / "scripts" / "bench_predictor.json"))
    args = ap.parse_args()
    sections = [s for s in args.sections.split(",") if s]
    unknown = set(sections) - {"transfer", "fit", "live", "predict"}
    if unknown:
        ap.error(f"unknown section(s) {', '.join(sorted(unknown))}; choose from transfer, fit, live, predict")
    console = Console(width=None if sys.stdout.isatty() else 150)
    path = Path(args.json)
    out = json.loads(path.read_text()) if path.exists() else {}
    where = {"machine": machine(), "date": time.strftime("%Y-%m-%d")}
    console.print(where["machine"])
    runners = {"transfer": lambda: run_transfer(Path(args.help_dir), args.seeds, console,
                                                    [t.strip() for t in args.tasks.split(",") if t.strip()],
                                                    out.get("transfer")),
               "fit": lambda: run_fit(console), "live": lambda: run_live(console),
               "predict": lambda: run_predict(console)}
    for name in sections:
        t0, load = time.time(), os.getloadavg()[0]
        out[name] = dict(runners[name](), **where)
        # other work on the machine slows every timing here: its load is kept beside them
        out[name].update(seconds=time.time() - t0, load_1min=[load, os.getloadavg()[0]])
        path.write_text(json.dumps(out, indent=1) + "\n")  # a section at a time: a crash keeps the rest
        console.print(f"{name}: {out[name]['seconds']:.0f} s")


if __name__ == "__main__":
    main()
