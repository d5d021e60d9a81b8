"""Test-retest of the timing protocol and the agent's own overhead, on the `local` device.

Measures one model N times in a row (same agent, same settings) per runtime and prints:
- the spread of the median latency across runs ((max - min) / median and std / mean of the medians),
- the median CV within a run (std/mean, and the robust IQR-based CV the stopping rule uses),
- the agent's overhead per measurement: request wall time minus model load, warmup and timed work,
  against the timed work itself, and the timing loop's own cost per sample (an empty callable).
"""
from __future__ import annotations

import argparse
import importlib.util
import platform
import statistics
import sys
import time

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from collector import Device, Settings, export
from collector.runner import DeviceRunner
from collector.transports import AGENT_PATH
from demo import models


def robust_cv(samples):
    q1, q3 = np.percentile(samples, [25, 75])
    return (q3 - q1) / 1.349 / np.median(samples)


def in_sample_overhead_ns(n=100_000):
    """What the timing loop adds to each sample (two clock reads and a call), from timing a no-op."""
    spec = importlib.util.spec_from_file_location("agent", AGENT_PATH)
    agent = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(agent)
    s = dict(agent.DEFAULT_SETTINGS, warmup_min_count=100, warmup_min_s=0.0, repeats_min_count=n,
             repeats_min_s=0.0, repeats_max_count=n, cv_target=0.0)
    samples, _, _ = agent.time_callable(agent.wall_timer(lambda: None), s)
    return statistics.median(samples) * 1e6


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--model", default="mobilenet_ish_128", choices=[m[0] for m in models()])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--cores", help="pin to these CPU ids, e.g. 1")
    args = ap.parse_args()
    name, module, x = next(m for m in models() if m[0] == args.model)
    cores = tuple(int(c) for c in args.cores.split(",")) if args.cores else None
    console = Console(width=None if sys.stdout.isatty() else 160)
    table = Table("runtime", "runs", "median of medians ms", "spread (max-min)/median", "std/mean of medians",
                  "median CV (std/mean)", "median robust CV", "overhead / measurement", "timed work / measurement")
    with DeviceRunner(Device("local")) as runner:
        for fmt, runtime in (("onnx", "onnxruntime"), ("tflite", "tflite")):
            art = export(module, (x,), fmt, arch=name)
            settings = Settings(runtime=runtime, threads=args.threads, cores=cores)
            medians, cvs, rcvs, overheads, timed = [], [], [], [], []
            for _ in range(args.runs):
                t0 = time.perf_counter()
                r = runner.transport.call("measure", timeout=600, model=runner.transport.put(art), runtime=runtime,
                                          settings=settings.agent_settings(), inputs=list(art.inputs))
                wall = time.perf_counter() - t0
                s = np.asarray(r["samples_ms"])
                medians.append(float(np.median(s)))
                cvs.append(float(s.std(ddof=1) / s.mean()))
                rcvs.append(float(robust_cv(s)))
                timed.append(s.sum() / 1e3)
                overheads.append(wall - r["load_s"] - r["warmup_s"] - s.sum() / 1e3)
            med = statistics.median(medians)
            table.add_row(runtime, str(args.runs), f"{med:.4f}", f"{(max(medians) - min(medians)) / med * 100:.2f}%",
                          f"{statistics.stdev(medians) / statistics.mean(medians) * 100:.2f}%",
                          f"{statistics.median(cvs) * 100:.2f}%", f"{statistics.median(rcvs) * 100:.2f}%",
                          f"{statistics.median(overheads) * 1e3:.1f} ms",
                          f"{statistics.median(timed):.2f} s")
        probe = runner.probe
    console.print(f"model {name} (input {list(x.shape)}), threads={args.threads}, cores={args.cores or 'unpinned'}; "
                  f"machine: {probe['cpu_model']}, {probe['cpu_count']} CPUs, {platform.python_version()}, "
                  f"torch {torch.__version__}")
    console.print(table)
    console.print(f"timing loop's own share of each sample (median of a timed no-op): {in_sample_overhead_ns():.0f} ns")
    console.print("anchors: spread of the median <= 2% and overhead <= 5% of the timed work "
                  "(torch.utils.benchmark-style repeat-until-stable timing on a shared 2-core VM)")


if __name__ == "__main__":
    main()
