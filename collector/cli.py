"""`latkit` command line: a thin layer over collector.api."""
from __future__ import annotations

import argparse
import dataclasses
import json
import signal
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from rich.console import Console
from rich.table import Table

from . import api, dataset
from .devices import Registry
from .errors import Interrupted, LatkitError
from .job import RUNTIMES, Settings

console = Console(width=None if sys.stdout.isatty() else 140)


def _settings(args) -> Settings:
    try:
        cores = tuple(int(c) for c in args.cores.split(",")) if args.cores else None
    except ValueError:
        raise LatkitError(f"--cores takes CPU ids separated by commas, e.g. 0 or 2,3; got {args.cores!r}") from None
    return Settings(threads=args.threads, cores=cores, batch_size=args.batch_size,
                    repeats_min_count=args.repeats, repeats_min_s=args.min_time, repeats_max_s=args.max_time,
                    ci_target=args.ci_target, accelerator=args.accelerator, dtype=args.dtype,
                    cuda_graphs=args.cuda_graphs, include_copies=args.include_copies, rounds=args.rounds,
                    cooldown_temp_c=args.cooldown_temp, cooldown_max_s=args.cooldown_max)


def cmd_measure(args) -> int:
    m = api.measure(args.model, device=args.device, runtime=args.runtime, settings=_settings(args), out=args.out,
                    force=args.force, registry=Registry(args.registry), wait=not args.no_wait)
    print(m.summary())
    return 0 if m.status == "ok" else 1


def cmd_collect(args) -> int:
    devices = [d for d in args.devices.split(",") if d]
    if not devices:
        raise LatkitError("--devices names no device; give comma-separated names (see latkit device list)")
    common = dict(registry=Registry(args.registry), retries=args.retries, job_timeout=args.job_timeout,
                  progress=not args.quiet, retry_errors=args.retry_errors, wait=not args.no_wait)
    if bool(args.models) == bool(args.space):
        raise LatkitError("give either --models DIR_OR_FILES or --space S --n N")
    if args.space:
        if not args.n:
            raise LatkitError("--space needs --n (how many archs to sample)")
        settings = dataclasses.replace(_settings(args), batch_size=None)  # the export fixes the batch size
        report = api.collect_space(args.space, args.n, devices, args.runtime or "onnxruntime", args.sampler,
                                   args.seed, settings, args.out, batch_size=args.batch_size or 1,
                                   resolution=args.resolution, export_workers=args.export_workers, **common)
    else:
        report = api.collect_models(api.model_files(args.models), devices, args.runtime, _settings(args), args.out,
                                    **common)
    table = Table("device", "jobs", "skipped", "measured", "errors", "left", "status")
    for d in report.devices:
        table.add_row(d.device, str(d.total), str(d.skipped), str(d.measured), str(d.errors), str(d.remaining),
                      d.status + (f": {d.message}" if d.message else ""))
    console.print(table)
    if not report.ok:
        print("latkit: some devices failed; fix them and re-run the same command to finish (done rows are kept)",
              file=sys.stderr)
    return 0 if report.ok else 1


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
                         lease=args.lease)
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
    table = Table("device", "runtime", "space", "rows", "ok", "missed CI", "min ms", "median ms", "max ms",
                  "newest (UTC)")
    for r in api.data_summary(args.dir):
        lat = [f"{v:.4g}" for v in r["latency_ms"]] if r["latency_ms"] else ["-"] * 3
        table.add_row(r["device"], r["runtime"], r["space"], str(r["rows"]), str(r["ok"]), str(r["missed_ci"]), *lat,
                      r["newest"].strftime("%Y-%m-%d %H:%M") if r["newest"] is not None else "-")
    console.print(table)
    return 0


def cmd_data_card(args) -> int:
    print(f"wrote {dataset.write_card(args.dir, args.title, args.licence)}")
    return 0


def cmd_data_import_help(args) -> int:
    n = dataset.import_help(args.src, args.out)
    print(f"imported {n} rows into {args.out}")
    return 0


def cmd_data_plot(args) -> int:
    for path in dataset.plot(args.dir, args.out):
        print(path)
    return 0


