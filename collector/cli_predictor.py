"""`latkit predictor fit|transfer|build|adapt|predict`. The only collector module that uses latkit.predictor,
and only inside the commands, so parsing arguments (and every other command) loads no predictor module."""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from rich.table import Table

from . import dataset, validate
from .cli_common import (GRAPH_MODEL_NAMES, GRAPH_SPACE, MODEL_NAMES, SEED, Parents, console, default_first, jsonable,
                         live_args, live_settings, log, print_json, whole_of)
from .devices import Registry
from .errors import LatkitError
from .progress import Steps
from .samplers import SAMPLERS
from .text import clean

# options of one kind of model only, with the default the other kind does not take: (option, default)
ARCH_FIT = (("budget", 500), ("sampler", "balanced"))
GRAPH_FIT = (("models", None), ("export_missing", False))
GRAPH_AUTO = "kernels"  # `--model auto` with --space onnx
ARCH_FILE_BYTES = 64 * 2 ** 20  # an arch list for predict --file (all 15,625 NB201 archs: ~1.4 MB)


def _only(args, options, where: str, other: str) -> None:
    """Refuse an option given where it has no meaning, instead of ignoring it; fill the defaults of the rest."""
    for name, default in options:
        value = getattr(args, name)
        if value is not None and value is not False and other:
            raise LatkitError(f"--{name.replace('_', '-')} applies to {where}; leave it out {other}")
        setattr(args, name, default if value is None else value)


def _fit_output(args) -> Path:
    """Where fit saves the model: --out, else beside the data (DATA/models/ of a dataset folder, the folder of
    a Parquet table); for the tables latkit ships (inside its package) ./models/ instead. Checked writable,
    with --json and --report, before any training, and never over a file that is not a model."""
    from latkit.predictor import modelfile
    validate.name(args.device, "--device")  # it names the model file
    if not args.out and "://" in args.data:
        raise LatkitError(f"--data {args.data} is not a local path, so the model has no default place; give --out")
    target = "" if args.target == "latency_ms" else f"-{args.target}"
    data, name = Path(args.data), f"{args.space}-{args.device}{target}.latkit-model"
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
    graph = args.space == GRAPH_SPACE
    _only(args, ARCH_FIT, "search spaces (nb201, fbnet, ofa)", "with --space onnx" if graph else "")
    _only(args, GRAPH_FIT, "--space onnx", "" if graph else f"with --space {args.space}")
    if graph:
        return _fit_graphs(args)
    if args.model in GRAPH_MODEL_NAMES and args.model not in MODEL_NAMES:
        raise LatkitError(f"--model {args.model} is a model of ONNX graphs (--space onnx); for {args.space} choose "
                          f"auto, {', '.join(MODEL_NAMES)}")
    from latkit.predictor.data import LatencyTable
    from latkit.predictor.esm import fit
    from latkit.predictor.metrics import METRICS
    from latkit.predictor.report import write_report
    table = LatencyTable(args.data, args.space, args.target)  # bad data, device, no --target: one line, nothing written
    table.check_devices([args.device])
    out = _fit_output(args)
    with Steps("predictor fit", not args.quiet) as step:  # progress on stderr: a fit takes minutes
        surrogate, result, test = fit(table, table.space, args.device, args.budget, args.sampler, args.model, args.seed,
                                      progress=step)
    surrogate.save(out)
    shown = {k: result[k] for k in (*METRICS, "n_train", "n_test", "model")}
    what = "" if args.target == "latency_ms" else f" ({args.target})"
    print(f"{args.space} on {args.device}{what}: " + ", ".join(
        f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in shown.items()) + f"; saved {out}")
    if args.json:
        Path(args.json).write_text(json.dumps(jsonable(shown), indent=2))
    if args.report:
        write_report(args.report, f"{args.space} / {args.device} / {result['model']} ({result['n_train']} samples)",
                     surrogate.predict(test), table.latency(args.device, test), shown, args.target)
    return 0


