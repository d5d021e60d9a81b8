"""Benchmark the store with synthetic rows written through the real Store: the time to read the done keys
(what a resume does first), bytes per row with 100 raw samples, and the compaction of single-row files.
Prints a table and writes scripts/bench_store.json (README renders it).

    python scripts/bench_store.py --rows 100000
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa

from latkit.collector.compact import compact
from latkit.collector.job import Artifact, Job, Settings
from latkit.collector.measurement import Measurement
from latkit.collector.schema import PARTITIONS, SCHEMA
from latkit.collector.store import Store, partition_folder

GOALS = {"resume_keys_s": 2.0, "bytes_per_row": 8192, "compact_s": 60.0}
DEVICES = ("dev0", "dev1", "dev2", "dev3")


def rows(start: int, n: int, samples: int) -> list:
    """n realistic rows (one per synthetic model): lognormal samples, telemetry, timestamps."""
    rng = np.random.default_rng(start)
    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    out = []
    for i in range(start, start + n):
        art = Artifact(path=f"/m/{i}.onnx", sha256=f"{i:064x}", format="onnx", space="nb201",
                       arch=f"|nor_conv_3x3~0|+|skip_connect~0|avg_pool_3x3~1|+|none~0|nor_conv_1x1~1|{i}~2|")
        job = Job(art, DEVICES[i % len(DEVICES)], Settings())
        base = float(rng.uniform(0.2, 5.0))
        started = t0 + timedelta(seconds=i)
        m = Measurement.from_result(job, {
            "samples_ms": (base * rng.lognormal(0, 0.02, samples)).tolist(), "warmup": 10, "runtime_version": "1.20",
            "agent_version": "0.1.0", "inputs": [{"name": "x", "shape": [1, 3, 32, 32], "dtype": "float32"}],
            "telemetry_before": {"freq_mhz": 2000.0, "temp_c": 45.0, "load1": 0.5},
            "telemetry_after": {"freq_mhz": 2100.0, "temp_c": 47.0, "load1": 0.6}, "stopped_by": "ci_target",
            "ci_rel": 0.004, "started_at": started.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "finished_at": (started + timedelta(seconds=0.5)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")}, "f" * 16)
        out.append(m.to_row())
    return out


def _single_files(args) -> int:
    """Write rows [start, start + n) as one file each, as a collection whose models take longer than a batch's
    2 s does (and latkit before batching did): each through Store.write_file, the writer of every batch, but
    the rows made as one table and the files written by threads, so 100,000 files take minutes, not an hour
    (a file's create, rename and zstd contexts cost a few ms, mostly waiting on the disk)."""
    path, start, n, samples = args
    store = Store(path)
    table = pa.Table.from_pylist(rows(start, n, samples), schema=SCHEMA)
    folders = [partition_folder(store.data, part) for part in zip(*(table[p].to_pylist() for p in PARTITIONS))]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda i: store.write_file(folders[i], table.slice(i, 1)), range(n)))
    return n


def du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def timed(fn, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--samples", type=int, default=100, help="raw samples per row")
    ap.add_argument("--single-files", type=int, help="single-row files to compact (default --rows)")
    ap.add_argument("--workers", type=int, default=os.cpu_count(), help="processes writing the single-row files")
    ap.add_argument("--dir", help="work folder on the disk to measure (default: a temporary folder)")
    ap.add_argument("--json", default=str(Path(__file__).with_suffix(".json")))
    args = ap.parse_args()
    work = Path(args.dir or tempfile.mkdtemp(prefix="latkit-bench-store-"))
    shutil.rmtree(work, ignore_errors=True)
    load0 = os.getloadavg()[0]
    out = {"rows": args.rows, "samples": args.samples, "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
           "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"), "goals": GOALS}

    # 1. a collection's writes: batched (Store.writer defaults), one writer per device as run_device has
    batched = Store(work / "batched")
    t = time.perf_counter()
    made = 0.0
    writers = {d: batched.writer() for d in DEVICES}
    for start in range(0, args.rows, 10_000):
        t_made = time.perf_counter()
        chunk = rows(start, min(10_000, args.rows - start), args.samples)
        made += time.perf_counter() - t_made
        for row in chunk:
            writers[row["device"]].add(row)
    for w in writers.values():
        w.close()
    out["write_s"] = time.perf_counter() - t - made
    out["batched_files"] = len(batched.files())
    out["bytes_per_row"] = du(work / "batched" / "data") / args.rows
    out["resume_keys_s"] = timed(lambda: Store(work / "batched").done_keys())
    assert len(Store(work / "batched").done_keys()) == args.rows
    r = compact(work / "batched")
    out["compacted_bytes_per_row"] = du(work / "batched" / "data") / args.rows
    out["resume_keys_compacted_s"] = timed(lambda: Store(work / "batched").done_keys())
    out["compacted_files"] = r.files_after

    # 2. compaction of single-row files (models that take over 2 s each, or a dataset written before batching)
    n = args.single_files or args.rows
    single = work / "single"
    # chunks of 5,000 rows (bounded memory per worker); the workers are niced: making files is no measurement
    with ProcessPoolExecutor(args.workers, initializer=os.nice, initargs=(19,)) as pool:
        assert sum(pool.map(_single_files, [(str(single), s, min(5000, n - s), args.samples)
                                            for s in range(0, n, 5000)])) == n
    os.sync()  # the files on disk, not in the page cache: compaction does not pay for their writeback
    time.sleep(60)  # so the 1-min load noted as compaction begins is other work's, not the file-making just done
    out["single_files"] = len(Store(single).files())
    out["single_bytes_per_row"] = du(single / "data") / n
    # a pyarrow scan holds ~230 KB per file until it ends: Store.read scans _READ_CHUNK files at a time
    out["resume_keys_single_s"] = timed(lambda: Store(single).done_keys(), repeat=1)
    load_compact = os.getloadavg()[0]
    t = time.perf_counter()
    r = compact(single)
    out["compact_s"] = time.perf_counter() - t
    out["compact_load_1min"] = [load_compact, os.getloadavg()[0]]
    assert r.rows == n and r.files_after == len(DEVICES)
    out["load_1min"] = [load0, os.getloadavg()[0]]
    shutil.rmtree(work, ignore_errors=True)

    print(f"{args.rows:,} rows, {args.samples} samples each, {out['machine']} (1-min load {load0:.1f} -> "
          f"{out['load_1min'][1]:.1f}):")
    print(f"{'figure':44} {'measured':>12} {'goal':>10}")
    for name, value, goal in [
            (f"resume-key read, {out['batched_files']} batched files (s)", out["resume_keys_s"],
             f"< {GOALS['resume_keys_s']:g}"),
            ("resume-key read after compaction (s)", out["resume_keys_compacted_s"], ""),
            ("bytes per row, batched", out["bytes_per_row"], f"<= {GOALS['bytes_per_row']}"),
            ("bytes per row, compacted", out["compacted_bytes_per_row"], ""),
            (f"compaction of {n:,} single-row files (s)", out["compact_s"], f"< {GOALS['compact_s']:g}"),
            (f"resume-key read, {n:,} single-row files (s)", out["resume_keys_single_s"] or float("nan"), ""),
            ("bytes per row, single-row files", out["single_bytes_per_row"], ""),
            (f"batched write of {args.rows:,} rows (s)", out["write_s"], "")]:
        print(f"{name:44} {value:12.2f} {goal:>10}")
    Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
