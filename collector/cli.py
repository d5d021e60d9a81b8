"""`latkit` command line: a thin layer over collector.api."""
from __future__ import annotations

import argparse
import json
import sys
from concurrent.futures import ThreadPoolExecutor

from rich.console import Console
from rich.table import Table

from . import api
from .devices import Registry
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
                    force=args.force, registry=Registry(args.registry))
    print(m.summary())
    return 0 if m.status == "ok" else 1


def cmd_collect(args) -> int:
    devices = [d for d in args.devices.split(",") if d]
    report = api.collect_models(api.model_files(args.models), devices, args.runtime, _settings(args), args.out,
                                registry=Registry(args.registry), retries=args.retries, job_timeout=args.job_timeout,
                                progress=not args.quiet, retry_errors=args.retry_errors)
    table = Table("device", "jobs", "skipped", "measured", "errors", "left", "status")
    for d in report.devices:
        table.add_row(d.device, str(d.total), str(d.skipped), str(d.measured), str(d.errors), str(d.remaining),
                      d.status + (f": {d.message}" if d.message else ""))
    console.print(table)
    if not report.ok:
        print("latkit: some devices failed; fix them and re-run the same command to finish (done rows are kept)",
              file=sys.stderr)
    return 0 if report.ok else 1


def cmd_device_add(args) -> int:
    dev = api.add_device(args.name, args.host, args.port, args.user, args.key, args.python, args.workdir,
                         [t for t in (args.tags or "").split(",") if t], args.trust_host_key, Registry(args.registry))
    print(f"added {dev.name} ({dev.address}): {dev.probe.get('cpu_model')}, {dev.probe.get('cpu_count')} CPUs, "
          f"runtimes {', '.join(f'{k} {v}' for k, v in dev.probe.get('runtimes', {}).items()) or 'none'}; "
          f"fingerprint {dev.fingerprint}")
    return 0


def cmd_device_list(args) -> int:
    devices = Registry(args.registry).devices()
    if args.no_check:
        up = [None] * len(devices)
    else:
        with ThreadPoolExecutor(max_workers=min(32, len(devices))) as pool:
            up = list(pool.map(api.reachable, devices))
    table = Table("name", "host", "reachable", "runtimes", "tags", "last probe")
    for d, ok in zip(devices, up):
        runtimes = ", ".join(f"{k} {v}" for k, v in d.probe.get("runtimes", {}).items())
        table.add_row(d.name, d.address, "?" if ok is None else ("yes" if ok else "no"),
                      runtimes or ("(host's)" if d.transport == "local" else "-"), ",".join(d.tags), d.last_probe or "-")
    console.print(table)
    return 0


def cmd_device_probe(args) -> int:
    print(json.dumps(api.reprobe_device(args.name, Registry(args.registry)), indent=2))
    return 0


def cmd_device_remove(args) -> int:
    Registry(args.registry).remove(args.name)
    print(f"removed {args.name}")
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


def _protocol_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--runtime", choices=RUNTIMES, help="default: from each file's extension")
    p.add_argument("--threads", type=int, default=1, help="runtime threads (default 1)")
    p.add_argument("--cores", help="pin the agent to these CPU ids, e.g. 0 or 2,3")
    p.add_argument("--batch-size", type=int, help="fills a dynamic batch dimension")
    p.add_argument("--repeats", type=int, default=Settings.repeats_min_count, help="minimum timed runs")
    p.add_argument("--min-time", type=float, default=Settings.repeats_min_s, help="minimum timed seconds")
    p.add_argument("--max-time", type=float, default=Settings.repeats_max_s,
                   help="stop repeating after this many timed seconds once the minimums are met")
    p.add_argument("--cv-target", type=float, default=Settings.cv_target,
                   help="keep repeating while the robust CV is above this (default 0.01)")
    p.add_argument("--out", default="latkit-data", help="dataset directory or URI (default ./latkit-data)")


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--registry", help="devices file (default $LATKIT_REGISTRY or ~/.config/latkit/devices.toml)")
    p = argparse.ArgumentParser(prog="latkit", description="Measure neural-network latency on real devices.")
    sub = p.add_subparsers(dest="command", required=True)

    m = sub.add_parser("measure", parents=[common], help="time one model file on a device, append the row")
    m.add_argument("model", help=".onnx, .tflite, .pt2 (torch.export) or .pt (TorchScript) file")
    m.add_argument("--device", default="local", help="registered device name (default: local)")
    _protocol_args(m)
    m.add_argument("--force", action="store_true", help="measure again even if the dataset has this key")
    m.set_defaults(func=cmd_measure)

    c = sub.add_parser("collect", parents=[common], help="time many models on many devices in parallel (resumable)")
    c.add_argument("--models", nargs="+", required=True, metavar="DIR_OR_FILE", help="model files or folders")
    c.add_argument("--devices", required=True, help="comma-separated device names")
    _protocol_args(c)
    c.add_argument("--retries", type=int, default=3, help="reconnects per device before it is marked failed")
    c.add_argument("--job-timeout", type=float, default=600.0, help="seconds before a hung measurement is killed")
    c.add_argument("--retry-errors", action="store_true", help="also re-measure jobs stored with a model error")
    c.add_argument("--quiet", action="store_true", help="no progress bars")
    c.set_defaults(func=cmd_collect)

    dev = sub.add_parser("device", help="register, list and probe devices").add_subparsers(dest="device_command",
                                                                                          required=True)
    a = dev.add_parser("add", parents=[common], help="register an SSH device: verify host key, deploy agent, probe")
    a.add_argument("name")
    a.add_argument("--host", required=True)
    a.add_argument("--port", type=int, default=22)
    a.add_argument("--user")
    a.add_argument("--key", help="private key file (default: ssh-agent and ~/.ssh keys)")
    a.add_argument("--python", help="Python on the device (default python3)")
    a.add_argument("--workdir", help="folder on the device for the agent and models (default ~/.latkit)")
    a.add_argument("--tags", help="comma-separated, e.g. cpu,arm,phone")
    a.add_argument("--trust-host-key", action="store_true", help="record an unknown host key (a changed one is "
                                                                 "always refused)")
    a.set_defaults(func=cmd_device_add)
    ls = dev.add_parser("list", parents=[common], help="registered devices and whether they answer now")
    ls.add_argument("--no-check", action="store_true", help="do not contact the devices")
    ls.set_defaults(func=cmd_device_list)
    pr = dev.add_parser("probe", parents=[common], help="print what a device reports about itself")
    pr.add_argument("name")
    pr.set_defaults(func=cmd_device_probe)
    rm = dev.add_parser("remove", parents=[common], help="forget a device")
    rm.add_argument("name")
    rm.set_defaults(func=cmd_device_remove)

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
