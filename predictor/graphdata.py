"""Training data for the graph models from what latkit already measures, and the functions the CLI calls.

    table = graph_rows("my-data", device="local")              # one row per measured graph (pandas)
    model, rep = fit_graphs("my-data", "local", kind="kernels")  # `latkit predictor fit --space onnx`
    rows = predict_files(model, ["my.onnx", "folder/"])          # `latkit predictor predict --file ...`
    model, rep = adapt_graphs(model, "my-data", "pi4", ["few/"])  # `latkit predictor adapt --model M --file few/`

A row of a latkit dataset yields a graph when its model file is found: by `model_sha256` in the export
cache (`$LATKIT_CACHE`, ~/.cache/latkit/exports; or the weightless copy every ONNX export leaves in its
`graphs/` folder, which outlives an evicted file) or in `models` folders (files named `<sha256>.onnx`, or any
.onnx there whose content hash matches). Search-space rows whose file is gone (or which were timed in
another format: TorchScript on a GPU) are exported again from their recipe (space, arch, batch, resolution)
when `export_missing` is set (needs torch; "cached": only recipe exports the cache already holds); the re-export is the same network, so the same graph, whatever
its bytes. Rows of one graph on one device and runtime (retests, repeated collections) are merged by their
median latency. `family` groups graphs for held-out evaluation: the space for search-space archs, else the
leading letters of the zoo name or file name (resnet50 -> resnet, efficientnet_b0[width=0.5]@96 ->
efficientnet) or a `families` mapping.
"""
from __future__ import annotations

import glob
import os
import re
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from latkit.collector.errors import Failure, LatkitError

from .graphmodel import GraphSurrogate, as_graph, as_graphs

COLUMNS = ["space", "arch", "model_sha256", "model_format", "device", "runtime", "input_shape", "batch_size",
           "latency_ms"]
MODEL_KINDS = ("kernels", "gnn", "flops")


def _index_models(folders: Sequence) -> dict:
    """sha256 -> path of the .onnx files in `folders` (named by their hash, or hashed here). In a folder only
    regular files count (as `collect --models`): hashing a FIFO would hang, /dev/zero never ends; a file named
    itself must be one."""
    from latkit.collector import validate
    from latkit.collector.job import sha256_file
    out = {}
    for folder in folders:
        if not Path(folder).exists():
            raise LatkitError(f"models path {folder} not found; give the folders or .onnx files that were measured")
        found = [p for p in sorted(Path(folder).rglob("*.onnx")) if p.is_file()] if Path(folder).is_dir() else \
            [validate.readable_file(folder, "ONNX file")]
        for p in found:
            stem = p.name[:-5]
            out[stem if re.fullmatch(r"[0-9a-f]{64}", stem) else sha256_file(p)] = str(p)
    return out


def family_of(space: str, arch: str, families: Optional[dict] = None) -> str:
    if families and arch in families:
        return families[arch]
    if space and space not in ("custom", "zoo"):
        return space  # a search space is one family; zoo archs and files are named by theirs
    m = re.match(r"[A-Za-z]+", Path(str(arch)).name)
    return m.group(0).lower() if m else "other"


def graph_rows(data_dir, device: Optional[str] = None, runtime: Optional[str] = None, models: Sequence = (),
               cache=None, export_missing: bool = False, families: Optional[dict] = None, progress=None,
               column: str = "latency_ms"):
    """One row per (graph, device, runtime) of the dataset's ok rows whose model is found: columns path,
    space, arch, family, device, runtime, batch_size, resolution, latency_ms, n_rows, source ('file' or
    'recipe'); rows without a model are counted in `.attrs['missing']`, the places searched listed in
    `.attrs['looked_in']`. `column`: the statistic read as latency_ms (p10_ms puts rows of agent 0.1, whose
    latency_ms was the median, beside today's CPU rows)."""
    import pandas as pd
    import pyarrow.compute as pc

    from latkit.collector.exporters import DEFAULT_CACHE, GRAPHS
    from latkit.collector.store import Store, no_dataset
    store = Store(data_dir)
    if not store.exists() or not store.files():
        raise no_dataset(data_dir, "give a latkit dataset folder")
    flt = pc.field("status") == "ok"
    if device is not None:
        flt = flt & (pc.field("device") == device)
    if column not in ("latency_ms", "median_ms", "mean_ms", "min_ms", "p10_ms", "p90_ms", "mode_ms"):
        raise LatkitError(f"unknown latency column {column!r}; choose latency_ms, median_ms, p10_ms, ...")
    df = store.read(columns=COLUMNS + ([column] if column != "latency_ms" else []), filter=flt).to_pandas()
    if column != "latency_ms":
        df["latency_ms"] = df[column].fillna(df["latency_ms"])
    if runtime is not None:
        df = df[df.runtime == runtime]
    if df.empty:
        raise LatkitError(f"no ok rows{' of device ' + device if device else ''} in {data_dir}")
    cache = Path(cache or os.environ.get("LATKIT_CACHE") or DEFAULT_CACHE)
    index = _index_models(list(models))
    df["resolution"] = [int(s.split(";")[0].split("x")[-1]) if s else 0 for s in df.input_shape.fillna("")]
    rows, missing = [], 0
    groups = df.groupby(["model_sha256", "device", "runtime"], sort=True, dropna=False)
    for i, ((sha, dev, rt), g) in enumerate(groups):
        first = g.iloc[0]
        path, source = index.get(sha), "file"
        for kept in (cache / GRAPHS / f"{sha}.onnx", cache / f"{sha}.onnx"):  # the weightless graph, or the file
            if path is None and kept.is_file():
                path = str(kept)
        if path is None and export_missing and first.space not in ("custom", "", None):
            path, source = _recipe(first, cache, only_cached=export_missing == "cached"), "recipe"
        if path is None:
            missing += len(g)
            continue
        rows.append({"path": path, "model_sha256": sha, "space": first.space, "arch": first.arch,
                     "family": family_of(first.space, first.arch, families), "device": dev, "runtime": rt,
                     "batch_size": int(first.batch_size or 1), "resolution": int(first.resolution),
                     "latency_ms": float(g.latency_ms.median()), "n_rows": len(g), "source": source})
        if progress:
            progress(i + 1, groups.ngroups)
    out = pd.DataFrame(rows, columns=["path", "model_sha256", "space", "arch", "family", "device", "runtime",
                                      "batch_size", "resolution", "latency_ms", "n_rows", "source"])
    out.attrs["missing"] = missing
    out.attrs["looked_in"] = [f"the export cache {cache}", *map(str, models)]
    return out


