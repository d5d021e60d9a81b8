"""Collection throughput on the loopback fleet: duty cycle and transport overhead per model.

Starts --devices real sshd devices on 127.0.0.x, collects --models small distinct ONNX models on each (one
agent per device, all devices in parallel), and prints per device:
- duty cycle = time spent timing (warmup + timed runs) / device wall time (connect, deploy and probe included),
- transport overhead per model = host time in a measure call - the agent's own work (load, warmup, timing):
  SFTP upload, the request round trip, JSON,
- model load per model (runtime session creation, on the device), start-up (connect, deploy, probe),
- per-model overhead (per_model_overhead): wall time per model beyond its timed sections, into --json.

`--ofa-archs N` (default 0: off; the goal is stated for 200) adds the export pipeline on OFA (onnx, r=128,
default export workers, the default timing protocol), written to scripts/bench_fleet.json under
"export_pipeline":
- cold: empty export cache; device duty cycle = time timing / wall time of the whole collection, exports
  included (exports stream into the device queues, so this is bounded by the export rate while exporting is
  slower than timing),
- cached: every export in the cache, a fresh dataset: duty cycle (goal >= 90 %) and time to first timing
  (collect_space called -> first measure request; goal < 3 s at 200 archs),
- the per-arch cost the old content key paid to find a cached export (build the net, hash its weights),
  times N, beside the spec key's lookup.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
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


JSON = Path(__file__).with_suffix(".json")


def write_section(key: str, value: dict, path: Path = JSON) -> None:
    """Merge one section into scripts/bench_fleet.json (other sections are other benchmarks' and stay)."""
    data = json.loads(path.read_text()) if path.exists() else {}
    data[key] = value
    path.write_text(json.dumps(data, indent=2) + "\n")


def _collection_figures(report, t0: float, wall_s: float) -> dict:
    firsts = [d.first_timing_at for d in report.devices if d.first_timing_at]
    return {"wall_s": round(wall_s, 2), "first_timing_s": round(min(firsts) - t0, 2) if firsts else None,
            "duty_cycle": {d.device: round(d.timing_s / wall_s, 3) for d in report.devices},
            "measured": report.measured, "ok": report.ok}


def export_pipeline(n: int, n_devices: int) -> dict:
    """OFA over the loopback fleet: cold and fully-cached collections (see the module docstring)."""
    from latkit.collector.api import arch_spec, collect_space, export_plan, iter_space_artifacts
    from latkit.collector.exporters import cached, export_key
    from latkit.collector.samplers import sample
    from latkit.collector.spaces import get_space
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cache = tmp / "exports"  # empty: the cold run exports every arch
        base = new_fleet_dir()
        fleet = start_fleet(base, [sys.executable] * n_devices)
        try:
            reg = Registry(tmp / "devices.toml")
            for d in fleet:
                add_device(d.name, d.host, d.port, d.user, d.key, d.python, d.workdir, trust_host_key=True,
                           registry=reg, lease=f"{d.dir}/lease")
            names = [d.name for d in fleet]
            plan = export_plan([reg.get(x) for x in names], None)
            settings = Settings()  # what a user gets: shuffled rounds on sessions the agent keeps
            out = {}
            for label, data in (("cold", "data-cold"), ("cached", "data-cached")):
                t0 = time.time()
                report = collect_space("ofa", n, names, "onnxruntime", settings=settings, out=tmp / data,
                                       resolution=128, registry=reg, progress=False, cache_dir=cache,
                                       reference=False)  # the scheduler's own figures
                out[label] = _collection_figures(report, t0, time.time() - t0)
            t0 = time.time()  # the host's part of a fully-cached start: sample, validate, find every export
            sp = get_space("ofa").at_resolution(128)
            archs = sample(sp, n, "uniform", 0)
            arts = list(iter_space_artifacts(sp, archs, "onnx", resolution=128, cache_dir=cache))
            lookup_s = time.time() - t0
            hits = sum(cached(cache, arch_spec(sp, a, "onnx").key, "onnx") is not None for a in archs)
            assert len(arts) == hits == n
            import torch
            t0, k = time.time(), min(5, n)
            for a in archs[:k]:
                export_key(sp.build(a), (torch.randn(sp.input_shape(a)),), "onnx")
            old_s = (time.time() - t0) / k
        finally:
            stop_fleet(base, remove=True)
    return {"date": datetime.date.today().isoformat(), "machine": f"{platform.processor() or platform.machine()}, "
            f"{len(os.sched_getaffinity(0))} CPUs", "load_1min": os.getloadavg()[0], "archs": n,
            "devices": n_devices, "space": "ofa r=128, onnx, onnxruntime", "settings": "defaults",
            "export_workers": plan.workers, "streamed": plan.stream, **out,
            "host_prep_s": round(lookup_s, 3), "cache_hits": hits, "content_key_s_per_arch": round(old_s, 3),
            "goals": {"duty_cycle_cached": 0.9, "first_timing_s_at_200": 3.0}}


def per_model_overhead(report, rounds: int) -> dict:
    """Wall time per model beyond its timed sections (warmup and timed runs of all its rounds), from a device's
    first measure call to its end: shipping, requests, loading and reusing sessions, telemetry, storing rows.
    The goal (issue 14): < 0.3 s per model for small ONNX models over SSH. agent_starts: 1 = one agent per
    device for the whole run."""
    out = {}
    for d in report.devices:
        n = d.measured + d.errors
        jobs_s = d.wall_s - (d.start_s or 0.0)
        out[d.device] = {"models": n, "rounds": rounds, "agent_starts": d.agent_starts,
                         "start_s": d.start_s, "overhead_s_per_model": (jobs_s - d.timing_s) / n,
                         "overhead_s_per_round": (jobs_s - d.timing_s) / n / rounds,
                         "timed_s_per_model": d.timing_s / n}
    return out




def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", type=int, default=100)
    ap.add_argument("--devices", type=int, default=2)
    ap.add_argument("--min-time", type=float, default=0.5, help="minimum timed seconds per model")
    ap.add_argument("--max-time", type=float, default=1.0)
    ap.add_argument("--ofa-archs", type=int, default=0, help="also run the OFA export pipeline on N archs (200: "
                                                                  "the goal's size)")
    ap.add_argument("--rounds", type=int, default=4, help="shuffled rounds per model (the default 4)")
    ap.add_argument("--json", type=Path, default=JSON, help="where to write the figures")
    args = ap.parse_args()
    if args.ofa_archs:
        section = export_pipeline(args.ofa_archs, args.devices)
        write_section("export_pipeline", section, args.json)
        print(json.dumps(section, indent=2))
    if not args.models:
        return
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
            settings = Settings(repeats_min_s=args.min_time, repeats_max_s=args.max_time, rounds=args.rounds)
            load = os.getloadavg()[0]
            report = collect(make_jobs(arts, [d.name for d in devices], "onnxruntime", settings), devices,
                             out=tmp / "data", progress=False, reference=False)  # the transport's own overhead
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
                  f"{platform.processor() or platform.machine()}, {len(os.sched_getaffinity(0))} CPUs")
    console.print(table)
    overhead = per_model_overhead(report, args.rounds)
    console.print("per-model overhead beyond the timed sections (goal < 0.3 s): " + ", ".join(
        f"{k} {v['overhead_s_per_model']:.3f} s ({v['overhead_s_per_round'] * 1e3:.0f} ms per round, "
        f"{v['agent_starts']} agent start(s))" for k, v in overhead.items()))
    write_section("per_model_overhead", {
        "devices": overhead, "models": args.models, "min_time": args.min_time, "max_time": args.max_time,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "load_1min": [load, os.getloadavg()[0]], "date": time.strftime("%Y-%m-%d")}, args.json)
    if not report.ok:
        console.print("[red]some devices failed:[/] " + "; ".join(d.message for d in report.devices if d.message))


if __name__ == "__main__":
    main()
