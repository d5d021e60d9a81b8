"""Graph latency models (issue 25) on latkit's own measured graphs, held out by family, JSON out.

For every dataset given, the ok rows of `--device` whose ONNX file is found (export cache, `--models`, or
re-exported from the recipe with --export-missing) become graphs (predictor/graphdata.py). Then, per split:
- family:<F>: train on every other family, score on all of F (an unseen network family);
- resolution: train on the lower input sides of each family, score on the higher ones (see `high_res`);
- random: a random 20 % held out (in distribution, for reference);
each graph model (kernels: per-kernel additive; gnn: graph network) beside the FLOPs-linear baseline:
Spearman, Kendall, MAPE, +-5 % / +-10 % accuracy, the share of test graphs inside the model's own
+-2 std band (is the stated uncertainty honest), and fit seconds. `--retest DIR` adds the noise-limited
ceiling: the same metrics of a dataset's retest side table against its rows (a perfect predictor of the
first measurement can do no better on the second). `speed`: encoding and predicting one ~200-node graph,
best and median of 20, per model. The machine's load average is recorded beside (a shared 2-core VM).

    python scripts/bench_graphs.py --data latkit-data/dev datasets/local-cpu-nb201-fbnet --device local \
        --json scripts/bench_graphs.json
`markdown(result)` renders the held-out tables (for scripts/render_readme.py).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

from latkit.predictor.graphdata import graph_rows, make
from latkit.predictor.graphmodel import as_graph
from latkit.predictor.metrics import report

ROOT = Path(__file__).resolve().parents[1]


def high_res(t) -> np.ndarray:
    """Test mask of the resolution split: per family, input sides above the family's lowest-side majority
    (nb201 / fbnet: > 32; ofa: >= 192)."""
    out = np.zeros(len(t), bool)
    for fam, g in t.groupby("family"):
        res = g.resolution.to_numpy()
        cut = 192 if fam == "ofa" else np.min(res)
        out[g.index.to_numpy()] = res >= cut if fam == "ofa" else res > cut
    return out


def score(kind, params, Xtr, ytr, Xte, yte) -> dict:
    t0 = time.perf_counter()
    m = make(kind, 0, **params).fit(Xtr, ytr)
    fit_s = time.perf_counter() - t0
    mean, std = m.predict(Xte, return_std=True)
    r = report(mean, yte)
    r["in_2std"] = float(np.mean(np.abs(mean - yte) <= 2 * std + 1e-12))
    r["fit_s"] = fit_s
    return r


def speed(models: dict, path: str, n: int = 20) -> dict:
    """ms to encode one graph from its file and to predict it (encoding excluded), best and median of n."""
    from latkit.predictor.graphs import encode
    enc, cpu = [], []
    for _ in range(n):
        t, c = time.perf_counter(), time.process_time()
        g = encode(path)
        enc.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    out = {"file_onnx_nodes": g.n_onnx_nodes, "kernels": len(g), "encode_ms_best": 1e3 * min(enc),
           "encode_ms_median": 1e3 * float(np.median(enc)), "encode_cpu_ms_best": 1e3 * min(cpu)}
    for name, m in models.items():
        m.predict([g], return_std=True)
        ts, cpu = [], []
        for _ in range(n):
            t, c = time.perf_counter(), time.process_time()
            m.predict([g], return_std=True)
            ts.append(time.perf_counter() - t)
            cpu.append(time.process_time() - c)
        out[f"{name}_predict_ms_best"] = 1e3 * min(ts)
        out[f"{name}_predict_cpu_ms_best"] = 1e3 * min(cpu)
        out[f"{name}_predict_ms_median"] = 1e3 * float(np.median(ts))
    return out


def retest_ceiling(data_dir: str) -> dict:
    """Metrics of every retest side table's latencies (`<dataset>/_retest/<stamp>/`, `latkit data retest`)
    as predictions of the rows they measured again: what measurement noise leaves to any predictor."""
    from latkit.collector.store import Store
    sides = sorted(p for p in (Path(data_dir) / "_retest").glob("*") if (p / "data").is_dir())
    if not sides:
        return {}
    import pandas as pd
    again = pd.concat([Store(str(p)).read(columns=["key", "latency_ms"], filter=None).to_pandas() for p in sides])
    rows = Store(data_dir).read(columns=["key", "latency_ms"]).to_pandas()
    m = again.merge(rows, on="key", suffixes=("_retest", ""))
    r = report(m.latency_ms_retest.to_numpy(), m.latency_ms.to_numpy())
    r["pairs"] = len(m)
    return r


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", nargs="+", required=True)
    ap.add_argument("--device", default="local")
    ap.add_argument("--models", nargs="*", default=[])
    ap.add_argument("--export-missing", action="store_true")
    ap.add_argument("--column", default="latency_ms", help="statistic read as latency (p10_ms: rows of agent 0.1 "
                                                            "beside today's CPU rows, whose latency_ms is p10)")
    ap.add_argument("--kinds", default="kernels,gnn")
    ap.add_argument("--families", nargs="*", default=None, help="families to hold out (default: each with >= 20)")
    ap.add_argument("--retest", nargs="*", default=[])
    ap.add_argument("--quick", action="store_true", help="smaller models (a smoke run)")
    ap.add_argument("--json", default=str(ROOT / "scripts" / "bench_graphs.json"))
    args = ap.parse_args()
    import pandas as pd
    load_start = os.getloadavg()
    t = pd.concat([graph_rows(d, args.device, models=args.models, export_missing=args.export_missing,
                              column=args.column)
                   for d in args.data], ignore_index=True)
    # one graph measured in two datasets: keep the median
    t = t.groupby("model_sha256", as_index=False).agg(
        {"path": "first", "space": "first", "arch": "first", "family": "first", "resolution": "first",
         "latency_ms": "median", "n_rows": "sum"}).reset_index(drop=True)
    X, y = list(t.path), t.latency_ms.to_numpy()
    for p in X:
        as_graph(p)  # encode once (cached)
    params = {"kernels": dict(n_members=3, n_estimators=200 if args.quick else 400),
              "gnn": dict(n_members=2 if args.quick else 3, epochs=40 if args.quick else 120),
              "flops": {}}
    kinds = [k for k in args.kinds.split(",") if k] + ["flops"]
    splits = {}
    fams = t.family.value_counts()
    for fam in args.families or [f for f, c in fams.items() if c >= 20]:
        splits[f"family:{fam}"] = (t.family == fam).to_numpy()
    if (high := high_res(t)).any() and (~high).any():
        splits["resolution"] = high
    splits["random"] = np.random.default_rng(0).random(len(t)) < 0.2
    result = {"device": args.device, "data": args.data, "column": args.column, "graphs": len(t), "families": fams.to_dict(),
              "resolutions": {f: sorted(set(int(r) for r in g.resolution)) for f, g in t.groupby("family")},
              "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
              "load_avg_start": load_start, "splits": {}}
    for name, test in splits.items():
        tr, te = np.flatnonzero(~test), np.flatnonzero(test)
        row = {"train": len(tr), "test": len(te)}
        for kind in kinds:
            row[kind] = score(kind, params[kind], [X[i] for i in tr], y[tr], [X[i] for i in te], y[te])
            print(name, kind, {k: round(v, 3) for k, v in row[kind].items()}, flush=True)
        result["splits"][name] = row
    if args.retest:
        result["noise_ceiling"] = {d: retest_ceiling(d) for d in args.retest}
    # speed: the file nearest 200 ONNX nodes, models fitted on everything
    near = min(X, key=lambda p: abs(as_graph(p).n_onnx_nodes - 200))
    models = {k: make(k, 0, **params[k]).fit(X, y) for k in kinds}
    result["speed"] = speed(models, near)
    result["load_avg_end"] = os.getloadavg()
    Path(args.json).write_text(json.dumps(result, indent=1))
    print(markdown(result))


def markdown(result: dict) -> str:
    """The held-out tables as Markdown: one row per split and model."""
    lines = [f"{result['graphs']} graphs measured on `{result['device']}` ({', '.join(f'{k} {v}' for k, v in result['families'].items())}); "
             f"load average {result['load_avg_start'][0]:.1f} at the start.", "",
             "| held out | train / test | model | Spearman | ±10 % | ±5 % | MAPE % | in ±2 std | fit s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, row in result["splits"].items():
        for kind in [k for k in row if k not in ("train", "test")]:
            r = row[kind]
            lines.append(f"| {name} | {row['train']} / {row['test']} | {kind} | {r['spearman']:.3f} | "
                         f"{100 * r['acc10']:.0f} % | {100 * r['acc5']:.0f} % | {r['mape']:.1f} | "
                         f"{100 * r['in_2std']:.0f} % | {r['fit_s']:.1f} |")
    s = result.get("speed")
    if s:
        lines += ["", f"Speed ({s['file_onnx_nodes']} ONNX nodes, {s['kernels']} kernels): encode "
                      f"{s['encode_ms_best']:.1f} ms best / {s['encode_ms_median']:.1f} median "
                      f"({s['encode_cpu_ms_best']:.1f} ms of CPU); predict (best wall) " +
                  ", ".join(f"{k.split('_')[0]} {s[k]:.2f} ms" for k in s if k.endswith("_predict_ms_best"))]
    for d, c in (result.get("noise_ceiling") or {}).items():
        if c.get("pairs"):
            lines.append(f"Retest ceiling ({d}, {c['pairs']} pairs): Spearman {c['spearman']:.3f}, "
                         f"±10 % {100 * c['acc10']:.0f} %")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