def _recipe(row, cache: Path, only_cached: bool = False) -> Optional[str]:
    """The .onnx of a search-space row exported again from its recipe (None if the space refuses it, or,
    `only_cached`, if the cache does not hold that export yet)."""
    from latkit.collector.api import arch_spec, export_arch
    from latkit.collector.exporters import cached
    from latkit.collector.spaces import get_space
    try:
        sp = get_space(row.space)
        res = int(row.resolution) or None
        if row.space == "ofa":
            res = None  # an ofa arch carries its resolution
        if only_cached:
            hit = cached(cache, arch_spec(sp, row.arch, "onnx", int(row.batch_size or 1), res).key, "onnx")
            return str(hit[0]) if hit else None
        return str(export_arch(sp, row.arch, "onnx", int(row.batch_size or 1), res, cache_dir=cache).path)
    except LatkitError:
        return None


def make(kind: str = "kernels", random_state: int = 0, **params) -> GraphSurrogate:
    """A graph model by name: kernels (per-kernel additive), gnn (graph network), flops (baseline)."""
    if kind == "kernels":
        from .kernels import KernelAdditive
        return KernelAdditive(random_state=random_state, **params)
    if kind == "gnn":
        from .graphnet import GraphNet
        return GraphNet(random_state=random_state, **params)
    if kind == "flops":
        from .kernels import FlopsLinear
        return FlopsLinear(**params)
    raise LatkitError(f"unknown graph model {kind!r}; choose one of {', '.join(MODEL_KINDS)}")


def fit_graphs(data_dir, device: str, kind: str = "kernels", models: Sequence = (), export_missing: bool = False,
               test_fraction: float = 0.2, random_state: int = 0, runtime: Optional[str] = None, progress=None,
               **params) -> tuple:
    """`latkit predictor fit --space onnx --data DIR --device D`: (model fitted on every graph, report).
    The report scores a model fitted on the other graphs on a random `test_fraction` of them (at least 3,
    with at least 5 left to fit; 0: none) beside the FLOPs-linear baseline (`heldout`: those graphs' files,
    latencies and predictions); `report['families']` counts graphs per family. `progress(text)` hears of
    each step."""
    from .metrics import report as scores
    t = graph_rows(data_dir, device, runtime, models, export_missing=export_missing)
    if len(t) < 5:
        raise LatkitError(
            f"only {len(t)} measured graphs of {device} in {data_dir} have their .onnx file ({t.attrs['missing']} "
            f"ok rows without one; looked in {', '.join(t.attrs['looked_in'])}); a graph model needs 5: give the "
            "folder of the .onnx files that were measured (--models FOLDER), keep the export cache the collection "
            "wrote (LATKIT_CACHE), or export search-space archs again (--export-missing)")
    X, y = list(t.path), t.latency_ms.to_numpy()
    if progress:
        progress(f"{len(t)} graphs found; fitting {kind}")
    rep = {"device": device, "kind": kind, "graphs": len(t), "rows_without_model": int(t.attrs["missing"]),
           "families": t.family.value_counts().to_dict()}
    n_test = max(3, int(round(test_fraction * len(y))))
    if test_fraction and len(y) - n_test >= 5:
        test = np.zeros(len(y), bool)
        test[np.random.default_rng(random_state).permutation(len(y))[:n_test]] = True
        tr = [x for x, s in zip(X, test) if not s]
        te = [x for x, s in zip(X, test) if s]
        t0 = time.perf_counter()
        m = make(kind, random_state, **params).fit(tr, y[~test])
        rep["fit_s"] = time.perf_counter() - t0
        pred = m.predict(te)
        rep["test"] = scores(pred, y[test])
        rep["test_flops_linear"] = scores(make("flops").fit(tr, y[~test]).predict(te), y[test])
        rep["test_graphs"] = n_test
        rep["heldout"] = {"file": te, "latency_ms": y[test].tolist(), "predicted_ms": pred.tolist()}
    model = make(kind, random_state, **params).fit(X, y)
    return model, rep


