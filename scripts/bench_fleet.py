"""Collection throughput on the loopback fleet: duty cycle and transport overhead per model.

Starts --devices real sshd devices on 127.0.0.x, collects --models small distinct ONNX models on each (one
agent per device, all devices in parallel), and prints per device:
- duty cycle = time spent timing (warmup + timed runs) / device wall time (connect, deploy and probe included),
- transport overhead per model = host time in a measure call - the agent's own work (load, warmup, timing):
  SFTP upload, the request round trip, JSON,
- model load per model (runtime session creation, on the device), start-up (connect, deploy, probe).
"""
from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from latkit.collector import Registry, Settings, add_device, collect, export
from latkit.collector.api import make_jobs
from latkit.collector.loopback import new_fleet_dir, start_fleet, stop_fleet


def small_models(n: int, cache: Path):
    """n distinct small CNNs (width x depth grid) as ONNX artifacts."""
    arts = []
    for i in range(n):
        width, depth = 8 + 4 * (i % 10), 1 + i // 10 % 4
        layers = [torch.nn.Conv2d(3, width, 3, padding=1), torch.nn.ReLU()]
        for _ in range(depth):
            layers += [torch.nn.Conv2d(width, width, 3, padding=1), torch.nn.ReLU()]
        layers += [torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(width, 10 + i)]
        arts.append(export(torch.nn.Sequential(*layers).eval(), (torch.randn(1, 3, 32, 32),), "onnx",
                           arch=f"w{width}_d{depth}_{i}", cache_dir=cache))
    return arts


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", type=int, default=100)
    ap.add_argument("--devices", type=int, default=2)
    ap.add_argument("--min-time", type=float, default=0.5, help="minimum timed seconds per model")
    ap.add_argument("--max-time", type=float, default=1.0)
    args = ap.parse_args()
    console = Console(width=None if sys.stdout.isatty() else 150)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.time()
        arts = small_models(args.models, tmp / "exports")
        export_s = time.time() - t0
        base = new_fleet_dir()
        fleet = start_fleet(base, [sys.executable] * args.devices)
        try:
            reg = Registry(tmp / "devices.toml")
            for d in fleet:
                add_device(d.name, d.host, d.port, d.user, d.key, d.python, d.workdir, trust_host_key=True,
                           registry=reg, lease=f"{d.dir}/lease")  # devices sharing this machine: a lease each
            devices = [reg.get(d.name) for d in fleet]
            settings = Settings(repeats_min_s=args.min_time, repeats_max_s=args.max_time)
            report = collect(make_jobs(arts, [d.name for d in devices], "onnxruntime", settings), devices,
                             out=tmp / "data", progress=False)
        finally:
            stop_fleet(base, remove=True)
    table = Table("device", "models", "wall s", "duty cycle (goal >= 90%)", "transport overhead / model (goal < 100 ms)",
                  "model load / model", "start-up s")
    for d in report.devices:
        n = d.measured + d.errors
        table.add_row(d.device, str(n), f"{d.wall_s:.1f}", f"{d.timing_s / d.wall_s * 100:.1f}%",
                      f"{(d.busy_s - d.agent_s) / n * 1e3:.1f} ms", f"{(d.agent_s - d.timing_s) / n * 1e3:.1f} ms",
                      f"{d.wall_s - d.busy_s:.1f}")
    console.print(f"{args.models} ONNX models (exported in {export_s:.1f} s) x {args.devices} loopback sshd devices, "
                  f"onnxruntime, min {args.min_time} s / max {args.max_time} s timed per model; "
                  f"{platform.processor() or platform.machine()}, {len(__import__('os').sched_getaffinity(0))} CPUs")
    console.print(table)
    if not report.ok:
        console.print("[red]some devices failed:[/] " + "; ".join(d.message for d in report.devices if d.message))


if __name__ == "__main__":
    main()