def cmd_predictor_fit(args) -> int:
    import tempfile
    from predictor.data import LatencyTable
    from predictor.esm import fit
    from predictor.report import write_report
    table = LatencyTable(args.data, args.space)  # bad data or device: one line before anything is written
    table.check_devices([args.device])
    # default: beside the data (DATA/models/ of a dataset folder, the folder of a Parquet table), never the cwd
    if not args.out and "://" in args.data:
        raise LatkitError(f"--data {args.data} is not a local path, so the model has no default place; give --out")
    data, name = Path(args.data), f"{args.space}-{args.device}.latkit-model"
    out = Path(args.out) if args.out else (data.parent if data.is_file() else data / "models") / name
    try:  # writable before any training time is spent
        out.parent.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=out.parent).close()
    except FileExistsError:
        raise LatkitError(f"cannot write {out}: {out.parent} is a file; give --out a writable file path") from None
    except OSError as e:
        raise LatkitError(f"cannot write {out}: {e.strerror or e}; give --out a writable file path") from None
    if out.is_dir():
        raise LatkitError(f"cannot write {out}: it is a folder; give --out a writable file path")
    surrogate, result, test = fit(table, args.space, args.device, args.budget, args.sampler, args.model, args.seed)
    surrogate.save(out)
    shown = {k: result[k] for k in ("spearman", "kendall", "mape", "rmse", "acc5", "acc10", "n_train", "n_test",
                                    "model")}
    print(f"{args.space} on {args.device}: " + ", ".join(
        f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in shown.items()) + f"; saved {out}")
    if args.json:
        Path(args.json).write_text(json.dumps(shown, indent=2))
    if args.report:
        write_report(args.report, f"{args.space} / {args.device} / {result['model']} ({result['n_train']} samples)",
                     surrogate.predict(test), table.latency(args.device, test), shown)
    return 0