def _fit_graphs(args) -> int:
    """`predictor fit --space onnx`: a graph model from the dataset's rows whose .onnx file is found."""
    from latkit.predictor.graphdata import fit_graphs
    from latkit.predictor.metrics import METRICS
    from latkit.predictor.report import write_report
    kind = GRAPH_AUTO if args.model == "auto" else args.model
    if args.target != "latency_ms":
        raise LatkitError(f"--target {args.target} fits search-space archs only; a graph model (--space onnx) "
                          "learns latency_ms, so leave --target out")
    if kind not in GRAPH_MODEL_NAMES:
        raise LatkitError(f"--model {kind} is a model of arch strings; with --space onnx choose auto (= {GRAPH_AUTO}), "
                          f"{', '.join(GRAPH_MODEL_NAMES)}")
    out = _fit_output(args)
    with Steps("predictor fit", not args.quiet) as step:
        model, rep = fit_graphs(args.data, args.device, kind, models=args.models or (),
                                export_missing=True if args.export_missing else "cached", random_state=args.seed,
                                progress=step)
    model.save(out)
    shown = {**rep.get("test", {}), "n_train": rep["graphs"] - rep.get("test_graphs", 0),
             "n_test": rep.get("test_graphs", 0), "model": kind, "graphs": rep["graphs"],
             "rows_without_model": rep["rows_without_model"]}
    if "test" in rep:
        shown["flops_linear"] = rep["test_flops_linear"]
        held = ", ".join(f"{k}={shown[k]:.4f}" for k in METRICS) + \
            f" (the FLOPs line: mape={rep['test_flops_linear']['mape']:.4f})"
    else:
        held = f"none (from 8 graphs a fit holds some out; {rep['graphs']} found" + \
            (", so no --report)" if args.report else ")")
    print(f"onnx on {args.device}: {kind} model of {rep['graphs']} graphs (ok rows without an .onnx file found: "
          f"{rep['rows_without_model']}); held-out {shown['n_test']} graphs: {held}; saved {out}")
    if args.json:
        Path(args.json).write_text(json.dumps(jsonable(shown), indent=2))
    if args.report and "test" in rep:
        write_report(args.report, f"onnx / {args.device} / {kind} ({shown['n_train']} graphs)",
                     rep["heldout"]["predicted_ms"], rep["heldout"]["latency_ms"], shown)
    return 0


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
                     live_settings(args), args.seed, registry=Registry(args.registry), log=log.info)
    model.save(out)
    write_build_report(report_dir, args.space, args.device, r)
    print(f"{args.space} on {args.device}: held-out ±10 % {r['acc10'] * 100:.1f} % (target "
          f"{args.target_acc * 100:.0f} %{'' if r['reached'] else ', not reached'}), spearman {r['spearman']:.3f}, "
          f"{r['n_train']} + {r['n_heldout']} held-out archs measured; measuring {r['measure_s']:.0f} s, fitting "
          f"{r['fit_s']:.1f} s; saved {out}, report in {report_dir}")
    return 0


def cmd_predictor_adapt(args) -> int:
    if args.model:
        return _adapt_graphs(args)
    if args.file:
        raise LatkitError("--file applies with --model (a graph model to adapt); for an arch space adapt chooses "
                          "the archs it measures itself (--n)")
    if args.space == GRAPH_SPACE:
        raise LatkitError("--space onnx adapts a graph model: give --model (a .latkit-model of predictor fit --space "
                          "onnx) and --file (a few .onnx files to measure on --device)")
    from latkit.predictor.adapt import adapt
    args.space, args.n = args.space or "nb201", args.n or 20
    out = _model_out(args, f"{args.space}-{args.device}-adapt.latkit-model")
    model, r = adapt(args.device, args.space, args.n, args.sources or (), args.data, live_settings(args), args.seed,
                     Registry(args.registry))
    model.save(out)
    print(f"{args.space} on {args.device}: {r['n']} archs measured; expected spearman {r['cv_spearman']:.3f}, "
          f"±10 % {r['cv_acc10'] * 100:.0f} % (5-fold CV on them); {r['seconds']:.0f} s; saved {out}")
    return 0


