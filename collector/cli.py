"""`latkit` command line: a thin layer over collector.api.

The contract scripts rely on: results on stdout (one JSON document with --json), progress and messages on
stderr (bars on a terminal, log lines otherwise; -q quiet, -v verbose). Every failure is one line on stderr,
`latkit: error: ...`, naming the option, file or device; exit 2 when the command was wrong (checked before
any exporting, timing or training), 1 when valid work failed (a device, a model, an export), 130 / 143 on
SIGINT / SIGTERM. A traceback appears only with LATKIT_DEBUG=1.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import re
import signal
import sys
import traceback
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

from rich.console import Console
from rich.table import Table

from . import api, compact, dataset, schema, validate
from .cliargs import Parser, add_globals, finish, merge_globals, parser_of
from .devices import Registry
from .errors import EXTRAS, Failure, Interrupted, LatkitError, missing
from .job import NUMBER, RUNTIMES, WHOLE, Settings
from .progress import Steps
from .ray_executor import parse_executor
from .text import CleanFormatter, cell, clean

console = Console(width=None if sys.stdout.isatty() else 140)
log = logging.getLogger("latkit")
SEED = validate.arg_whole(0, WHOLE["seed"][1])


def _whole(name: str, hi=None):
    """The argparse type of the Settings field `name` (its range from collector/job.py)."""
    lo, top = WHOLE[name]
    return validate.arg_whole(lo, hi or top)


def _number(name: str):
    lo, hi, open_ = NUMBER[name]
    return validate.arg_number(lo, hi, open_, open_)


def _jsonable(x):
    """Plain JSON values: datetimes as ISO text, NaN and infinities as null (JSON has neither)."""
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, datetime):
        return x.isoformat()
    return x


def _print_json(doc) -> None:
    print(json.dumps(_jsonable(doc), indent=2))


def _settings(args) -> Settings:
    return Settings(threads=args.threads, cores=args.cores, batch_size=args.batch_size,
                    repeats_min_count=args.repeats, repeats_min_s=args.min_time, repeats_max_s=args.max_time,
                    ci_target=args.ci_target, accelerator=args.accelerator, dtype=args.dtype,
                    cuda_graphs=args.cuda_graphs, include_copies=args.include_copies, rounds=args.rounds,
                    cooldown_temp_c=args.cooldown_temp, cooldown_max_s=args.cooldown_max)


def _row_json(m) -> dict:
    """A measurement as JSON: its store row without the raw samples (they are in the dataset)."""
    row = m.to_row()
    row.pop("samples_ms")
    row["warnings"] = list(m.warnings)
    row["stored"] = m.stored  # read back from the dataset, not timed by this command
    return row


def cmd_measure(args) -> int:
    m = api.measure(args.model, device=args.device, runtime=args.runtime, settings=_settings(args), out=args.out,
                    force=args.force, registry=Registry(args.registry), wait=not args.no_wait)
    if args.json:
        _print_json(_row_json(m))
    elif m.status == "ok":
        print(clean(m.summary(), None))
    if m.status != "ok":  # the row is stored; the failure is one line on stderr (main prints it), exit 1
        raise Failure(f"{clean(m.summary(), 2000)} (the error row is kept in {args.out}; fix the cause and run "
                      "again with --force to measure it again)")
    return 0


def cmd_collect(args) -> int:
    devices = [d for d in args.devices.split(",") if d]
    if not devices:
        raise LatkitError("--devices names no device; give comma-separated names (see latkit device list)")
    if bool(args.models) == bool(args.space):
        raise LatkitError("give either --models DIR_OR_FILES or --space S --n N")
    common = dict(registry=Registry(args.registry), retries=args.retries, job_timeout=args.job_timeout,
                  progress=not args.quiet, retry_errors=args.retry_errors, wait=not args.no_wait,
                  executor=parse_executor(args.executor), cache_max_gb=args.cache_max_gb)
    if args.space:
        if not args.n:
            raise LatkitError("--space needs --n (how many archs to sample)")
        settings = dataclasses.replace(_settings(args), batch_size=None)  # the export fixes the batch size
        report = api.collect_space(args.space, args.n, devices, args.runtime or "onnxruntime", args.sampler,
                                   args.seed, settings, args.out, batch_size=args.batch_size or 1,
                                   resolution=args.resolution, export_workers=args.export_workers, **common)
    else:
        for option in ("n", "resolution", "export_workers"):
            if getattr(args, option) is not None:
                raise LatkitError(f"--{option.replace('_', '-')} applies to --space only; leave it out with --models")
        report = api.collect_models(api.model_files(args.models), devices, args.runtime, _settings(args), args.out,
                                    **common)
    failed = report.failed_models
    if args.json:
        _print_json({"ok": report.ok and not failed, "summary": report.line(),
                     "devices": [{**{k: v for k, v in dataclasses.asdict(d).items() if k != "failed"},
                                  "remaining": d.remaining} for d in report.devices],
                     "failed_models": [dict(zip(("device", "arch", "error_kind", "error"), f)) for f in failed]})
    else:
        table = Table("device", "jobs", "skipped", "measured", "errors", "left", "status")
        for d in report.devices:
            table.add_row(cell(d.device), str(d.total), str(d.skipped), str(d.measured), str(d.errors),
                          str(d.remaining), d.status + (f": {cell(d.message, 600)}" if d.message else ""))
        console.print(table)
        if failed:
            table = Table("device", "model that failed", "error", title=f"{len(failed)} model(s) failed")
            for dev, arch, kind, error in failed:
                table.add_row(cell(dev), cell(arch, 120), cell(f"{kind}: {error}", 600))
            console.print(table)
    down = [d.device for d in report.devices if d.status != "done"]
    if down or failed:
        what = [f"{len(down)} device(s) failed ({', '.join(down)})"] if down else []
        what += [f"{len(failed)} model(s) failed (error rows kept; listed above)"] if failed else []
        print(f"latkit: error: {' and '.join(what)}; fix them and re-run the same command to finish (done rows "
              "are kept; --retry-errors measures failed models again)", file=sys.stderr)
        return 1
    return 0


def cmd_doctor(args) -> int:
    """Per device one line (or one JSON document); exit 1 when a device has a problem that spoils timing."""
    from .doctor import doctor, line
    names = [d for d in (args.devices or "").split(",") if d] or None
    found = doctor(names, Registry(args.registry), args.cores)
    bad = [r["device"] for r in found if r["problems"]]
    if args.json:
        _print_json({"ok": not bad, "devices": found})
    else:
        for r in found:
            print(line(r))
    if bad:
        print(f"latkit: error: {len(bad)} device(s) not fit for timing ({', '.join(bad)}): fix the problems named "
              "above, then run latkit doctor again", file=sys.stderr)
        return 1
    return 0


def cmd_data_retest(args) -> int:
    from .retest import retest
    r = retest(args.dir, args.n, args.seed, args.models or (), Registry(args.registry), progress=not args.quiet,
               job_timeout=args.job_timeout)
    table = Table("statistic", "spearman", "median rel. diff", "p90 rel. diff")
    for k, v in r["statistics"].items():
        table.add_row(k, f"{v['spearman']:.4f}", f"{v['median_rel_diff'] * 100:.2f} %", f"{v['p90_rel_diff'] * 100:.2f} %")
    console.print(table)
    print(f"{r['n']} rows measured again into {args.dir}/{r['side_table']}; the card's test-retest section "
          f"is refreshed by latkit data card {args.dir}")
    if (Path(args.dir) / "README.md").exists():
        dataset.write_card(args.dir)
    return 0


def cmd_device_add(args) -> int:
    dev = api.add_device(args.name, args.host, args.port, args.user, args.key, args.python, args.workdir,
                         [t for t in (args.tags or "").split(",") if t], args.trust_host_key, Registry(args.registry),
                         lease=args.lease, ssh_config=args.ssh_config)
    runtimes = ', '.join(f'{k} {v}' for k, v in dev.probe.get('runtimes', {}).items()) or 'none'
    print(clean(f"added {dev.name} ({_route(dev)}): {dev.probe.get('cpu_model')}, {dev.probe.get('cpu_count')} "
                f"CPUs, runtimes {runtimes}; fingerprint {dev.fingerprint}", None))
    return 0


def cmd_device_list(args) -> int:
    devices = Registry(args.registry).devices()
    if args.no_check:
        up = [None] * len(devices)
    else:
        with ThreadPoolExecutor(max_workers=min(32, len(devices))) as pool:
            up = list(pool.map(api.reachable, devices))
    if args.json:
        _print_json([{"name": d.name, "transport": d.transport, "address": d.address, "reachable": ok,
                      "runtimes": d.probe.get("runtimes", {}), "tags": list(d.tags), "fingerprint": d.fingerprint,
                      "last_probe": d.last_probe or None} for d, ok in zip(devices, up)])
        return 0
    table = Table("name", "host", "reachable", "runtimes", "tags", "last probe")
    for d, ok in zip(devices, up):
        runtimes = ", ".join(f"{k} {v}" for k, v in d.probe.get("runtimes", {}).items())
        table.add_row(cell(d.name), cell(d.address), "?" if ok is None else ("yes" if ok else "no"),
                      cell(runtimes) or ("(host's)" if d.transport == "local" else "-"),
                      cell(",".join(d.tags)), cell(d.last_probe) or "-")
    console.print(table)
    return 0


def _route(dev) -> str:
    """Where an ssh device's entry leads: `gw (u@10.0.0.1:22) -> board (u@192.168.1.7:22)`."""
    return " -> ".join(map(str, api.ssh_route(dev)))


