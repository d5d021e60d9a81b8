"""Graph latency models (issue 25) on latkit's own measured graphs, held out by family, JSON out.

Two sections, `--cpu` and `--gpu` datasets (each of its own device). For every dataset, the ok rows of
the device whose ONNX file is found (export cache, `--models`, or
re-exported from the recipe with --export-missing) become graphs (predictor/graphdata.py). Then, per split:
- family:<F>: train on every other family, score on all of F (an unseen network family);
- resolution: train on the lower input sides of each family, score on the higher ones (see `high_res`);
- random: a random 20 % held out (in distribution, for reference);
- for each family split, the kernel model also adapted on 10 graphs of the held-out family (`adapt`) and
  scored on its other graphs: a user who measures a few networks of a new family;
each graph model (kernels: per-kernel additive; gnn: graph network) beside the FLOPs-linear baseline:
Spearman, Kendall, MAPE, +-5 % / +-10 % accuracy, the share of test graphs inside the model's own
+-2 std band (is the stated uncertainty honest), and fit seconds. Per dataset a split-half noise ceiling
(each row's statistic on the first half of its samples against the second half). With both sections,
few-shot adaptation CPU -> GPU (pretrained on the CPU graphs, 20 GPU graphs). `--retest DIR` adds the
ceiling: the same metrics of a dataset's retest side table against its rows (a perfect predictor of the
first measurement can do no better on the second). `speed`: one ~200-node file to its prediction with std,
end to end (encode + predict), best and median of 50, per model. The machine's load average is recorded beside (a shared 2-core VM).

    python scripts/bench_graphs.py --cpu datasets/local-cpu-nb201-fbnet --gpu datasets/h200-ofa-bs1 \
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
FEW = 10  # graphs of a held-out family measured for `adapt`


def high_res(t) -> np.ndarray:
    """Test mask of the resolution split: per family, input sides above the family's lowest-side majority
    (nb201 / fbnet: > 32; ofa: >= 192; zoo families, 64-224: >= 176, trained on 64-160)."""
    out = np.zeros(len(t), bool)
    for fam, g in t.groupby("family"):
        res = g.resolution.to_numpy()
        if fam == "ofa" or (g.space == "zoo").all():
            out[g.index.to_numpy()] = res >= (192 if fam == "ofa" else 176)
        else:
            out[g.index.to_numpy()] = res > np.min(res)
    return out


def score(kind, params, Xtr, ytr, Xte, yte, model=None) -> tuple:
    """(metrics of a `kind` model fitted on the training graphs, or of `model` as given, on the test graphs;
    the model)."""
    t0 = time.perf_counter()
    m = model or make(kind, 0, **params).fit(Xtr, ytr)
    fit_s = time.perf_counter() - t0
    mean, std = m.predict(Xte, return_std=True)
    r = report(mean, yte)
    r["in_2std"] = float(np.mean(np.abs(mean - yte) <= 2 * std + 1e-12))
    r["fit_s"] = fit_s
    return r, m


def family_adapted(m, Xte, yte, n: int = FEW) -> dict:
    """A model trained without a family, adapted (`adapt`: its overhead and scale refitted, or a fresh fit
    where that cross-validates better) on n graphs of the family drawn at random, scored on the others: what
    `latkit predictor adapt` gives a user who measured a few networks of a new family."""
    import copy
    pick = np.random.default_rng(0).permutation(len(yte))
    t0 = time.perf_counter()
    adapted = copy.deepcopy(m).adapt([Xte[i] for i in pick[:n]], yte[pick[:n]])
    seconds = time.perf_counter() - t0
    r, _ = score("", {}, None, None, [Xte[i] for i in pick[n:]], yte[pick[n:]], model=adapted)
    r["fit_s"] = seconds
    return r


def speed(models: dict, path: str, n: int = 50) -> dict:
    """ms to predict one file end to end, what `predictor predict --file` does per file: encode it (read,
    shape inference, fusion) and predict it with --std (kernel features included: each round encodes the
    file afresh). Best and median wall time of n, per model; encoding alone beside, and CPU time (a shared
    machine's run queue does not count in it)."""
    from latkit.predictor.graphs import encode
    enc, cpu = [], []
    for _ in range(n):
        t, c = time.perf_counter(), time.process_time()
        g = encode(path, external="shapes")
        enc.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    out = {"file_onnx_nodes": g.n_onnx_nodes, "kernels": len(g), "encode_ms_best": 1e3 * min(enc),
           "encode_ms_median": 1e3 * float(np.median(enc)), "encode_cpu_ms_best": 1e3 * min(cpu)}
    for name, m in models.items():
        m.predict([g], return_std=True)
        ts, cpu, pred = [], [], []
        for _ in range(n):
            t, c = time.perf_counter(), time.process_time()
            g = encode(path, external="shapes")
            e = time.perf_counter()
            m.predict([g], return_std=True)
            ts.append(time.perf_counter() - t)
            cpu.append(time.process_time() - c)
            pred.append(ts[-1] - (e - t))
        out[f"{name}_predict_ms_best"] = 1e3 * min(pred)
        out[f"{name}_predict_ms_median"] = 1e3 * float(np.median(pred))
        out[f"{name}_file_ms_best"] = 1e3 * min(ts)
        out[f"{name}_file_ms_median"] = 1e3 * float(np.median(ts))
        out[f"{name}_file_cpu_ms_best"] = 1e3 * min(cpu)
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


def split_half_ceiling(data_dir: str, device: str, column: str) -> dict:
    """What within-session noise leaves to any predictor: each row's statistic (`column`: p10_ms or
    median_ms / latency_ms as the median) on the first half of its samples as a prediction of the same
    statistic on the second half. Optimistic (a retest in another session also sees drift)."""
    import pyarrow.compute as pc
    from latkit.collector.store import Store
    t = Store(data_dir).read(columns=["samples_ms"], filter=(pc.field("status") == "ok") &
                             (pc.field("device") == device)).to_pandas()
    q = 10 if column == "p10_ms" else 50
    a, b = [], []
    for s in t.samples_ms:
        s = np.asarray(s, np.float64)
        if len(s) >= 10:
            h = len(s) // 2
            a.append(np.percentile(s[:h], q))
            b.append(np.percentile(s[h:], q))
    r = report(np.array(a), np.array(b))
    r["rows"] = len(a)
    return r


def load_section(data, device, args) -> "object":
    import pandas as pd
    t = pd.concat([graph_rows(d, device, models=args.models, export_missing=args.export_missing,
                              column=args.column) for d in data], ignore_index=True)
    # one graph measured in two datasets: keep the median
    t = t.groupby("model_sha256", as_index=False).agg(
        {"path": "first", "space": "first", "arch": "first", "family": "first", "resolution": "first",
         "latency_ms": "median", "n_rows": "sum"}).reset_index(drop=True)
    for p in t.path:
        as_graph(p)  # encode once (cached)
    return t


def distinct(paths) -> int:
    """How many different graphs: kernels (type, attributes, shapes, costs) and edges alike count once (two
    names for one network, or one network exported with other weights, are one graph)."""
    import hashlib
    seen = set()
    for p in paths:
        g = as_graph(p)
        seen.add(hashlib.sha256(g.features().tobytes() + np.asarray(g.edges).tobytes()).hexdigest())
    return len(seen)


def evaluate(t, kinds, params, families=None) -> dict:
    X, y = list(t.path), t.latency_ms.to_numpy()
    splits = {}
    fams = t.family.value_counts()
    for fam in families or [f for f, c in fams.items() if c >= 20]:
        if len(fams) > 1:  # "efficientnet+regnet": trained without either, scored on both
            splits[f"family:{fam}"] = t.family.isin(fam.split("+")).to_numpy()
    if (high := high_res(t)).any() and (~high).any():
        splits["resolution"] = high
    splits["random"] = np.random.default_rng(0).random(len(t)) < 0.2
    out = {"graphs": len(t), "distinct_graphs": distinct(X), "families": fams.to_dict(),
           "resolutions": {f: [int(g.resolution.min()), int(g.resolution.max())] for f, g in t.groupby("family")},
           "splits": {}}
    for name, test in splits.items():
        tr, te = np.flatnonzero(~test), np.flatnonzero(test)
        row = {"train": len(tr), "test": len(te)}
        for kind in kinds:
            Xte = [X[i] for i in te]
            row[kind], m = score(kind, params[kind], [X[i] for i in tr], y[tr], Xte, y[te])
            print(name, kind, {k: round(v, 3) for k, v in row[kind].items()}, flush=True)
            if name.startswith("family:") and kind == "kernels" and len(te) > 2 * FEW:
                row[f"kernels, adapted on {FEW}"] = family_adapted(m, Xte, y[te])
                print(name, "adapted", {k: round(v, 3) for k, v in row[f"kernels, adapted on {FEW}"].items()},
                      flush=True)
        out["splits"][name] = row
    return out


def adapt_eval(src, dst, params, n: int = 20, seeds: int = 3) -> dict:
    """Few-shot to a new device: pretrained on every graph of `src`, adapted with n graphs of `dst`, scored
    on the rest of `dst`; beside a FLOPs line and a kernel model fitted on the n graphs alone."""
    from latkit.predictor.kernels import KernelAdditive
    base = KernelAdditive(**params["kernels"]).fit(list(src.path), src.latency_ms.to_numpy())
    X, y = list(dst.path), dst.latency_ms.to_numpy()
    res = {"n": n, "source_graphs": len(src), "target_graphs": len(dst), "seeds": seeds, "adapted": [],
           "flops": [], "kernels_alone": []}
    import copy
    for seed in range(seeds):
        pick = np.random.default_rng(seed).permutation(len(y))
        tr, te = pick[:n], pick[n:]
        m = copy.deepcopy(base).adapt([X[i] for i in tr], y[tr])
        res["adapted"].append(report(m.predict([X[i] for i in te]), y[te]))
        res["flops"].append(report(make("flops").fit([X[i] for i in tr], y[tr]).predict([X[i] for i in te]), y[te]))
        alone = make("kernels", seed, **params["kernels"]).fit([X[i] for i in tr], y[tr])
        res["kernels_alone"].append(report(alone.predict([X[i] for i in te]), y[te]))
    for k in ("adapted", "flops", "kernels_alone"):
        res[k] = {m: float(np.mean([r[m] for r in res[k]])) for m in res[k][0]}
    print("adapt", {k: res[k] for k in ("adapted", "flops", "kernels_alone")}, flush=True)
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cpu", nargs="*", default=[], help="datasets measured on the CPU device")
    ap.add_argument("--cpu-device", default="local")
    ap.add_argument("--gpu", nargs="*", default=[], help="datasets measured on a GPU")
    ap.add_argument("--gpu-device", default="local")
    ap.add_argument("--models", nargs="*", default=[])
    ap.add_argument("--export-missing", nargs="?", const=True, default="cached",
                    help="export rows without a file from their recipe (default: only those the cache holds)")
    ap.add_argument("--column", default="latency_ms", help="statistic read as latency (p10_ms: rows of agent 0.1 "
                                                            "beside today's CPU rows, whose latency_ms is p10)")
    ap.add_argument("--kinds", default="kernels,gnn")
    ap.add_argument("--families", nargs="*", default=None,
                    help="families to hold out, each or joined by + (efficientnet+regnet: trained without both; "
                         "default: each with >= 20)")
    ap.add_argument("--retest", nargs="*", default=[])
    ap.add_argument("--quick", action="store_true", help="smaller models (a smoke run)")
    ap.add_argument("--json", default=str(ROOT / "scripts" / "bench_graphs.json"))
    args = ap.parse_args()
    params = {"kernels": dict(n_members=3, n_estimators=200 if args.quick else 400),
              "gnn": dict(n_members=2 if args.quick else 3, epochs=40 if args.quick else 120),
              "flops": {}}
    kinds = [k for k in args.kinds.split(",") if k] + ["flops"]
    result = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
              "load_avg_start": os.getloadavg(), "column": args.column, "params": params, "sections": {}}
    tables = {}
    for name, data, device in (("cpu", args.cpu, args.cpu_device), ("gpu", args.gpu, args.gpu_device)):
        if not data:
            continue
        t = tables[name] = load_section(data, device, args)
        sec = evaluate(t, kinds, params, args.families)
        sec.update({"data": data, "device": device,
                    "split_half_ceiling": {d: split_half_ceiling(d, device, args.column) for d in data}})
        result["sections"][name] = sec
    if "cpu" in tables and "gpu" in tables and len(tables["gpu"]) > 30:
        result["adapt_cpu_to_gpu"] = adapt_eval(tables["cpu"], tables["gpu"], params)
    if args.retest:
        result["noise_ceiling"] = {d: retest_ceiling(d) for d in args.retest}
    # speed: the file nearest 200 ONNX nodes, models fitted on the first section
    t = next(iter(tables.values()))
    X, y = list(t.path), t.latency_ms.to_numpy()
    near = min(X, key=lambda p: abs(as_graph(p).n_onnx_nodes - 200))
    # kernels at its defaults (5 members): the model `predictor fit --space onnx` saves
    models = {k: make(k, 0, **({} if k == "kernels" else params[k])).fit(X, y) for k in kinds}
    result["speed"] = speed(models, near)
    result["load_avg_end"] = os.getloadavg()
    Path(args.json).write_text(json.dumps(result, indent=1))
    print(markdown(result))


