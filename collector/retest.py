"""Test-retest: measure a random sample of a dataset's rows again and say how well the numbers repeat.

The second measurement goes to a side table (`<dataset>/_retest/<UTC stamp>/`, which readers of the
dataset skip), never among the rows. Each statistic latkit stores is compared, so the choice of
`latency_ms` rests on data: Spearman's rho between the two passes, and the median and p90 of the
relative difference |b - a| / a.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import random
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs

from . import validate
from .api import space_artifacts
from .devices import Registry
from .errors import LatkitError
from .job import FORMATS, Artifact, Job, Settings
from .scheduler import collect
from .spaces import COLLECTABLE
from .store import Store, no_dataset

log = logging.getLogger("latkit")
STAMP = re.compile(r"[0-9]{8}T[0-9]{6}Z")  # a retest's side table: `_retest/<UTC stamp>`
RECORDS = Path.home() / ".cache" / "latkit" / "retests"  # what each retest on this host times, while it runs

# energy_mj and power_w where both passes read the counter (rows measured with --energy); cpu_ms where both passes
# have the thread's CPU clock (CPU rows with threads=1 of agent >= 0.3.6)
STATISTICS = ("latency_ms", "median_ms", "min_ms", "p10_ms", "mode_ms", "mean_ms", "cpu_ms", "energy_mj", "power_w")


def settings_of(row_settings: str) -> Settings:
    """The Settings a row was measured with (keys a newer latkit no longer knows are refused)."""
    d = json.loads(row_settings)
    known = {f.name for f in dataclasses.fields(Settings)}
    if set(d) - known:
        raise LatkitError(f"a row was measured with settings latkit no longer has ({sorted(set(d) - known)}); "
                          "retest datasets collected with this version")
    if d.get("cores") is not None:
        d["cores"] = tuple(d["cores"])
    return Settings(**d)


def _artifact(row: dict, models: dict) -> Artifact:
    """The exact file the row timed: re-exported from its arch (spaces), or found by hash among `models`."""
    if row["model_sha256"] in models:
        return Artifact.from_file(models[row["model_sha256"]], space=row["space"], arch=row["arch"])
    if row["space"] in COLLECTABLE:
        shape = [int(d) for d in row["input_shape"].split(";")[0].split("x")]
        sp = COLLECTABLE[row["space"]]()
        res = shape[-1] if shape[-1] != sp.resolution(row["arch"]) else None
        art = space_artifacts(row["space"], [row["arch"]], row["runtime"], shape[0], res)[0]
        if art.sha256 == row["model_sha256"]:
            return art
        raise LatkitError(f"re-exporting {row['space']} arch {row['arch'][:40]} gave another file than the one "
                          "measured (exporter versions changed?); give the model files with --models")
    raise LatkitError(f"model {row['arch']} ({row['model_sha256'][:12]}) is not among the files of --models; give "
                      "--models with the folder holding the measured files")


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman's rho: the Pearson correlation of average ranks (ties share the mean of their ranks). Built from
    pyarrow's rank so a measure-only install needs no scipy; nan when either side is constant."""
    ra, rb = ((np.asarray(pc.rank(x, tiebreaker="min")) + np.asarray(pc.rank(x, tiebreaker="max"))) / 2.0
              for x in (pa.array(np.asarray(a, dtype=float)), pa.array(np.asarray(b, dtype=float))))
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def compare(a: Sequence[float], b: Sequence[float]) -> dict:
    """Spearman hides what a predictor's ±10 % cannot: the median, p90 and max of |b - a| / a beside it. `shift`
    is how much slower pass b ran overall (the median of b / a, less 1): a host that sped up or slowed down between
    the passes moves every row alike, which the median |b - a| / a after dividing it out
    (`median_rel_diff_less_shift`) tells apart from rows that disagree."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    rel = np.abs(b - a) / a
    shift = float(np.median(b / a))
    return {"spearman": spearman(a, b), "median_rel_diff": float(np.median(rel)),
            "p90_rel_diff": float(np.percentile(rel, 90)), "max_rel_diff": float(np.max(rel)),
            "shift": shift - 1, "median_rel_diff_less_shift": float(np.median(np.abs(b / (a * shift) - 1)))}


def retest(path, n: int = 50, seed: int = 0, models: Sequence = (), registry: Optional[Registry] = None,
           progress: bool = True, job_timeout: float = 600.0) -> dict:
    """Re-measure n random ok rows of the dataset at `path` on their devices with their settings (shuffled,
    into a side table), compare, and write `retest.json` beside the side table. Returns the figures."""
    if n < 2:
        raise LatkitError(f"--n must be >= 2 to compare rankings, got {n}")
    store = Store(path)
    if not store.exists() or not store.files():
        raise no_dataset(path, "collect into it first")
    rows = store.read(filter=(pc.field("status") == "ok") & (pc.field("runtime") != "published")).to_pylist()
    if len(rows) < 2:
        raise LatkitError(f"{path} has {len(rows)} measured ok rows; a retest needs at least 2")
    newest = {}
    for r in sorted(rows, key=lambda r: r["measured_at"]):
        newest[r["key"]] = r
    picked = random.Random(seed).sample(sorted(newest), min(n, len(newest)))
    files = {}
    for folder in models:
        for f in Path(folder).rglob("*"):
            if f.is_file() and f.suffix.lower() in FORMATS:
                try:  # by the hash of the file a device got (an .onnx packed with its weights)
                    files[Artifact.from_file(f).sha256] = f
                except LatkitError:  # one that cannot be timed (its weights file missing) is not the one timed
                    continue
    reg = registry or Registry()
    jobs, original = [], {}
    for key in picked:
        r = newest[key]
        job = Job(_artifact(r, files), r["device"], settings_of(r["settings"]), sampler=r["sampler"] or "",
                  role="retest")
        if job.key != key:  # the key is recomputed from the same file, device and settings
            raise LatkitError(f"cannot reproduce the key of {r['arch'][:40]} on {r['device']}; was it measured by "
                              "an older latkit?")
        jobs.append(job)
        original[key] = r
    record = RECORDS / f"{hashlib.sha256('/'.join([store.uri, *sorted(picked)]).encode()).hexdigest()[:32]}.json"
    stamp = stopped(store, record)
    if stamp:  # its rows are kept and its saved rounds taken back: only what it had not timed is timed now
        log.warning("resuming the retest of these rows stopped in _retest/%s: only what it had not timed is timed",
                    stamp)
    stamp, side = side_table(store, stamp)
    if store.local:  # a link there out of the dataset is refused before anything is written through it
        validate.own_folder(store.root, Path(side.root), "remove it")
    side.check_writable(advice="a retest writes into the dataset: make it writable")
    validate.write_atomic(validate.writable_file(record, "make ~/.cache/latkit writable"), json.dumps(
        {"dataset": store.uri, "stamp": stamp, "pid": os.getpid(), "started": psutil.Process().create_time()}))
    report = collect(jobs, [reg.get(d) for d in sorted({j.device for j in jobs})], out=side.uri, progress=progress,
                     job_timeout=job_timeout, reference=False)
    if not report.ok:
        raise LatkitError("; ".join(f"{d.device}: {d.message}" for d in report.devices if d.message)
                          + f"; the measurements so far are in {side.uri}: run the same command again to resume")
    figures = compare_side(store, stamp, original, seed)
    record.unlink(missing_ok=True)
    return figures


def side_table(store: Store, stamp: Optional[str] = None) -> tuple:
    """(stamp, Store) of the side table of a retest of `store`, `<dataset>/_retest/<UTC stamp>`, a fresh one unless
    `stamp` is given: on the dataset's filesystem, so an s3:// dataset's retest stays there."""
    stamp = stamp or datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return stamp, store.side(f"_retest/{stamp}")


def stopped(store: Store, record: Path) -> Optional[str]:
    """The stamp of this host's retest of the same rows if it stopped before its figures (its side table is there,
    without retest.json), else None; a LatkitError while it still runs. The record of what a retest times is kept
    on this host, never in the dataset: a dataset from elsewhere cannot make a retest take rows it ships as timed."""
    try:
        rec = json.loads(validate.read_bytes(record, "the retest record", 4096)) if record.is_file() else {}
        stamp, pid, started = str(rec["stamp"]), int(rec["pid"]), float(rec["started"])
    except (LatkitError, ValueError, KeyError, TypeError):
        return None  # none, or not one latkit wrote: a retest of its own
    try:
        if pid != os.getpid() and psutil.Process(pid).create_time() == started:
            raise LatkitError(f"a retest of these rows of {store.uri} is running (pid {pid}); wait for it to end")
    except psutil.Error:  # it ended
        pass
    if not STAMP.fullmatch(stamp) or stamp not in store.folders("_retest"):
        return None
    try:
        done = store.fs.get_file_info(f"{store.root}/_retest/{stamp}/retest.json").type != pafs.FileType.NotFound
    except OSError as e:
        raise LatkitError(f"cannot read {store.uri_of('_retest/' + stamp)}: {str(e).splitlines()[0]}") from None
    return None if done else stamp


def compare_side(store: Store, stamp: str, original: dict, seed: int = 0) -> dict:
    """Compare the rows measured again into the side table `stamp` with `original` (key -> the dataset's
    row, in the order picked) and write the figures to retest.json there, where the dataset card finds
    them. Returns the figures."""
    again = {r["key"]: r for r in store.side(f"_retest/{stamp}").read(filter=pc.field("status") == "ok").to_pylist()}
    keys = [k for k in original if k in again]
    if len(keys) < 2:
        raise LatkitError(f"{len(keys)} of {len(original)} rows were measured again; a retest needs at least 2")
    figures = {"n": len(keys), "seed": seed, "stamp": stamp, "side_table": f"_retest/{stamp}",
               "statistics": {s: compare([original[k][s] for k in keys], [again[k][s] for k in keys])
                              for s in STATISTICS
                              if all(original[k].get(s) is not None and again[k][s] is not None for k in keys)}}
    rel = sorted(((abs(again[k]["latency_ms"] - original[k]["latency_ms"]) / original[k]["latency_ms"], k)
                  for k in keys), reverse=True)
    figures["worst"] = [{"arch": original[k]["arch"], "device": original[k]["device"],
                         "a_ms": original[k]["latency_ms"], "b_ms": again[k]["latency_ms"], "rel_diff": d}
                        for d, k in rel[:5]]
    store.write_bytes(f"_retest/{stamp}/retest.json", json.dumps(figures, indent=1, default=str),
                      "make the dataset writable")
    return figures