def cmd_device_show(args) -> int:
    dev = Registry(args.registry).get(args.name)
    entry = {"name": dev.name, **dev.to_toml()}
    if dev.transport == "ssh":
        entry["route"] = [dataclasses.asdict(h) for h in api.ssh_route(dev)]
    if args.json:
        _print_json(entry)
        return 0
    for k, v in entry.items():
        if k not in ("route", "probe"):
            print(clean(f"{k}: {', '.join(map(str, v)) if isinstance(v, list) else v}", None))
    if dev.transport == "ssh":
        print(clean(f"route: {_route(dev)}", None))
    return 0


def cmd_device_probe(args) -> int:
    _print_json(api.reprobe_device(args.name, Registry(args.registry)))  # JSON with or without --json
    return 0


def cmd_device_remove(args) -> int:
    Registry(args.registry).remove(args.name)
    print(f"removed {args.name}")
    return 0


def cmd_data_show(args) -> int:
    groups = api.data_summary(args.dir)
    if args.json:
        _print_json([dict({k: v for k, v in g.items() if k != "latency_ms"},
                          **dict(zip(("min_ms", "median_ms", "max_ms"), g["latency_ms"] or (None,) * 3)))
                     for g in groups])
        return 0
    table = Table("device", "runtime", "space", "rows", "ok", "missed CI", "min ms", "median ms", "max ms",
                  "newest (UTC)")
    for r in groups:
        lat = [f"{v:.4g}" for v in r["latency_ms"]] if r["latency_ms"] else ["-"] * 3
        newest = r["newest"].strftime("%Y-%m-%d %H:%M") if r["newest"] is not None else "-"
        table.add_row(cell(r["device"]), cell(r["runtime"]), cell(r["space"]), str(r["rows"]), str(r["ok"]),
                      str(r["missed_ci"]), *lat, newest)
    console.print(table)
    return 0