def cmd_predictor_transfer(args) -> int:
    from predictor.transfer import transfer
    split = lambda s: [x for x in s.split(",") if x]  # noqa: E731
    r = transfer(args.data, args.space, split(args.source), split(args.target), args.target_samples,
                 args.source_samples, args.seeds, use_gnn=not args.no_gnn)
    table = Table("target", "spearman", "± (seeds)", "kendall", "mape %")
    for dev, m in r["per_target"].items():
        table.add_row(dev, f"{m['spearman']:.3f}", f"{m['spearman_std']:.3f}", f"{m['kendall']:.3f}", f"{m['mape']:.1f}")
    console.print(table)
    print(f"mean spearman {r['mean_spearman']:.3f} ± {r['mean_spearman_std']:.3f} over {r['seeds']} seeds "
          f"in {r['seconds']:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=2))
    return 0


def cmd_predictor_predict(args) -> int:
    from collector.spaces import get_space
    from predictor.models import Surrogate
    model = Surrogate.load(args.model)
    space = get_space(args.space)
    if model.space != args.space:
        raise LatkitError(f"{args.model} predicts {model.space}, not {args.space}; give --space {model.space}")
    if args.all:
        archs = space.enumerate()
    elif args.file:
        archs = [line.strip() for line in Path(args.file).read_text().splitlines() if line.strip()]
    else:
        archs = args.arch or []
    if not archs:
        raise LatkitError("give --arch A ..., --file F (one arch per line) or --all")
    archs = [space.validate(a) for a in archs]
    pred = model.predict(archs)
    out = sys.stdout
    out.write("arch\tlatency_ms\n")
    for a, p in zip(archs, pred):
        out.write(f"{a}\t{p:.6g}\n")
    return 0


def _protocol_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--runtime", choices=RUNTIMES, help="default: from each file's extension")
    p.add_argument("--threads", type=int, default=1, help="runtime threads (default 1)")
    p.add_argument("--cores", help="pin the agent to these CPU ids, e.g. 0 or 2,3")
    p.add_argument("--batch-size", type=int, help="batch size (with --space: exported at it; else fills a dynamic batch)")
    p.add_argument("--repeats", type=int, default=Settings.repeats_min_count, help="minimum timed runs per round")
    p.add_argument("--min-time", type=float, default=Settings.repeats_min_s, help="minimum timed seconds per round")
    p.add_argument("--max-time", type=float, default=Settings.repeats_max_s,
                   help="stop a round after this many timed seconds once the minimums are met")
    p.add_argument("--ci-target", type=float, default=Settings.ci_target,
                   help="stop a round once the median's 95%% CI is within +- this fraction (default 0.005)")
    p.add_argument("--rounds", type=int, help="shuffled rounds per model (default 4 on cpu, 1 on cuda)")
    p.add_argument("--cooldown-temp", type=float, metavar="C",
                   help="before each model wait until the device's hottest sensor reads <= C degrees")
    p.add_argument("--cooldown-max", type=float, default=Settings.cooldown_max_s, metavar="S",
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
    c.add_argument("--models", nargs="+", metavar="DIR_OR_FILE", help="model files or folders")
    c.add_argument("--space", help="search space to sample archs from: nb201, fbnet, ofa")
    c.add_argument("--n", type=int, help="number of archs to sample (with --space)")
    c.add_argument("--sampler", default="uniform", choices=["uniform", "balanced", "diverse"])
    c.add_argument("--seed", type=int, default=0, help="sampler seed (default 0)")
    c.add_argument("--resolution", type=int, help="input side length (default: the space's, or the ofa arch's)")
    c.add_argument("--export-workers", type=int, default=1, metavar="N",
                   help="export the sampled archs on N processes (default 1; e.g. the host's cores - 1)")
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
    a.add_argument("--lease", help="the device's lease file (default: one per machine, "
                                   "<tempdir>/latkit-device.lease); give devices that share a machine their own")
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

    pred = sub.add_parser("predictor", help="train and use latency predictors").add_subparsers(
        dest="predictor_command", required=True)
    f = pred.add_parser("fit", help="ESM-style surrogate for one device from a dataset")
    f.add_argument("--data", required=True, help="latkit dataset folder or Parquet latency table")
    f.add_argument("--space", required=True)
    f.add_argument("--device", required=True)
    f.add_argument("--budget", type=int, default=500, help="training archs whose latency may be read")
    f.add_argument("--sampler", default="balanced", choices=["balanced", "uniform", "diverse"])
    f.add_argument("--model", default="auto", choices=["auto", "ridge", "gbdt", "rf", "mlp", "gnn"])
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--out", help="where to save the model (default beside the data: DATA/models/SPACE-DEVICE"
                                 ".latkit-model for a dataset folder, SPACE-DEVICE.latkit-model next to a table)")
    f.add_argument("--json", help="write the metrics as JSON here")
    f.add_argument("--report", help="folder for a scatter PNG and a Markdown summary")
    f.set_defaults(func=cmd_predictor_fit)
    t = pred.add_parser("transfer", help="NASFLAT-style few-shot transfer to new devices")
    t.add_argument("--data", required=True)
    t.add_argument("--space", required=True)
    t.add_argument("--source", required=True, help="comma-separated source devices")
    t.add_argument("--target", required=True, help="comma-separated target devices")
    t.add_argument("--target-samples", type=int, default=20)
    t.add_argument("--source-samples", type=int, default=900)
    t.add_argument("--seeds", type=int, default=3)
    t.add_argument("--no-gnn", action="store_true", help="source bank + proxies only (faster, a little weaker)")
    t.add_argument("--json")
    t.set_defaults(func=cmd_predictor_transfer)
    pp = pred.add_parser("predict", help="latency_ms of archs from a saved model")
    pp.add_argument("--model", required=True)
    pp.add_argument("--space", required=True)
    pp.add_argument("--arch", nargs="+")
    pp.add_argument("--file")
    pp.add_argument("--all", action="store_true", help="every arch of the space (nb201)")
    pp.set_defaults(func=cmd_predictor_predict)

    data = sub.add_parser("data", help="inspect datasets").add_subparsers(dest="data_command", required=True)
    show = data.add_parser("show", help="summary table of a dataset")
    show.add_argument("dir", nargs="?", default="latkit-data")
    show.set_defaults(func=cmd_data_show)
    card = data.add_parser("card", help="write or refresh the dataset card (README.md) from the data")
    card.add_argument("dir")
    card.add_argument("--title")
    card.add_argument("--licence", default="CC-BY-4.0")
    card.set_defaults(func=cmd_data_card)
    imp = data.add_parser("import-help", help="bring the HELP latency tables into the latkit schema")
    imp.add_argument("src", nargs="?", default=str(dataset.HELP_DIR),
                     help="folder with *_latency.parquet or one such file (default: the shipped datasets/help)")
    imp.add_argument("out")
    imp.set_defaults(func=cmd_data_import_help)
    rt = data.add_parser("retest", parents=[common],
                         help="measure a random sample of a dataset's rows again (side table) and compare")
    rt.add_argument("dir")
    rt.add_argument("--n", type=int, default=50, help="rows to measure again (default 50)")
    rt.add_argument("--seed", type=int, default=0)
    rt.add_argument("--models", nargs="+", metavar="DIR", help="folders holding the measured model files "
                                                                "(rows of a search space are re-exported)")
    rt.add_argument("--job-timeout", type=float, default=600.0)
    rt.add_argument("--quiet", action="store_true")
    rt.set_defaults(func=cmd_data_retest)
    pl = data.add_parser("plot", help="latency histograms per device and a device-vs-device Spearman heatmap")
    pl.add_argument("dir")
    pl.add_argument("--out", help="folder for the PNGs (default DIR/plots)")
    pl.set_defaults(func=cmd_data_plot)
    return p


def _terminate(signum, frame):
    raise Interrupted("SIGTERM", 143)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    try:
        return args.func(args)
    except LatkitError as e:
        print(f"latkit: error: {e}", file=sys.stderr)
        return 2
    except Interrupted as e:
        print(f"latkit: {e.summary or f'interrupted by {e.signame}; rows measured so far are kept'}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("latkit: interrupted by SIGINT; rows measured so far are kept", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