def _adapt_graphs(args) -> int:
    """`predictor adapt --model M --file ...`: measure the files on the device, adapt the graph model to them."""
    from latkit.predictor.graphdata import adapt_graphs
    from latkit.predictor.graphmodel import GraphSurrogate
    from latkit.predictor.models import load
    for option, value in (("sources", args.sources), ("n", args.n)):
        if value:
            raise LatkitError(f"--{option} applies to arch spaces; with --model the files of --file are measured")
    if args.space not in (None, GRAPH_SPACE):
        raise LatkitError(f"--model takes a graph model (--space onnx), not {args.space}; leave out --model to adapt "
                          f"to {args.space} (adapt pretrains on HELP and --sources itself)")
    if not args.file:
        raise LatkitError("--model needs --file: a few .onnx files or folders to measure on the device (3 or more)")
    Registry(args.registry).get(args.device)
    files = _graph_files(args.file, args.model)
    model = load(args.model)
    if not isinstance(model, GraphSurrogate):
        raise LatkitError(f"{args.model} predicts arch strings of {model.space}; adapt --model takes a graph model "
                          f"(predictor fit --space onnx); for {model.space} leave out --model")
    out = _model_out(args, f"{GRAPH_SPACE}-{args.device}-adapt.latkit-model")
    model, r = adapt_graphs(model, args.data, args.device, files, live_settings(args), Registry(args.registry),
                            progress=not args.quiet)
    model.save(out)
    b = r["before"]
    after = "adapted" if "choice" not in r else \
        f"{r['choice']} (cross-validated error ±{(math.exp(r['cv_log_rmse'][r['choice']]) - 1) * 100:.0f} %)"
    print(f"onnx on {args.device}: {r['graphs']} graphs measured; the model as it was: mape {b['mape']:.0f} %, "
          f"spearman {b['spearman']:.3f}; {after}; saved {out}")
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
        Path(args.json).write_text(json.dumps(jsonable(r), indent=2))
    for path in r.get("saved", []):
        print(f"saved {path}")
    return 0


def _graph_files(paths, model) -> list:
    """The --file paths of a graph model: .onnx files or folders, each checked to be there."""
    for f in paths:
        if Path(f).is_dir():
            continue
        validate.readable_file(f, "--file")
        if not str(f).lower().endswith(".onnx"):
            raise LatkitError(f"--file {f} is no .onnx file; {model} is a graph model, which predicts ONNX files: give "
                              ".onnx files or folders of them (arch strings need a model fit on their space)")
    return list(paths)


def cmd_predictor_predict(args) -> int:
    from latkit.predictor.graphmodel import GraphSurrogate
    from latkit.predictor.models import load
    for f in args.file or ():
        if not Path(f).is_dir():
            validate.readable_file(f, "--file")  # before the model is read: the cheaper mistake first
    model = load(args.model)
    if isinstance(model, GraphSurrogate):
        return _predict_graphs(args, model)
    return _predict_archs(args, model)


def _predict_graphs(args, model) -> int:
    """One line per .onnx file (with --json one JSON list, an object per file); a file that cannot be read is
    one error line on stderr (and an object of its file and error in the list), the others are still predicted
    (exit 1; exit 2 when no file could be read)."""
    from latkit.predictor.graphdata import predict_files
    if args.space not in (None, GRAPH_SPACE):
        raise LatkitError(f"{args.model} is a graph model of ONNX files, not of {args.space}; leave out --space")
    if not args.file:
        raise LatkitError(f"{args.model} predicts ONNX files, not arch strings; give --file my.onnx (more files or "
                          "folders may follow)")
    rows = predict_files(model, _graph_files(args.file, args.model), batch=args.batch_size or 1, errors="keep")
    good = [r for r in rows if "error" not in r]
    if args.json:
        print_json([r if "error" in r or args.std else {k: v for k, v in r.items() if k != "std_ms"} for r in rows])
    elif good:
        sys.stdout.write("file\tlatency_ms" + ("\tstd_ms" if args.std else "") + "\tflops\tkernels\toutside\n")
        for r in good:
            std = f"\t{r['std_ms']:.3g}" if args.std else ""
            sys.stdout.write(f"{clean(r['file'], None)}\t{r['latency_ms']:.6g}{std}\t{r['flops']:.4g}\t{r['kernels']}\t"
                             f"{clean(r['outside'], None)}\n")
    sys.stdout.flush()
    for r in rows:
        if "error" in r:
            print(f"latkit: error: {clean(' '.join(r['error'].split()), 2000)}", file=sys.stderr)
    return 0 if len(good) == len(rows) else 1 if good else 2  # as collect: exit 1 when some of the work failed