def cmd_data_card(args) -> int:
    print(f"wrote {dataset.write_card(args.dir, args.title, args.licence)}")
    return 0


def cmd_data_schema(args) -> int:
    if args.json:
        _print_json([c.as_dict() for c in schema.COLUMNS])
        return 0
    table = Table("column", "type", "unit", "meaning")
    for c in schema.COLUMNS:
        table.add_row(c.name, str(c.type), c.unit, c.description)
    console.print(table)
    return 0


def cmd_data_compact(args) -> int:
    r = compact.compact(args.dir)
    print(f"{args.dir}: {r.files_before} files -> {r.files_after}, {r.rows} rows"
          + (f"; removed {r.leftovers_removed} files left by an interrupted compaction" if r.leftovers_removed else ""))
    return 0


def cmd_data_migrate(args) -> int:
    for folder, rows in compact.migrate(args.dir).items():
        print(f"{folder}: {rows} rows under data/")
    return 0


def cmd_data_import_help(args) -> int:
    """One table at a time, so progress can name each (a folder without tables gets import_help's own error)."""
    src = Path(args.src)
    tables = sorted(src.glob("*_latency.parquet")) if src.is_dir() else [src] if src.is_file() else []
    n = 0 if tables else dataset.import_help(src, args.out)  # no table there: its one-line error, no progress
    with Steps("data import-help", not args.quiet) as step:
        for i, table in enumerate(tables, 1):
            step(f"{i}/{len(tables)}: {table.name}")
            n += dataset.import_help(table, args.out)
    print(f"imported {n} rows into {args.out}")
    return 0


def cmd_data_plot(args) -> int:
    for path in dataset.plot(args.dir, args.out):
        print(path)
    return 0


def _fit_output(args) -> Path:
    """Where fit saves the model: --out, else beside the data (DATA/models/ of a dataset folder, the folder of
    a Parquet table); for the tables latkit ships (inside its package) ./models/ instead. Checked writable,
    with --json and --report, before any training, and never over a file that is not a model."""
    from latkit.predictor import modelfile
    validate.name(args.device, "--device")  # it names the model file
    if not args.out and "://" in args.data:
        raise LatkitError(f"--data {args.data} is not a local path, so the model has no default place; give --out")
    data, name = Path(args.data), f"{args.space}-{args.device}.latkit-model"
    shipped = data.resolve().is_relative_to(dataset.HELP_DIR.resolve())
    folder = Path("models") if shipped else data.parent if data.is_file() else data / "models"
    out = validate.writable_file(args.out or folder / name, "give --out a writable file path")
    modelfile.check_output(out, "give --out a new path or a .latkit-model file to replace")
    if args.json:
        validate.writable_file(args.json, "give --json a writable file path")
    if args.report:
        validate.writable_dir(args.report, "give --report a writable folder")
    return out


def cmd_predictor_fit(args) -> int:
    from latkit.predictor.data import LatencyTable
    from latkit.predictor.esm import fit
    from latkit.predictor.metrics import METRICS
    from latkit.predictor.report import write_report
    table = LatencyTable(args.data, args.space)  # bad data or device: one line before anything is written
    table.check_devices([args.device])
    out = _fit_output(args)
    with Steps("predictor fit", not args.quiet) as step:  # progress on stderr: a fit takes minutes
        surrogate, result, test = fit(table, table.space, args.device, args.budget, args.sampler, args.model, args.seed,
                                      progress=step)
    surrogate.save(out)
    shown = {k: result[k] for k in (*METRICS, "n_train", "n_test", "model")}
    print(f"{args.space} on {args.device}: " + ", ".join(
        f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in shown.items()) + f"; saved {out}")
    if args.json:
        Path(args.json).write_text(json.dumps(_jsonable(shown), indent=2))
    if args.report:
        write_report(args.report, f"{args.space} / {args.device} / {result['model']} ({result['n_train']} samples)",
                     surrogate.predict(test), table.latency(args.device, test), shown)
    return 0


def _live_settings(args) -> Settings:
    return Settings(threads=args.threads, repeats_min_count=args.repeats, repeats_min_s=args.min_time,
                    repeats_max_s=args.max_time, rounds=args.rounds)


