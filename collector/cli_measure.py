"""`latkit measure` and `latkit collect`: time model files or a space's archs on devices (collector/api.py)."""
from __future__ import annotations

import dataclasses
import sys

from rich.table import Table

from . import api, validate
from .cli_common import SEED, Parents, console, default_first, log, print_json, protocol_args, settings_of_args
from .devices import Registry
from .errors import Failure, LatkitError
from .measurement import PERMANENT_ERRORS
from .ray_executor import parse_executor
from .reference import REFERENCE_EVERY_JOBS, REFERENCE_EVERY_S, SIDE
from .samplers import SAMPLERS
from .text import cell, clean


def _row_json(m) -> dict:
    """A measurement as JSON: its store row without the raw samples (they are in the dataset)."""
    row = m.to_row()
    row.pop("samples_ms")
    row.pop("cpu_samples_ms")
    row["warnings"] = list(m.warnings)
    row["stored"] = m.stored  # read back from the dataset, not timed by this command
    return row


def cmd_measure(args) -> int:
    m = api.measure(args.model, device=args.device, runtime=args.runtime, settings=settings_of_args(args), out=args.out,
                    force=args.force, registry=Registry(args.registry), wait=not args.no_wait)
    if args.json:
        print_json(_row_json(m))
    elif m.status == "ok":  # a line per warning, each cleaned (clean() would show the newline between as \n)
        print(clean(m.summary(warnings=False), None))
        for w in m.warnings:
            print(clean(f"  warning: {w}", None))
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
                  executor=parse_executor(args.executor), cache_max_gb=args.cache_max_gb,
                  reference=not args.no_reference, reference_every_s=args.reference_every)
    if args.space:
        if args.input_shape:
            raise LatkitError("--input-shape applies to TorchScript files given with --models; a space's networks "
                              "are exported with their inputs (--resolution, --batch-size)")
        if not args.n:
            raise LatkitError("--space needs --n (how many archs to sample)")
        settings = dataclasses.replace(settings_of_args(args), batch_size=None)  # the export fixes the batch size
        report = api.collect_space(args.space, args.n, devices, args.runtime or "onnxruntime", args.sampler,
                                   args.seed, settings, args.out, batch_size=args.batch_size or 1,
                                   resolution=args.resolution, export_workers=args.export_workers, **common)
    else:
        for option in ("n", "resolution", "export_workers"):
            if getattr(args, option) is not None:
                raise LatkitError(f"--{option.replace('_', '-')} applies to --space only; leave it out with --models")
        report = api.collect_models(api.model_files(args.models), devices, args.runtime, settings_of_args(args), args.out,
                                    **common)
    failed = report.failed_models
    drifts = {d.device: d.drift() for d in report.devices}
    if args.json:
        print_json({"ok": report.ok and not failed, "summary": report.line(),
                     "devices": [{**{k: v for k, v in dataclasses.asdict(d).items() if k not in ("failed", "checks", "round_note")},
                                  "remaining": d.remaining,
                                  "reference": drifts[d.device].as_dict() if drifts[d.device] else None}
                                 for d in report.devices],
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
        for d in report.devices:
            _reference_line(d, drifts[d.device])
    for drift in drifts.values():
        if drift and drift.warning():
            log.warning("warning: %s", drift.warning())
    kept = sum(d.skipped_errors for d in report.devices)
    if kept:  # skipped, so not listed as failed, but still no latency: a re-run must not pass for a clean one
        log.warning(f"warning: {kept} model(s) skipped as stored errors that would fail again "
                    f"({', '.join(sorted(PERMANENT_ERRORS))}); fix the files, or after upgrading the runtime re-run "
                    "with --retry-errors")
    down = [d.device for d in report.devices if d.status != "done"]
    if down or failed:
        what = [f"{len(down)} device(s) failed ({', '.join(down)})"] if down else []
        what += [f"{len(failed)} model(s) failed (error rows kept; listed above)"] if failed else []
        print(f"latkit: error: {' and '.join(what)}; fix them and re-run the same command to finish (done rows "
              "are kept; --retry-errors measures failed models again)", file=sys.stderr)
        return 1
    return 0


def _reference_line(d, drift) -> None:
    """A device's reference at the end of `collect`: drift and A/A floor, or why there is none."""
    if drift:
        share = d.reference_s / d.wall_s * 100 if d.wall_s else 0.0
        print(clean(f"{drift.line()}; {d.reference_s:.1f} s on it ({share:.1f} % of the run)", None))
    if d.reference_note:
        print(clean(d.reference_note, 600))


def add_measure(sub, par: Parents) -> None:
    """`latkit measure`: one model file, one device."""
    m = sub.add_parser("measure", parents=[par.registry], help="time one model file on a device, append the row")
    m.add_argument("model", help=".onnx, .tflite, .pt2 (torch.export) or .pt (TorchScript) file")
    m.add_argument("--device", default="local", help="registered device name (default: local)")
    protocol_args(m)
    m.add_argument("--force", action="store_true", help="measure again even if the dataset has this key")
    m.set_defaults(func=cmd_measure)


def add_collect(sub, par: Parents) -> None:
    """`latkit collect`: many models (files or a space's archs) on many devices."""
    c = sub.add_parser("collect", parents=[par.registry], help="time many models on many devices in parallel (resumable)")
    c.add_argument("--models", nargs="+", metavar="DIR_OR_FILE", help="model files or folders")
    c.add_argument("--space", help="search space to sample archs from: nb201, fbnet, ofa; or zoo (real torchvision "
                                   "networks in width, depth and input-size variants)")
    c.add_argument("--n", type=validate.arg_whole(1), help="number of archs to sample (with --space)")
    c.add_argument("--sampler", default="uniform", choices=default_first(SAMPLERS, "uniform"),
                   help="how archs are drawn from --space: uniform (default), balanced over FLOPs, diverse")
    c.add_argument("--seed", type=SEED, default=0, help="sampler seed (default 0)")
    c.add_argument("--resolution", type=validate.arg_whole(1),
                   help="input side (default: the space's; nb201, fbnet: 16-512 step 4; ofa: 128-224 step 4, "
                        "and the sampled archs carry it as r; zoo: 32-2048, default 64-224 step 16, carried as @R)")
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
    protocol_args(c)
    c.add_argument("--retries", type=validate.arg_whole(0, 100), default=3,
                   help="reconnects per device before it is marked failed")
    c.add_argument("--job-timeout", type=validate.arg_number(0, 86400, lo_open=True), default=600.0,
                   help="seconds before a hung measurement is killed (a timeout row, measured again next run)")
    c.add_argument("--retry-errors", action="store_true",
                   help="also measure again models stored as permanent errors (corrupt file, unsupported op)")
    c.add_argument("--no-reference", action="store_true",
                   help="do not time the reference network (by default each device times an A/A pair of it first, "
                        f"every {REFERENCE_EVERY_S:g} s or {REFERENCE_EVERY_JOBS} jobs and last, into the side table "
                        f"OUT/{SIDE}/: the host's drift and noise floor)")
    c.add_argument("--reference-every", type=validate.arg_number(0, 86400, lo_open=True), default=REFERENCE_EVERY_S,
                   metavar="SECONDS", help=f"seconds between checks of the reference (default {REFERENCE_EVERY_S:g}; "
                   f"a check also comes every {REFERENCE_EVERY_JOBS} jobs): shorter tells a drift's span closer")
    c.set_defaults(func=cmd_collect)