def _arch_lines(paths, model, space) -> list:
    """The arch strings of --file text files, one per line, each checked with its file and line named (a TSV
    that predict wrote, given back, fails on its header line)."""
    archs = []
    for f in paths:
        if Path(f).is_dir() or str(f).lower().endswith(".onnx"):
            raise LatkitError(f"--file {f} is {'a folder' if Path(f).is_dir() else 'an ONNX file'}, but {model} "
                              f"predicts arch strings of {space.name}; give a text file of one arch per line, or for "
                              "ONNX files a graph model (latkit predictor fit --space onnx)")
        try:  # a regular file within bounds: a FIFO would hang the read, /dev/zero never end
            text = validate.read_bytes(f, "--file", ARCH_FILE_BYTES).decode()
        except UnicodeDecodeError:
            raise LatkitError(f"--file {f} is not text; give one arch string per line") from None
        found = [(n, line.strip()) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
        if not found:
            raise LatkitError(f"--file {f} holds no archs; give one arch string per line")
        for n, line in found:
            try:
                archs.append(space.validate(line))
            except LatkitError as e:
                raise LatkitError(f"--file {f} line {n}: {e}") from None
    return archs


def _predict_archs(args, model) -> int:
    from latkit.collector.spaces import get_space
    if args.space and model.space != args.space:
        raise LatkitError(f"{args.model} predicts {model.space}, not {args.space}; give --space {model.space}")
    if args.batch_size is not None:
        raise LatkitError(f"--batch-size sets the symbolic batch of ONNX files for a graph model; {args.model} "
                          f"predicts {model.space} archs at the batch size of the data it was fitted on, so leave it "
                          "out")
    space = get_space(model.space)
    archs = (_arch_lines(args.file, args.model, space) if args.file
             else [space.validate(a) for a in (space.enumerate() if args.all else args.arch)])
    target = getattr(model, "target_", "latency_ms")
    std_name = f"std_{target.rsplit('_', 1)[1]}"  # std_ms, std_mj
    if args.std:
        try:
            pred, std = model.predict(archs, return_std=True)
        except TypeError:
            raise LatkitError(f"{args.model} is a single {type(model).__name__} model without a spread; for --std use "
                              "a model saved by latkit predictor fit, build, adapt or transfer, or save "
                              "latkit.predictor.ensemble.Ensemble(model) from Python") from None
    else:
        pred, std = model.predict(archs), None
    if args.json:
        print_json([{"arch": a, target: float(p), **({std_name: float(std[i])} if args.std else {})}
                    for i, (a, p) in enumerate(zip(archs, pred))])
        return 0
    out = sys.stdout
    out.write(f"arch\t{target}" + (f"\t{std_name}" if args.std else "") + "\n")
    for i, (a, p) in enumerate(zip(archs, pred)):
        out.write(f"{a}\t{p:.6g}" + (f"\t{std[i]:.3g}" if args.std else "") + "\n")
    return 0


def add_predictor(sub, par: Parents) -> None:
    """`latkit predictor fit|transfer|build|adapt|predict`."""
    pred = sub.add_parser("predictor", help="train and use latency predictors").add_subparsers(
        dest="predictor_command", title="commands")
    for add in (_fit, _transfer, _build, _adapt, _predict):
        add(pred, par)


def _fit(pred, par: Parents) -> None:
    """predictor fit"""
    f = pred.add_parser("fit", parents=[par.common], help="ESM-style surrogate for one device from a dataset, or "
                                                          "with --space onnx a model of any ONNX file")
    f.add_argument("--data", required=True, help="latkit dataset folder or Parquet latency table")
    f.add_argument("--space", required=True, help="search space of the archs: nb201, fbnet or ofa; or onnx: every "
                                                  "measured ONNX graph whose file is found (a graph model)")
    f.add_argument("--device", required=True, help="the device (as named in the data) to predict for")
    f.add_argument("--target", default="latency_ms", choices=dataset.TARGETS,
                   help="the column to fit: latency_ms (default) or energy_mj (rows measured with --energy)")
    f.add_argument("--budget", type=validate.arg_whole(10),
                   help="training archs whose latency may be read (at least 10; default 500; search spaces only)")
    f.add_argument("--sampler", choices=default_first(SAMPLERS, "balanced"),
                   help="how the first training archs are chosen (default balanced over FLOPs; search spaces only)")
    f.add_argument("--model", default="auto", choices=list(dict.fromkeys(["auto", *MODEL_NAMES, *GRAPH_MODEL_NAMES])),
                   help="the estimator (default auto: the best 5-fold cross-validated Spearman); with --space onnx "
                        f"{', '.join(GRAPH_MODEL_NAMES)} (auto: {GRAPH_AUTO}, per-kernel latencies summed)")
    f.add_argument("--models", nargs="+", metavar="DIR_OR_FILE",
                   help="--space onnx: folders or .onnx files that were measured, found by content hash (the export "
                        "cache, $LATKIT_CACHE, is searched too)")
    f.add_argument("--export-missing", action="store_true",
                   help="--space onnx: export search-space rows whose .onnx file is not found again from their "
                        "recipe (needs torch; default: only what the export cache holds)")
    f.add_argument("--seed", type=SEED, default=0, help="sampling and model seed (default 0)")
    f.add_argument("--out", help="where to save the model (default beside the data: DATA/models/SPACE-DEVICE"
                                 ".latkit-model for a dataset folder, SPACE-DEVICE.latkit-model next to a table; "
                                 "SPACE-DEVICE-TARGET for another --target)")
    f.add_argument("--json", help="write the metrics as JSON here")
    f.add_argument("--report", help="folder for a scatter PNG and a Markdown summary (of the held-out graphs with "
                                    "--space onnx)")
    f.set_defaults(func=cmd_predictor_fit)


def _transfer(pred, par: Parents) -> None:
    """predictor transfer"""
    t = pred.add_parser("transfer", parents=[par.common], help="NASFLAT-style few-shot transfer to new devices")
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


def _build(pred, par: Parents) -> None:
    """predictor build"""
    b = pred.add_parser("build", parents=[par.registry], help="measure-fit loop on a live device until the surrogate "
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
    live_args(b)
    b.set_defaults(func=cmd_predictor_build)


def _adapt(pred, par: Parents) -> None:
    """predictor adapt"""
    ad = pred.add_parser("adapt", parents=[par.registry], help="few-shot predictor for a new device: measure N "
                                                            "chosen archs, transfer from HELP and --sources; or "
                                                            "measure --file ONNX files and adapt a graph --model")
    ad.add_argument("--device", required=True, help="registered device to measure on")
    ad.add_argument("--space", help="search space (default nb201; onnx with --model)")
    ad.add_argument("--n", type=validate.arg_whole(5), help="archs to measure (default 20; search spaces)")
    ad.add_argument("--sources", nargs="+", metavar="DATASET", help="latkit datasets whose devices join the "
                                                                     "HELP sources (search spaces)")
    ad.add_argument("--model", help="a graph model (.latkit-model of predictor fit --space onnx) to adapt to "
                                    "--device from the files of --file")
    ad.add_argument("--file", nargs="+", metavar="ONNX", help="with --model: .onnx files or folders to measure on "
                                                              "--device (3 or more; rows already in --data are reused)")
    ad.add_argument("--out", help="model file (default DATA/models/SPACE-DEVICE-adapt.latkit-model)")
    ad.add_argument("--seed", type=SEED, default=0, help="sampling and model seed (default 0)")
    live_args(ad)
    ad.set_defaults(func=cmd_predictor_adapt)


def _predict(pred, par: Parents) -> None:
    """predictor predict"""
    pp = pred.add_parser("predict", parents=[par.common], help="latency_ms (or the column the model was fitted on) "
                                                                "of archs, or of ONNX files, from a saved model")
    pp.add_argument("--model", required=True, help="a .latkit-model file (predictor fit, transfer, build, adapt)")
    pp.add_argument("--space", help="the space the model predicts, checked against the file (default: the file's; "
                                    "onnx for a graph model)")
    which = pp.add_mutually_exclusive_group(required=True)
    which.add_argument("--arch", nargs="+", help="arch strings of the space")
    which.add_argument("--file", nargs="+", help="a graph model: .onnx files or folders of them (one line each); "
                                                 "a model of a space: text files of one arch string per line")
    which.add_argument("--all", action="store_true", help="every arch of the space (nb201)")
    pp.add_argument("--std", action="store_true", help="also print each prediction's standard deviation (in "
                                                        "the predicted column's unit)")
    pp.add_argument("--batch-size", type=whole_of("batch_size"),
                    help="a graph model: the size of a symbolic first input dimension of the files (default 1; "
                         "1 to 4096; a fixed one stays)")
    pp.add_argument("--json", action="store_true", help="print one JSON document on stdout instead of lines: a list "
                                                         "of one object per file or arch")
    pp.set_defaults(func=cmd_predictor_predict)