def _model_out(args, default: str) -> Path:
    from latkit.predictor import modelfile
    validate.name(args.device, "--device")  # it names the model file
    out = validate.writable_file(args.out or Path(args.data) / "models" / default, "give --out a writable file path")
    modelfile.check_output(out, "give --out a new path or a .latkit-model file to replace")
    return out


def cmd_predictor_build(args) -> int:
    from latkit.predictor.build import build, write_build_report
    out = _model_out(args, f"{args.space}-{args.device}.latkit-model")
    report_dir = validate.writable_dir(args.report or out.with_name(out.name.split(".")[0] + "-report"),
                                       "give --report a writable folder")
    model, r = build(args.space, args.device, args.target_acc, args.max_archs, args.data, args.heldout, args.batch,
                     _live_settings(args), args.seed, registry=Registry(args.registry), log=log.info)
    model.save(out)
    write_build_report(report_dir, args.space, args.device, r)
    print(f"{args.space} on {args.device}: held-out ±10 % {r['acc10'] * 100:.1f} % (target "
          f"{args.target_acc * 100:.0f} %{'' if r['reached'] else ', not reached'}), spearman {r['spearman']:.3f}, "
          f"{r['n_train']} + {r['n_heldout']} held-out archs measured; measuring {r['measure_s']:.0f} s, fitting "
          f"{r['fit_s']:.1f} s; saved {out}, report in {report_dir}")
    return 0


def cmd_predictor_adapt(args) -> int:
    from latkit.predictor.adapt import adapt
    out = _model_out(args, f"{args.space}-{args.device}-adapt.latkit-model")
    model, r = adapt(args.device, args.space, args.n, args.sources or (), args.data, _live_settings(args), args.seed,
                     Registry(args.registry))
    model.save(out)
    print(f"{args.space} on {args.device}: {r['n']} archs measured; expected spearman {r['cv_spearman']:.3f}, "
          f"±10 % {r['cv_acc10'] * 100:.0f} % (5-fold CV on them); {r['seconds']:.0f} s; saved {out}")
    return 0


