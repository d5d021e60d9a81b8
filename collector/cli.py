"""`latkit` command line: a thin layer over collector.api."""
from __future__ import annotations

import argparse
import json
import sys

from rich.console import Console
from rich.table import Table

from . import api
from .devices import list_devices
from .errors import LatkitError
from .job import RUNTIMES, Settings

console = Console(width=None if sys.stdout.isatty() else 140)


def _settings(args) -> Settings:
    cores = tuple(int(c) for c in args.cores.split(",")) if args.cores else None
    return Settings(threads=args.threads, cores=cores, batch_size=args.batch_size,
                    repeats_min_count=args.repeats, repeats_min_s=args.min_time, repeats_max_s=args.max_time,
                    cv_target=args.cv_target)


def cmd_measure(args) -> int:
    m = api.measure(args.model, device=args.device, runtime=args.runtime, settings=_settings(args), out=args.out,
                    force=args.force)
    print(m.summary())
    return 0 if m.status == "ok" else 1


def cmd_device_list(args) -> int:
    table = Table("name", "transport", "python", "tags")
    for d in list_devices():
        table.add_row(d.name, d.transport, d.python or "(host's)", ",".join(d.tags))
    console.print(table)
    return 0


def cmd_device_probe(args) -> int:
    print(json.dumps(api.probe(args.name), indent=2))
    return 0


def cmd_data_show(args) -> int:
    g = api.data_summary(args.dir)
    table = Table("device", "runtime", "space", "rows", "ok", "min ms", "median ms", "max ms", "newest (UTC)")
    for r in g.to_pylist():
        fmt = lambda v: "-" if v is None else f"{v:.4g}"  # noqa: E731
        table.add_row(r["device"], r["runtime"], r["space"], str(r["status_count"]), str(r["ok_sum"]),
                      fmt(r["latency_ms_min"]), fmt(r["latency_ms_approximate_median"]), fmt(r["latency_ms_max"]),
                      r["measured_at_max"].strftime("%Y-%m-%d %H:%M") if r["measured_at_max"] else "-")
    console.print(table)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="latkit", description="Measure neural-network latency on real devices.")
    sub = p.add_subparsers(dest="command", required=True)

    m = sub.add_parser("measure", help="time one model file on a device and append the row to a dataset")
    m.add_argument("model", help=".onnx, .tflite, .pt2 (torch.export) or .pt (TorchScript) file")
    m.add_argument("--device", default="local", help="registered device name (default: local)")
    m.add_argument("--runtime", choices=RUNTIMES, help="default: from the file extension")
    m.add_argument("--threads", type=int, default=1, help="runtime threads (default 1)")
    m.add_argument("--cores", help="pin the agent to these CPU ids, e.g. 0 or 2,3")
    m.add_argument("--batch-size", type=int, help="fills a dynamic batch dimension")
    m.add_argument("--repeats", type=int, default=Settings.repeats_min_count, help="minimum timed runs")
    m.add_argument("--min-time", type=float, default=Settings.repeats_min_s, help="minimum timed seconds")
    m.add_argument("--max-time", type=float, default=Settings.repeats_max_s,
                   help="stop repeating after this many timed seconds once the minimums are met")
    m.add_argument("--cv-target", type=float, default=Settings.cv_target,
                   help="keep repeating while std/mean is above this (default 0.01)")
    m.add_argument("--out", default="latkit-data", help="dataset directory or URI (default ./latkit-data)")
    m.add_argument("--force", action="store_true", help="measure again even if the dataset has this key")
    m.set_defaults(func=cmd_measure)

    dev = sub.add_parser("device", help="list and probe devices").add_subparsers(dest="device_command", required=True)
    dev.add_parser("list", help="registered devices").set_defaults(func=cmd_device_list)
    pr = dev.add_parser("probe", help="print what a device reports about itself")
    pr.add_argument("name")
    pr.set_defaults(func=cmd_device_probe)

    data = sub.add_parser("data", help="inspect datasets").add_subparsers(dest="data_command", required=True)
    show = data.add_parser("show", help="summary table of a dataset")
    show.add_argument("dir", nargs="?", default="latkit-data")
    show.set_defaults(func=cmd_data_show)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except LatkitError as e:
        print(f"latkit: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("latkit: interrupted; rows measured so far are kept", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