def adapt_graphs(model: GraphSurrogate, data_dir, device: str, paths: Sequence, settings=None, registry=None,
                 progress: bool = True) -> tuple:
    """`latkit predictor adapt --model M --device D --file ...`: a graph model few-shot to a new device.
    The .onnx files in `paths` are measured on `device` into `data_dir` (rows stored there before under the
    same settings are not timed again), then `model.adapt` learns from their latencies (KernelAdditive:
    overhead and scale refitted, or a fresh fit where that cross-validates better; GraphNet: fine-tuned;
    FlopsLinear: refitted). Returns (the adapted model, report: graphs, `before`: the scores of the model as
    it was on these graphs, and what the model's adapt says of itself, its `adapted_`)."""
    from latkit.collector import api

    from .metrics import report as scores
    files = onnx_files(paths)
    index = _index_models(files)
    done = api.collect_models(files, [device], None, settings, data_dir, registry=registry, progress=progress,
                              reference=False)  # a few files: the reference's checks would cost more than they tell
    if not done.ok:  # before reading: a device that measured nothing leaves no dataset to name
        raise Failure("; ".join(f"{d.device}: {d.message}" for d in done.devices if d.message) +
                      f" ({done.line()}); nothing adapted")
    t = graph_rows(data_dir, device, models=files)
    t = t[t.model_sha256.isin(list(index))]
    if len(t) < 3:
        raise LatkitError(f"only {len(t)} of the {len(index)} files measured ok on {device} ({done.line()}); adapting "
                          f"needs 3: give more files, or see latkit data show {data_dir}")
    X, y = list(t.path), t.latency_ms.to_numpy()
    rep = {"device": device, "graphs": len(t), "before": scores(model.predict(X), y)}
    model.adapt(X, y)
    rep.update(getattr(model, "adapted_", {}))
    return model, rep


def onnx_files(paths: Sequence) -> list:
    """The .onnx files named in `paths` (files, or folders searched recursively), sorted within a folder."""
    out = []
    for p in paths:
        if os.path.isdir(p):
            found = sorted(glob.glob(os.path.join(glob.escape(str(p)), "**", "*.onnx"), recursive=True))
            if not found:
                raise LatkitError(f"no .onnx files in {p}")
            out += found
        else:
            out.append(str(p))
    return out


def predict_files(model: GraphSurrogate, paths: Sequence, batch: int = 1, external: str = "shapes",
                  errors: str = "raise") -> list:
    """`latkit predictor predict --model M --file my.onnx` (or folders): one dict per file with file,
    latency_ms, std_ms, flops (analytic), kernels (after fusion), onnx_nodes, input_shape (the shapes used, as
    the dataset column: "1x3x32x32", ";" between inputs, -1 unknown) and outside (model.outside: "" within the
    training graphs' range). `batch`: the size of a symbolic first input dimension; `external`:
    graphs.encode's (shapes: a model whose weights are in a separate data file is encoded from its declared
    shapes, the data file never opened; refuse). A file that
    cannot be read is a LatkitError naming it, or with errors="keep" a dict of its file and error (the
    others are still predicted)."""
    from .graphs import encode
    rows, graphs = [], []
    for f in onnx_files(paths):
        try:
            graphs.append(as_graph(f) if batch == 1 and external == "shapes" else
                          encode(f, batch=batch, external=external))
            rows.append({"file": f})
        except LatkitError as e:
            msg = str(e) if f in str(e) else f"{f}: {e}"
            if errors != "keep":
                raise LatkitError(msg) from None
            rows.append({"file": f, "error": msg})
    if not graphs:
        return rows
    mean, std = model.predict(graphs, return_std=True)
    told = iter(zip(graphs, mean, std, model.outside(graphs)))
    for r in (r for r in rows if "error" not in r):
        g, m, s, far = next(told)
        r.update({"latency_ms": float(m), "std_ms": float(s), "flops": g.totals()["flops"], "kernels": len(g),
                  "onnx_nodes": g.n_onnx_nodes, "outside": far,
                  "input_shape": ";".join("x".join(map(str, v)) for v in g.inputs.values())})
    return rows


__all__ = ["graph_rows", "fit_graphs", "adapt_graphs", "predict_files", "onnx_files", "make", "family_of", "as_graphs"]
