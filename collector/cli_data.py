"""`latkit data ...`: show, card, import-help, retest, schema, compact, migrate and plot a dataset."""
from __future__ import annotations

from pathlib import Path

from rich.table import Table

from . import api, compact, dataset, schema, validate
from .cli_common import SEED, Parents, console, log, print_json
from .devices import Registry
from .drift import dataset_drift
from .progress import Steps
from .store import Store
from .text import cell, clean


def cmd_data_show(args) -> int:
    groups = api.data_summary(args.dir)
    drifts = dataset_drift(args.dir)
    if args.json:
        print_json([dict({k: v for k, v in g.items() if k != "latency_ms"},
                          **dict(zip(("min_ms", "median_ms", "max_ms"), g["latency_ms"] or (None,) * 3)),
                          reference=[d.as_dict() for d in drifts
                                     if (d.device, d.runtime) == (g["device"], g["runtime"])])
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
    for r in groups:
        if r["contention"] is not None:
            print(f"{clean(r['device'], 80)}/{clean(r['runtime'], 40)}/{clean(r['space'], 40)}: median contention "
                  f"{r['contention']:.1%} (latency_ms / cpu_ms - 1: the share of wall time the host took away)")
    for d in drifts:
        print(clean(d.line(), None))
        if d.warning():
            log.warning("warning: %s", d.warning())
    if not drifts and all(g["runtime"] == "published" for g in groups):
        print(f"no reference timings in {clean(args.dir, 300)}: its rows are published tables (latkit data "
              "import-help), whose hosts' noise floor and drift are unknown")
    elif not drifts:
        print(f"no reference timings in {clean(args.dir, 300)}: the host's noise floor and drift are unknown "
              "(only `collect` times the reference: these rows came from `measure`, `collect --no-reference` or an older "
              "latkit)")
    return 0


def cmd_data_card(args) -> int:
    print(f"wrote {dataset.write_card(args.dir, args.title, args.licence)}")
    return 0


def cmd_data_schema(args) -> int:
    if args.json:
        print_json([c.as_dict() for c in schema.COLUMNS])
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


def cmd_data_retest(args) -> int:
    from .retest import retest
    r = retest(args.dir, args.n, args.seed, args.models or (), Registry(args.registry), progress=not args.quiet,
               job_timeout=args.job_timeout)
    table = Table("statistic", "spearman", "median rel. diff", "p90 rel. diff", "max rel. diff", "shift",
                  "median less shift")
    for k, v in r["statistics"].items():
        diffs = (f"{v[f'{q}_rel_diff'] * 100:.2f} %" for q in ("median", "p90", "max"))
        table.add_row(k, f"{v['spearman']:.4f}", *diffs, f"{v['shift'] * 100:+.2f} %",
                      f"{v['median_rel_diff_less_shift'] * 100:.2f} %")
    console.print(table)
    shift = r["statistics"]["latency_ms"]["shift"]
    print(f"the second measurement ran {abs(shift) * 100:.2f} % {'slower' if shift > 0 else 'faster'} overall (the "
          "median ratio): a host that moved between the two moves every row alike; 'median less shift' is what "
          "is left")
    print("moved most (latency_ms, first -> second): " + "; ".join(  # data from a device: shown, never obeyed
        f"{clean(w['arch'], 48)} on {clean(w['device'])}: {w['a_ms']:.4g} -> {w['b_ms']:.4g} ms "
        f"({(w['b_ms'] / w['a_ms'] - 1) * 100:+.1f} %)" for w in r["worst"]))
    store = Store(args.dir)
    print(f"{r['n']} rows measured again into {store.uri_of(r['side_table'])}; the card's test-retest section "
          f"is refreshed by latkit data card {args.dir}")
    dataset.refresh_card(args.dir)
    return 0


def add_data(sub, par: Parents) -> None:
    """`latkit data show|card|import-help|retest|schema|compact|migrate|plot`."""
    data = sub.add_parser("data", help="inspect datasets").add_subparsers(dest="data_command", title="commands")
    for add in (_show, _card, _import_help, _retest, _schema, _compact, _migrate, _plot):
        add(data, par)


def _show(data, par: Parents) -> None:
    """data show"""
    show = data.add_parser("show", parents=[par.common], help="summary table of a dataset, and the drift of the reference each device timed")
    show.add_argument("dir", nargs="?", default="latkit-data", help="dataset folder or URI (default ./latkit-data)")
    show.add_argument("--json", action="store_true", help="print one JSON document on stdout instead of a table")
    show.set_defaults(func=cmd_data_show)


def _card(data, par: Parents) -> None:
    """data card"""
    card = data.add_parser("card", parents=[par.common], help="write or refresh the dataset card (README.md) from the data")
    card.add_argument("dir", help="dataset folder")
    card.add_argument("--title", help="the card's title (default: from the folder name)")
    card.add_argument("--licence", default="CC-BY-4.0", help="licence named in the card (default CC-BY-4.0)")
    card.set_defaults(func=cmd_data_card)


def _import_help(data, par: Parents) -> None:
    """data import-help"""
    imp = data.add_parser("import-help", parents=[par.common], help="bring the HELP latency tables into the latkit schema")
    imp.add_argument("src", nargs="?", default=str(dataset.HELP_DIR),
                     help="folder with *_latency.parquet or one such file (default: the shipped datasets/help)")
    imp.add_argument("out", help="dataset folder to write (re-importing adds nothing)")
    imp.set_defaults(func=cmd_data_import_help)


def _retest(data, par: Parents) -> None:
    """data retest"""
    rt = data.add_parser("retest", parents=[par.registry],
                         help="measure a random sample of a dataset's rows again (side table) and compare")
    rt.add_argument("dir", help="dataset folder whose rows are measured again")
    rt.add_argument("--n", type=validate.arg_whole(2), default=50, help="rows to measure again (default 50)")
    rt.add_argument("--seed", type=SEED, default=0, help="seed of the row sample (default 0)")
    rt.add_argument("--models", nargs="+", metavar="DIR", help="folders holding the measured model files "
                                                                "(rows of a search space are re-exported)")
    rt.add_argument("--job-timeout", type=validate.arg_number(0, 86400, lo_open=True), default=600.0,
                    help="seconds before a hung measurement is killed (default 600)")
    rt.set_defaults(func=cmd_data_retest)


def _schema(data, par: Parents) -> None:
    """data schema"""
    sc = data.add_parser("schema", parents=[par.common], help="the columns of a dataset's rows: type, unit, meaning")
    sc.add_argument("--json", action="store_true", help="print one JSON document on stdout instead of a table")
    sc.set_defaults(func=cmd_data_schema)


def _compact(data, par: Parents) -> None:
    """data compact"""
    cp = data.add_parser("compact", parents=[par.common], help="merge a dataset's small files into large ones "
                                                           "(safe while a collection writes to it)")
    cp.add_argument("dir", help="dataset folder")
    cp.set_defaults(func=cmd_data_compact)


def _migrate(data, par: Parents) -> None:
    """data migrate"""
    mg = data.add_parser("migrate", parents=[par.common], help="move a dataset of an older latkit to the current "
                                                           "layout (rows under data/)")
    mg.add_argument("dir", help="dataset folder in the older layout")
    mg.set_defaults(func=cmd_data_migrate)


def _plot(data, par: Parents) -> None:
    """data plot"""
    pl = data.add_parser("plot", parents=[par.common],
                         help="latency histograms per device and a device-vs-device Spearman heatmap")
    pl.add_argument("dir", help="dataset folder")
    pl.add_argument("--out", help="folder for the PNGs (default DIR/plots)")
    pl.set_defaults(func=cmd_data_plot)