def markdown(result: dict) -> str:
    """The held-out tables as Markdown: one row per section, split and model."""
    lines = ["| data | held out | train / test | model | Spearman | ±10 % | ±5 % | MAPE % | in ±2 std | fit s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    notes = []
    for sname, sec in result["sections"].items():
        for name, row in sec["splits"].items():
            for kind in [k for k in row if k not in ("train", "test")]:
                r = row[kind]
                lines.append(f"| {sname} | {name} | {row['train']} / {row['test']} | {kind} | {r['spearman']:.3f} | "
                             f"{100 * r['acc10']:.0f} % | {100 * r['acc5']:.0f} % | {r['mape']:.1f} | "
                             f"{100 * r['in_2std']:.0f} % | {r['fit_s']:.1f} |")
        fams = ", ".join(f"{k} {v}" for k, v in sec["families"].items())
        dist = f" ({sec['distinct_graphs']} distinct)" if "distinct_graphs" in sec else ""
        notes.append(f"{sname}: {sec['graphs']} graphs{dist} of `{sec['device']}` from {', '.join(sec['data'])} "
                     f"({fams}).")
        for d, c in sec.get("split_half_ceiling", {}).items():
            notes.append(f"{sname}: split-half noise ceiling of {d} ({c['rows']} rows): Spearman {c['spearman']:.3f}, "
                         f"±10 % {100 * c['acc10']:.0f} %, ±5 % {100 * c['acc5']:.0f} %.")
    a = result.get("adapt_cpu_to_gpu")
    if a:
        notes.append(f"Few-shot CPU -> GPU ({a['n']} target graphs, mean of {a['seeds']} seeds): adapted kernels "
                     f"Spearman {a['adapted']['spearman']:.3f} / ±10 % {100 * a['adapted']['acc10']:.0f} %; FLOPs line "
                     f"{a['flops']['spearman']:.3f} / {100 * a['flops']['acc10']:.0f} %; kernels on the {a['n']} alone "
                     f"{a['kernels_alone']['spearman']:.3f} / {100 * a['kernels_alone']['acc10']:.0f} %.")
    s = result.get("speed")
    if s:
        files = [k[:-len("_file_ms_best")] for k in s if k.endswith("_file_ms_best")]  # end to end (newer runs)
        notes.append(f"Speed ({s['file_onnx_nodes']} ONNX nodes, {s['kernels']} kernels): encode "
                     f"{s['encode_ms_best']:.1f} ms best wall / {s['encode_ms_median']:.1f} median "
                     f"({s['encode_cpu_ms_best']:.1f} ms of CPU); " + (
                         "file to prediction with std (encode + predict, best / median wall) " +
                         ", ".join(f"{k} {s[k + '_file_ms_best']:.1f} / {s[k + '_file_ms_median']:.1f} ms"
                                   for k in files) if files else "predict (best wall) " +
                         ", ".join(f"{k.split('_')[0]} {s[k]:.2f} ms" for k in s if k.endswith("_predict_ms_best"))) +
                     f"; load average {result['load_avg_start'][0]:.1f} at the start, "
                     f"{result['load_avg_end'][0]:.1f} at the end.")
    for d, c in (result.get("noise_ceiling") or {}).items():
        if c.get("pairs"):
            notes.append(f"Retest ceiling ({d}, {c['pairs']} pairs): Spearman {c['spearman']:.3f}, "
                         f"±10 % {100 * c['acc10']:.0f} %")
    return "\n".join(lines + [""] + notes)


if __name__ == "__main__":
    main()