def cmd_predictor_transfer(args) -> int:
    from latkit.predictor.transfer import transfer
    split = lambda s: [x for x in s.split(",") if x]  # noqa: E731
    if args.json:
        validate.writable_file(args.json, "give --json a writable file path")
    if args.out:
        validate.writable_dir(args.out, "give --out a writable folder")
    with Steps("predictor transfer", not args.quiet) as step:
        r = transfer(args.data, args.space, split(args.source), split(args.target), args.target_samples,
                     args.source_samples, args.seeds, use_gnn=not args.no_gnn, save_dir=args.out, progress=step)
    table = Table("target", "spearman", "± (seeds)", "kendall", "mape %")
    for dev, m in r["per_target"].items():
        table.add_row(dev, f"{m['spearman']:.3f}", f"{m['spearman_std']:.3f}", f"{m['kendall']:.3f}", f"{m['mape']:.1f}")
    console.print(table)
    print(f"mean spearman {r['mean_spearman']:.3f} ± {r['mean_spearman_std']:.3f} over {r['seeds']} seeds "
          f"in {r['seconds']:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(_jsonable(r), indent=2))
    for path in r.get("saved", []):
        print(f"saved {path}")
    return 0


def cmd_predictor_predict(args) -> int:
    from latkit.collector.spaces import get_space
    from latkit.predictor.models import load
    space = get_space(args.space)
    if args.file:
        validate.readable_file(args.file, "--file")
    model = load(args.model)
    if model.space != args.space:
        raise LatkitError(f"{args.model} predicts {model.space}, not {args.space}; give --space {model.space}")
    if args.all:
        archs = space.enumerate()
    elif args.file:
        try:
            text = Path(args.file).read_text()
        except UnicodeDecodeError:
            raise LatkitError(f"--file {args.file} is not text; give one arch string per line") from None
        archs = [line.strip() for line in text.splitlines() if line.strip()]
        if not archs:
            raise LatkitError(f"--file {args.file} holds no archs; give one arch string per line")
    else:
        archs = args.arch
    archs = [space.validate(a) for a in archs]
    out = sys.stdout
    if args.std:
        try:
            pred, std = model.predict(archs, return_std=True)
        except TypeError:
            raise LatkitError(f"{args.model} is a single {type(model).__name__} model without a spread; for --std use "
                              "a model saved by latkit predictor fit, build, adapt or transfer, or save "
                              "latkit.predictor.ensemble.Ensemble(model) from Python") from None
        out.write("arch\tlatency_ms\tstd_ms\n")
        for a, p, s in zip(archs, pred, std):
            out.write(f"{a}\t{p:.6g}\t{s:.3g}\n")
        return 0
    pred = model.predict(archs)
    out.write("arch\tlatency_ms\n")
    for a, p in zip(archs, pred):
        out.write(f"{a}\t{p:.6g}\n")
    return 0


def _timing_args(p: argparse.ArgumentParser) -> None:
    """The timing protocol options every measuring command takes (Settings fields, ranges from job.py)."""
    p.add_argument("--threads", type=_whole("threads"), default=1, help="runtime threads (default 1; 1 to 256)")
    p.add_argument("--repeats", type=_whole("repeats_min_count", Settings.repeats_max_count),
                   default=Settings.repeats_min_count, help="minimum timed runs per round (1 to 10000)")
    p.add_argument("--min-time", type=_number("repeats_min_s"), default=Settings.repeats_min_s,
                   help="minimum timed seconds per round (0 to 3600)")
    p.add_argument("--max-time", type=_number("repeats_max_s"), default=Settings.repeats_max_s,
                   help="stop a round after this many timed seconds once the minimums are met (0 to 3600)")
    p.add_argument("--rounds", type=_whole("rounds"), help="shuffled rounds per model (default 4 on cpu, 1 on cuda)")


def _protocol_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--runtime", choices=RUNTIMES, help="default: from each file's extension")
    _timing_args(p)
    p.add_argument("--cores", type=validate.arg_cores, help="pin the agent to these CPU ids, e.g. 0 or 2,3")
    p.add_argument("--batch-size", type=_whole("batch_size"),
                   help="batch size, 1 to 4096 (with --space: exported at it; else fills a dynamic batch)")
    p.add_argument("--ci-target", type=_number("ci_target"), default=Settings.ci_target,
                   help="stop a round once the 95%% CI of latency_ms's quantile (p10 on a CPU, median on a GPU) is within +- this fraction (default 0.005; 0 < x < 1)")
    p.add_argument("--cooldown-temp", type=_number("cooldown_temp_c"), metavar="C",
                   help="before each model wait until the device's hottest sensor reads <= C degrees")
    p.add_argument("--cooldown-max", type=_number("cooldown_max_s"), default=Settings.cooldown_max_s, metavar="S",
                   help="wait at most S seconds for --cooldown-temp (default 300)")
    p.add_argument("--no-wait", action="store_true", help="fail at once if another collection holds the device")
    p.add_argument("--accelerator", default="cpu", choices=["cpu", "cuda"],
                   help="cuda: torch on the GPU timed with CUDA events, or onnxruntime's CUDA EP")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"], help="torch on cuda")
    p.add_argument("--cuda-graphs", action=argparse.BooleanOptionalAction, default=None,
                   help="torch on cuda: replay the forward as a CUDA graph (default on; --no-cuda-graphs times eager)")
    p.add_argument("--include-copies", action="store_true",
                   help="torch on cuda: time host->device input and device->host output copies too")
    p.add_argument("--out", default="latkit-data", help="dataset directory or URI (default ./latkit-data)")
    p.add_argument("--json", action="store_true", help="print one JSON document on stdout instead of text")


def _live_args(p: argparse.ArgumentParser) -> None:
    """Where and how a live predictor command measures."""
    p.add_argument("--data", default="latkit-data", help="dataset the measurements go to and resume from")
    _timing_args(p)


def _version() -> str:
    from importlib import metadata
    from latkit.agents.agent import AGENT_VERSION
    try:
        host = metadata.version("latkit")
    except metadata.PackageNotFoundError:
        host = "(not installed)"
    return f"latkit {host}, device agent {AGENT_VERSION}"


def build_parser() -> argparse.ArgumentParser:
    common = Parser(add_help=False)
    talk = common.add_mutually_exclusive_group()
    talk.add_argument("-v", "--verbose", action="store_true", help="debug lines on stderr (e.g. converter output)")
    talk.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr, only warnings and errors")
    registry = Parser(add_help=False, parents=[common])
    registry.add_argument("--registry",
                          help="devices file (default $LATKIT_REGISTRY or ~/.config/latkit/devices.toml)")
    p = Parser(prog="latkit", description="Measure neural-network latency on real devices.")
    p.add_argument("--version", action="version", version=_version(), help="print the host and agent versions and exit")
    add_globals(p)
    sub = p.add_subparsers(dest="command", title="commands")

    m = sub.add_parser("measure", parents=[registry], help="time one model file on a device, append the row")
    m.add_argument("model", help=".onnx, .tflite, .pt2 (torch.export) or .pt (TorchScript) file")
    m.add_argument("--device", default="local", help="registered device name (default: local)")
    _protocol_args(m)
    m.add_argument("--force", action="store_true", help="measure again even if the dataset has this key")
    m.set_defaults(func=cmd_measure)

    c = sub.add_parser("collect", parents=[registry], help="time many models on many devices in parallel (resumable)")
    c.add_argument("--models", nargs="+", metavar="DIR_OR_FILE", help="model files or folders")
    c.add_argument("--space", help="search space to sample archs from: nb201, fbnet, ofa")
    c.add_argument("--n", type=validate.arg_whole(1), help="number of archs to sample (with --space)")
    c.add_argument("--sampler", default="uniform", choices=["uniform", "balanced", "diverse"],
                   help="how archs are drawn from --space: uniform (default), balanced over FLOPs, diverse")
    c.add_argument("--seed", type=SEED, default=0, help="sampler seed (default 0)")
    c.add_argument("--resolution", type=validate.arg_whole(1),
                   help="input side (default: the space's; nb201, fbnet: 16-512 step 4; ofa: 128-224 step 4, "
                        "and the sampled archs carry it as r)")
    c.add_argument("--export-workers", type=validate.arg_whole(1, 256), metavar="N",
                   help="export the sampled archs on N processes while the devices time them (default: the host's "
                        "cores - 1, none on the cores a local device is pinned to with --cores; an unpinned local "
                        "device times after the exports; -v says what was chosen)")
    c.add_argument("--cache-max-gb", type=validate.arg_number(0), metavar="GB",
                   help="bound the host's export cache and each device's model cache (default: unbounded); least "
                        "recently used models go first, those measured on every device before them")
    c.add_argument("--devices", required=True, help="comma-separated device names")
    c.add_argument("--executor", default="local", metavar="local|ray[=ADDRESS]",
                   help="local (default): drive every device from this process; ray: exports as Ray tasks and "
                        "one Ray actor per device, placed on a node with the resource latkit-device:NAME "
                        "(ray starts a cluster here, ray=auto or ray=HOST:PORT joins one; pip install "
                        "'latkit[ray]')")
    _protocol_args(c)
    c.add_argument("--retries", type=validate.arg_whole(0, 100), default=3,
                   help="reconnects per device before it is marked failed")
    c.add_argument("--job-timeout", type=validate.arg_number(0, 86400, lo_open=True), default=600.0,
                   help="seconds before a hung measurement is killed (a timeout row, measured again next run)")
    c.add_argument("--retry-errors", action="store_true",
                   help="also measure again models stored as permanent errors (corrupt file, unsupported op)")
    c.set_defaults(func=cmd_collect)

    doc = sub.add_parser("doctor", parents=[registry], help="check devices before a long collection: reachable, "
                         "runtimes, governor, heat, load, busy cores, free disk (one line each)")
    doc.add_argument("--devices", help="comma-separated device names (default: every registered device and local)")
    doc.add_argument("--cores", type=validate.arg_cores, help="the CPU ids a collection will pin to (collect "
                     "--cores): a busy process on them is a problem")
    doc.add_argument("--json", action="store_true", help="print one JSON document on stdout instead of lines")
    doc.set_defaults(func=cmd_doctor)

    dev = sub.add_parser("device", help="register, list and probe devices").add_subparsers(dest="device_command",
                                                                                          title="commands")
    a = dev.add_parser("add", parents=[registry], help="register an SSH device: verify host key, deploy agent, probe")
    a.add_argument("name", help="the device's name in latkit (letters, digits, '.', '_', '-')")
    a.add_argument("--host", required=True, help="host name, address or ssh config Host alias of the device")
    a.add_argument("--port", type=validate.arg_whole(1, 65535), help="(default: the ssh config's Port, else 22)")
    a.add_argument("--user", help="(default: the ssh config's User, else yours)")
    a.add_argument("--key", help="private key file (default: the ssh config's IdentityFile, else ssh-agent and "
                                 "~/.ssh keys)")
    a.add_argument("--ssh-config", help="OpenSSH config whose Host entries resolve --host, with ProxyJump hops "
                                        "(default ~/.ssh/config)")
    a.add_argument("--python", help="Python on the device (default python3)")
    a.add_argument("--workdir", help="folder on the device for the agent and models (default ~/.latkit)")
    a.add_argument("--tags", help="comma-separated, e.g. cpu,arm,phone")
    a.add_argument("--trust-host-key", action="store_true", help="record an unknown host key (a changed one is "
                                                                 "always refused)")
    a.add_argument("--lease", help="the device's lease file (default: one per machine, "
                                   "<tempdir>/latkit-device.lease); give devices that share a machine their own")
    a.set_defaults(func=cmd_device_add)
    ls = dev.add_parser("list", parents=[registry], help="registered devices and whether they answer now")
    ls.add_argument("--no-check", action="store_true", help="do not contact the devices")
    ls.add_argument("--json", action="store_true", help="print one JSON document on stdout instead of a table")
    ls.set_defaults(func=cmd_device_list)
    sh = dev.add_parser("show", parents=[registry], help="a device's entry and the route ssh config resolves "
                                                          "it to (no contact)")
    sh.add_argument("name", help="a registered device (latkit device list)")
    sh.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    sh.set_defaults(func=cmd_device_show)
    pr = dev.add_parser("probe", parents=[registry], help="print what a device reports about itself (JSON)")
    pr.add_argument("name", help="a registered device, or local")
    pr.add_argument("--json", action="store_true", help="the output is JSON either way")
    pr.set_defaults(func=cmd_device_probe)
    rm = dev.add_parser("remove", parents=[registry], help="forget a device")
    rm.add_argument("name", help="a registered device (local is built in and stays)")
    rm.set_defaults(func=cmd_device_remove)

    pred = sub.add_parser("predictor", help="train and use latency predictors").add_subparsers(
        dest="predictor_command", title="commands")
    f = pred.add_parser("fit", parents=[common], help="ESM-style surrogate for one device from a dataset")
    f.add_argument("--data", required=True, help="latkit dataset folder or Parquet latency table")
    f.add_argument("--space", required=True, help="search space of the archs: nb201, fbnet or ofa")
    f.add_argument("--device", required=True, help="the device (as named in the data) to predict for")
    f.add_argument("--budget", type=validate.arg_whole(10), default=500,
                   help="training archs whose latency may be read (at least 10)")
    f.add_argument("--sampler", default="balanced", choices=["balanced", "uniform", "diverse"],
                   help="how the first training archs are chosen (default balanced over FLOPs)")
    f.add_argument("--model", default="auto", choices=["auto", "ridge", "gbdt", "rf", "mlp", "gnn"],
                   help="the estimator (default auto: the best 5-fold cross-validated Spearman)")
    f.add_argument("--seed", type=SEED, default=0, help="sampling and model seed (default 0)")
    f.add_argument("--out", help="where to save the model (default beside the data: DATA/models/SPACE-DEVICE"
                                 ".latkit-model for a dataset folder, SPACE-DEVICE.latkit-model next to a table)")
    f.add_argument("--json", help="write the metrics as JSON here")
    f.add_argument("--report", help="folder for a scatter PNG and a Markdown summary")
    f.set_defaults(func=cmd_predictor_fit)
    t = pred.add_parser("transfer", parents=[common], help="NASFLAT-style few-shot transfer to new devices")
    t.add_argument("--data", required=True, help="latkit dataset folder or Parquet latency table")
    t.add_argument("--space", required=True, help="search space of the archs: nb201, fbnet or ofa")
    t.add_argument("--source", required=True, help="comma-separated source devices")
    t.add_argument("--target", required=True, help="comma-separated target devices")
    t.add_argument("--target-samples", type=validate.arg_whole(3), default=20, help="at least 3 (default 20)")
    t.add_argument("--source-samples", type=validate.arg_whole(10), default=900,
                   help="archs per source to pretrain on, at least 10 (default 900)")
    t.add_argument("--seeds", type=validate.arg_whole(1, 100), default=3, help="1 to 100 (default 3)")
    t.add_argument("--no-gnn", action="store_true", help="source bank + proxies only (faster, a little weaker)")
    t.add_argument("--json", help="write the results as JSON here")
    t.add_argument("--out", help="folder to save each target's model (first seed) as SPACE-TARGET.latkit-model")
    t.set_defaults(func=cmd_predictor_transfer)
    b = pred.add_parser("build", parents=[registry], help="measure-fit loop on a live device until the surrogate "
                                                          "is accurate enough (resumable)")
    b.add_argument("--space", required=True, help="search space to sample archs from: nb201, fbnet or ofa")
    b.add_argument("--device", required=True, help="registered device to measure on")
    b.add_argument("--target-acc", type=validate.arg_number(0, 1, lo_open=True), default=0.95,
                   help="stop when this share of held-out archs is predicted within ±10 %% (default 0.95)")
    b.add_argument("--max-archs", type=validate.arg_whole(10), default=300, help="measurement budget, held-out "
                                                                                 "included (default 300)")
    b.add_argument("--heldout", type=validate.arg_whole(5), default=30, help="held-out archs (default 30)")
    b.add_argument("--batch", type=validate.arg_whole(5), default=20, help="archs per round (default 20)")
    b.add_argument("--out", help="model file (default DATA/models/SPACE-DEVICE.latkit-model)")
    b.add_argument("--report", help="report folder (default beside the model)")
    b.add_argument("--seed", type=SEED, default=0, help="sampling and model seed (default 0)")
    _live_args(b)
    b.set_defaults(func=cmd_predictor_build)
    ad = pred.add_parser("adapt", parents=[registry], help="few-shot predictor for a new device: measure N "
                                                            "chosen archs, transfer from HELP and --sources")
    ad.add_argument("--device", required=True, help="registered device to measure on")
    ad.add_argument("--space", default="nb201", help="search space (default nb201)")
    ad.add_argument("--n", type=validate.arg_whole(5), default=20, help="archs to measure (default 20)")
    ad.add_argument("--sources", nargs="+", metavar="DATASET", help="latkit datasets whose devices join the "
                                                                     "HELP sources")
    ad.add_argument("--out", help="model file (default DATA/models/SPACE-DEVICE-adapt.latkit-model)")
    ad.add_argument("--seed", type=SEED, default=0, help="sampling and model seed (default 0)")
    _live_args(ad)
    ad.set_defaults(func=cmd_predictor_adapt)
    pp = pred.add_parser("predict", parents=[common], help="latency_ms of archs from a saved model")
    pp.add_argument("--model", required=True, help="a .latkit-model file (predictor fit, transfer, build, adapt)")
    pp.add_argument("--space", required=True, help="the space the model predicts (checked against the file)")
    which = pp.add_mutually_exclusive_group(required=True)
    which.add_argument("--arch", nargs="+", help="arch strings of the space")
    which.add_argument("--file", help="one arch string per line")
    which.add_argument("--all", action="store_true", help="every arch of the space (nb201)")
    pp.add_argument("--std", action="store_true", help="also print each prediction's standard deviation (ms)")
    pp.set_defaults(func=cmd_predictor_predict)

    data = sub.add_parser("data", help="inspect datasets").add_subparsers(dest="data_command", title="commands")
    show = data.add_parser("show", parents=[common], help="summary table of a dataset")
    show.add_argument("dir", nargs="?", default="latkit-data", help="dataset folder or URI (default ./latkit-data)")
    show.add_argument("--json", action="store_true", help="print one JSON document on stdout instead of a table")
    show.set_defaults(func=cmd_data_show)
    card = data.add_parser("card", parents=[common], help="write or refresh the dataset card (README.md) from the data")
    card.add_argument("dir", help="dataset folder")
    card.add_argument("--title", help="the card's title (default: from the folder name)")
    card.add_argument("--licence", default="CC-BY-4.0", help="licence named in the card (default CC-BY-4.0)")
    card.set_defaults(func=cmd_data_card)
    imp = data.add_parser("import-help", parents=[common], help="bring the HELP latency tables into the latkit schema")
    imp.add_argument("src", nargs="?", default=str(dataset.HELP_DIR),
                     help="folder with *_latency.parquet or one such file (default: the shipped datasets/help)")
    imp.add_argument("out", help="dataset folder to write (re-importing adds nothing)")
    imp.set_defaults(func=cmd_data_import_help)
    rt = data.add_parser("retest", parents=[registry],
                         help="measure a random sample of a dataset's rows again (side table) and compare")
    rt.add_argument("dir", help="dataset folder whose rows are measured again")
    rt.add_argument("--n", type=validate.arg_whole(2), default=50, help="rows to measure again (default 50)")
    rt.add_argument("--seed", type=SEED, default=0, help="seed of the row sample (default 0)")
    rt.add_argument("--models", nargs="+", metavar="DIR", help="folders holding the measured model files "
                                                                "(rows of a search space are re-exported)")
    rt.add_argument("--job-timeout", type=validate.arg_number(0, 86400, lo_open=True), default=600.0,
                    help="seconds before a hung measurement is killed (default 600)")
    rt.set_defaults(func=cmd_data_retest)
    sc = data.add_parser("schema", parents=[common], help="the columns of a dataset's rows: type, unit, meaning")
    sc.add_argument("--json", action="store_true", help="print one JSON document on stdout instead of a table")
    sc.set_defaults(func=cmd_data_schema)
    cp = data.add_parser("compact", parents=[common], help="merge a dataset's small files into large ones "
                                                           "(safe while a collection writes to it)")
    cp.add_argument("dir", help="dataset folder")
    cp.set_defaults(func=cmd_data_compact)
    mg = data.add_parser("migrate", parents=[common], help="move a dataset of an older latkit to the current "
                                                           "layout (rows under data/)")
    mg.add_argument("dir", help="dataset folder in the older layout")
    mg.set_defaults(func=cmd_data_migrate)
    pl = data.add_parser("plot", parents=[common],
                         help="latency histograms per device and a device-vs-device Spearman heatmap")
    pl.add_argument("dir", help="dataset folder")
    pl.add_argument("--out", help="folder for the PNGs (default DIR/plots)")
    pl.set_defaults(func=cmd_data_plot)
    return finish(p)


def _terminate(signum, frame):
    raise Interrupted("SIGTERM", 143)


def _setup_logging(args) -> None:
    """`latkit` log lines on stderr: progress off a terminal, waits, warnings; -q keeps warnings, -v adds debug."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(CleanFormatter("latkit: %(message)s"))
    log.handlers[:] = [handler]
    log.propagate = False
    log.setLevel(logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO)


def _one_line(text) -> str:
    """An error message as one plain line: no line breaks, no terminal colour codes (converters add them), any
    other control or escape character shown escaped (a device's message must not steer the terminal), at most
    2,000 characters (a 1 MB arch string is not echoed whole)."""
    return clean(re.sub(r"\s*\n\s*", "; ", re.sub(r"\x1b\[[0-9;]*m", "", str(text)).strip()), 2000)


def _stdout_gone() -> int:
    """The reader of stdout left (`| head`): end quietly, as a tool killed by SIGPIPE does."""
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError):
        pass
    return 128 + signal.SIGPIPE


def _command(args) -> str:
    """The subcommand as typed, e.g. `predictor fit`."""
    words = [getattr(args, "command", None)]
    words += [getattr(args, f"{words[0]}_command", None)] if words[0] else []
    return " ".join(w for w in words if w)


def main(argv=None) -> int:
    debug = os.environ.get("LATKIT_DEBUG") == "1"
    parser = build_parser()
    args = parser.parse_args(argv)
    merge_globals(parser, args)
    if not hasattr(args, "func"):  # `latkit` or `latkit data` alone: what there is to run, as git and docker do
        parser_of(parser, args).print_help()
        return 0
    _setup_logging(args)
    signal.signal(signal.SIGTERM, _terminate)
    try:
        code = args.func(args)
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        return _stdout_gone()
    except LatkitError as e:
        if debug:
            traceback.print_exc()
        print(f"latkit: error: {_one_line(e)}", file=sys.stderr)
        return e.exit_code
    except Interrupted as e:
        print(f"latkit: {e.summary or f'interrupted by {e.signame}; rows measured so far are kept'}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("latkit: interrupted by SIGINT; rows measured so far are kept", file=sys.stderr)
        return 130
    except Exception as e:  # a bug, or an environment problem latkit did not foresee: one line, not a traceback
        if debug:
            raise
        if isinstance(e, ModuleNotFoundError) and (e.name or "").split(".")[0] in EXTRAS:  # an extra not installed
            print(f"latkit: error: {missing(e.name, f'latkit {_command(args)}')}", file=sys.stderr)
            return 2
        where = f" ({e.filename})" if isinstance(e, OSError) and e.filename else ""
        print(f"latkit: error: {type(e).__name__}{where}: {_one_line(e) or 'no message'}; run again with "
              "LATKIT_DEBUG=1 for the traceback, and please report it", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
