"""Datasets as a whole: reading latencies for predictors, importing public tables, cards and plots."""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from . import schema, validate
from .drift import DRIFT_FACTOR, dataset_drift
from .errors import LatkitError, need
from .reference import REFERENCE_EVERY_JOBS, REFERENCE_EVERY_S, SIDE
from .store import Store, no_dataset
from .text import clean, md_cell

LATENCY_COLUMNS = ["space", "arch", "device", "latency_ms"]
# The columns a predictor can learn (`predictor fit --target`): latency, or the energy of rows measured with --energy.
TARGETS = ("latency_ms", "energy_mj")
# The HELP tables shipped with latkit (datasets/help/README.md): datasets/help in a checkout, latkit/help installed.
_PACKAGE = Path(__file__).resolve().parents[1]
HELP_DIR = next((p for p in (_PACKAGE / "datasets" / "help", _PACKAGE / "help") if p.is_dir()),
                _PACKAGE / "datasets" / "help")


def read_latency(path, space: Optional[str] = None, target: str = "latency_ms") -> pa.Table:
    """`space, arch, device, latency_ms` of every ok measurement in a latkit dataset folder or in a Parquet
    file with those columns (such as the HELP tables), optionally of one space; with another `target` (TARGETS)
    that column in place of latency_ms, of the rows that have it."""
    if target not in TARGETS:
        raise LatkitError(f"unknown target {clean(target, 40)!r}; choose one of {', '.join(TARGETS)}")
    columns = [*LATENCY_COLUMNS[:3], target]
    p = Path(path)
    if p.is_file():
        kind = validate.file_kind(p)
        if kind != "a Parquet table":  # pyarrow's own words ("magic bytes not found in footer") say less
            raise LatkitError(f"{p} is not a Parquet file but {kind}; give a latkit dataset folder or a Parquet "
                              "latency table")
        try:
            t = pq.read_table(p)
        except (pa.ArrowException, OSError) as e:
            raise LatkitError(f"{p} is not a Parquet file ({str(e).splitlines()[0]}); give a latkit dataset folder "
                              "or a Parquet latency table") from None
        missing = set(columns) - set(t.column_names)
        if missing:
            raise LatkitError(f"{p} lacks columns {sorted(missing)}; a table to fit {target} needs {columns}")
        kind = t.schema.field(target).type
        if not (pa.types.is_integer(kind) or pa.types.is_floating(kind)):
            raise LatkitError(f"column {target} of {p} is {kind}, not a number; a table to fit {target} holds it "
                              "as numbers")
        try:
            t = t.select(columns).cast(pa.schema([(c, pa.float64() if c == target else pa.string()) for c in columns]))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            raise LatkitError(f"columns space, arch and device of {p} must be text") from None
    else:
        store = Store(path)
        if not store.exists() or not store.files():
            raise no_dataset(path, "give a latkit dataset folder or a Parquet latency table")
        t = store.read(columns=columns, filter=pc.field("status") == "ok")
    if space is not None:
        t = t.filter(pc.equal(t["space"], space))
    if target != "latency_ms":  # rows measured without --energy have none; a null latency is an error, said later
        t = t.filter(pc.is_valid(t[target]))
    return t


def help_key(space: str, arch: str, device: str) -> str:
    return hashlib.sha256(f"help\n{space}\n{arch}\n{device}".encode()).hexdigest()


def import_help(src, out) -> int:
    """Rewrite the HELP tables (`*_latency.parquet` in `src`, or one such file) into the latkit schema at
    `out`. Runtime and settings are unknown ("published"); the batch size comes from the device name's
    suffix (`titan_rtx_32` -> 32). Re-importing adds nothing."""
    src = Path(src)
    files = sorted(src.glob("*_latency.parquet")) if src.is_dir() else [src]
    if not files or not all(f.exists() for f in files):
        raise LatkitError(f"no HELP latency tables (*_latency.parquet) at {src}")
    store = Store(out)
    store.check_writable()
    done = store.done_keys()
    added = 0
    for f in files:
        t = read_latency(f)
        rows = []
        for space, arch, device, lat in zip(*(t[c].to_pylist() for c in LATENCY_COLUMNS)):
            key = help_key(space, arch, device)
            if key in done:
                continue
            suffix = device.rsplit("_", 1)[-1]
            rows.append({"space": space, "arch": arch, "device": device, "latency_ms": lat, "key": key,
                         "runtime": "published", "settings": "{}", "sampler": "help", "role": "", "status": "ok",
                         "batch_size": int(suffix) if suffix.isdigit() else 1, "samples_ms": [],
                         "model_sha256": "", "model_format": "", "error_kind": "", "error": ""})
        added += store.append(rows)
    return added


def group_summary(t: pa.Table) -> list:
    """Per (device, runtime, space): rows, ok rows, rows that missed the CI target, exact min / median / max
    of latency_ms over ok rows, the median contention of the rows that have it (None: none has), newest
    measured_at. `latkit data show` and the dataset card both print it.
    Plain pyarrow + numpy, so a measure-only install (no pandas) can show its data."""
    keys = ("device", "runtime", "space")
    col = {c: t[c].to_pylist() if c in t.column_names else [None] * t.num_rows
           for c in keys + ("status", "latency_ms", "contention", "stopped_by", "measured_at")}
    groups = {}
    for i, k in enumerate(zip(*(col[c] for c in keys))):
        groups.setdefault(k, []).append(i)
    out = []
    for k in sorted(groups, key=lambda k: tuple((v is None, v if v is not None else "") for v in k)):
        rows = groups[k]
        ok = [i for i in rows if col["status"][i] == "ok"]
        lat = np.array([col["latency_ms"][i] for i in ok if col["latency_ms"][i] is not None], dtype=float)
        contention = [col["contention"][i] for i in ok if col["contention"][i] is not None]
        stamps = [col["measured_at"][i] for i in rows if col["measured_at"][i] is not None]
        out.append({"device": k[0], "runtime": k[1], "space": k[2], "rows": len(rows), "ok": len(ok),
                    "missed_ci": sum(col["stopped_by"][i] not in (None, "ci_target") for i in ok),
                    "latency_ms": [float(lat.min()), float(np.median(lat)), float(lat.max())] if len(lat) else None,
                    "contention": float(np.median(contention)) if contention else None,
                    "newest": max(stamps) if stamps else None})
    return out


def summary(path) -> dict:
    """What a dataset card states, computed from the rows themselves."""
    store = Store(path)
    if not store.exists() or not store.files():
        raise no_dataset(path, "collect into it first")
    t = store.read(columns=["space", "device", "device_fingerprint", "runtime", "runtime_version", "agent_version",
                            "settings", "sampler", "status", "latency_ms", "measured_at", "batch_size",
                            "input_shape", "threads", "cores", "stopped_by"])
    rows = t.to_pylist()
    stamps = [r["measured_at"] for r in rows if r["measured_at"]]
    return {
        "rows": len(rows), "ok": sum(r["status"] == "ok" for r in rows),
        "groups": group_summary(t),
        "devices": sorted({(r["device"], r["device_fingerprint"] or "-", r["runtime"], r["runtime_version"] or "-",
                            r["agent_version"] or "-") for r in rows}),
        "settings": sorted({r["settings"] for r in rows}),
        "samplers": sorted({r["sampler"] for r in rows if r["sampler"]}),
        "inputs": sorted({(r["space"], r["input_shape"] or "-", r["threads"] or 0, r["cores"] or "-") for r in rows}),
        "from": min(stamps).strftime("%Y-%m-%d") if stamps else "-",
        "to": max(stamps).strftime("%Y-%m-%d") if stamps else "-",
        "hardware": store.devices(),
        "reference": dataset_drift(path),
    }


RETEST_JSON_BYTES = 1 << 20  # a retest.json latkit writes is a few KB
FIGURES = ("spearman", "median_rel_diff", "p90_rel_diff", "max_rel_diff", "shift", "median_rel_diff_less_shift")


def latest_retest(path) -> Optional[dict]:
    """The figures of the newest `latkit data retest` of a dataset (its retest.json), or None. A shared dataset's
    file is data: one that is no regular file, too large, or not the figures latkit writes is a LatkitError."""
    store, what = Store(path), "the retest figures"
    for stamp in reversed(store.folders("_retest")):  # the newest with figures (a stopped retest has none)
        rel = f"_retest/{stamp}/retest.json"
        if (data := store.read_bytes(rel, what, RETEST_JSON_BYTES)) is not None:
            break
    else:
        return None
    try:
        rt = json.loads(data)
        number = lambda x: isinstance(x, (int, float)) and not isinstance(x, bool)  # noqa: E731
        ok = isinstance(rt["n"], int) and all(isinstance(rt[k], str) for k in ("stamp", "side_table"))
        ok = ok and all(isinstance(v, dict) and all(number(v[k]) for k in FIGURES[:3])
                        and all(number(v.get(k, 0.0)) for k in FIGURES[3:]) for v in rt["statistics"].values())
        ok = ok and all(number(w["a_ms"]) and number(w["b_ms"]) and isinstance(w["arch"], str)
                        and isinstance(w["device"], str) for w in rt["worst"])
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
        ok = False
    if not ok:
        raise LatkitError(f"{what} {store.uri_of(rel)} are not what latkit data retest writes; run the retest "
                          "again")
    return rt


LICENCE = re.compile(r"[A-Za-z0-9][A-Za-z0-9.+-]{0,63}")  # an SPDX id (CC-BY-4.0, Apache-2.0) or "other"
MARKER = "<!-- everything below is generated by `latkit data card` from the rows -->"


def write_card(path, title: Optional[str] = None, licence: str = "CC-BY-4.0", notes: str = "") -> Path | str:
    """Write (or refresh) `README.md` in the dataset folder from its rows and recorded device probes.
    On a refresh, what stands above the marker line (title, hand-written notes) is kept."""
    if not LICENCE.fullmatch(licence):
        raise LatkitError(f"--licence {clean(licence, 80)!r} is not a licence identifier; give an SPDX id such as "
                          "CC-BY-4.0 or MIT, or 'other'")
    s, store = summary(path), Store(path)
    advice = "make the dataset folder writable"
    if store.local:
        validate.writable_file(Path(store.root, "README.md"), advice)  # refused before anything is computed
    old = _old_card(store)
    folder = Path(store.root).resolve().name if store.local else store.root.rsplit("/", 1)[-1]
    if MARKER in old:
        head = _strip_front_matter(old.split(MARKER)[0]).rstrip("\n")
    else:
        head = f"# {clean(title or folder, 200)}\n\n{notes.strip()}".rstrip()
    name = head.lstrip("# ").split("\n", 1)[0].strip() or folder
    lines = [*front_matter(path, name, licence, s["rows"]), head, "", MARKER, "",
             f"{s['rows']} rows ({s['ok']} ok), measured {s['from']} to {s['to']}. Licence: {licence}.",
             "Rows are under `data/device_=<device>/space_=<space>/`, every column in every file (device and space as "
             "plain strings; the folder keys have other names, so no reader's Hive columns clash with them): "
             "`datasets.load_dataset(\"parquet\", data_dir=\"data\")`, `pd.read_parquet(\"data\")`, pyarrow, "
             "DuckDB and polars read `data/` as one table with no options.", "",
             "## Contents", "",
             "| device | runtime | space | rows | ok | missed CI target | latency_ms min / median / max |",
             "|---|---|---|---|---|---|---|"]
    for g in s["groups"]:
        lat = " / ".join(f"{x:.4g}" for x in g["latency_ms"]) if g["latency_ms"] else "-"
        lines.append(f"| {md_cell(g['device'])} | {md_cell(g['runtime'] or '-')} | {md_cell(g['space'])} | "
                     f"{g['rows']} | {g['ok']} | {g['missed_ci']} | {lat} |")
    lines += ["", "## Devices and runtimes", "", "| device | fingerprint | runtime | version | agent |",
              "|---|---|---|---|---|"]
    lines += ["| " + " | ".join(md_cell(x or "-") for x in row) + " |" for row in s["devices"]]
    if s["hardware"]:
        lines += ["", "Hardware at probe time (by fingerprint):", ""]
        for fp, p in sorted(s["hardware"].items()):
            rts = ", ".join(f"{k} {v['version']}" for k, v in p.get("runtimes", {}).items())
            lines.append(clean(f"- `{fp}` ({p.get('device', '?')}): {p.get('cpu_model')}, {p.get('cpu_count')} CPUs "
                               f"(affinity {p.get('cpu_affinity')}), {p.get('memory_mb')} MB, {p.get('os_release')}, "
                               f"kernel {p.get('kernel')}, governor {p.get('cpu_governor') or 'n/a'}, Python "
                               f"{p.get('python')}; {rts}", None))  # device strings: shown, never obeyed
    lines += ["", "## Protocol", "", "| space | input | threads | pinned cores |", "|---|---|---|---|"]
    lines += ["| " + " | ".join(md_cell(x) for x in row) + " |" for row in s["inputs"]]
    lines += ["", "Settings (canonical JSON, part of each row's key):", ""]
    lines += [f"- `{clean(x, 2000)}`" for x in s["settings"]]
    lines += ["", f"Sampler: {clean(', '.join(s['samplers']), 2000) or 'none (single models)'}.", ""]
    lines += reference_section(s["reference"])
    lines += ["## Columns", "", *schema.markdown(), ""]
    try:
        rt = latest_retest(path)
    except LatkitError as e:
        rt, lines = None, lines + ["## Test-retest", "", clean(str(e), 600), ""]
    if rt:
        lines += ["## Test-retest", "", f"{rt['n']} rows measured again ({clean(rt['stamp'])}, shuffled, side table "
                  f"`{clean(rt['side_table'])}`). Shift: how much slower the second measurement ran overall (the "
                  "median ratio; a host that moved between them moves every row alike), and the median difference "
                  "once it is divided out:", "",
                  "| statistic | Spearman | median rel. diff | p90 rel. diff | max rel. diff | shift | median less shift |",
                  "|---|---|---|---|---|---|---|"]
        lines += [f"| {md_cell(k)} | {v['spearman']:.4f} | {v['median_rel_diff'] * 100:.2f} % | "
                  f"{v['p90_rel_diff'] * 100:.2f} % | {_pct(v.get('max_rel_diff'))} | {_pct(v.get('shift'), '+')} | "
                  f"{_pct(v.get('median_rel_diff_less_shift'))} |" for k, v in rt["statistics"].items()]
        lines += ["", "Largest differences of latency_ms: " + ", ".join(
            f"{clean(w['arch'], 48)} on {clean(w['device'])} ({w['a_ms']:.4g} vs {w['b_ms']:.4g} ms)"
            for w in rt["worst"]), ""]
    return store.write_bytes("README.md", "\n".join(lines), advice)


def refresh_card(path) -> None:
    """Write the card anew where the dataset has one (after a retest: its section moves with the figures)."""
    store = Store(path)
    if store.fs.get_file_info(f"{store.root}/README.md").type != pafs.FileType.NotFound:
        write_card(path)


CARD_BYTES = 4 << 20  # a card latkit writes is tens of KB; what stands above its marker is the user's own


def _old_card(store: Store) -> str:
    """The card a refresh keeps the head of ("" where there is none; a local link is not read)."""
    if store.local and Path(store.root, "README.md").is_symlink():
        return ""
    old = store.read_bytes("README.md", "the dataset card", CARD_BYTES)
    return "" if old is None else old.decode(errors="replace")


def _pct(x, sign: str = "") -> str:
    """A fraction as a percentage for the card ("-" where an older retest.json has no such figure)."""
    return "-" if x is None else f"{x * 100:{sign}.2f} %"


def reference_section(drifts: list) -> list:
    """The card's section on the reference network: per device its A/A floor (the host's own noise) and drift."""
    lines = ["## Reference, noise floor and drift", ""]
    if not drifts:
        return lines + ["No reference timings (only `latkit collect` times the reference: these rows came from "
                        "`latkit measure`, `collect --no-reference` or a latkit before it): the hosts' noise floor "
                        "and drift during the collection are unknown.", ""]
    lines += [f"Each device timed a fixed reference network as an A/A pair (the same network under two names side "
              f"by side: a round each in the order a b b a, one round each back to back before latkit of 2026-12-06) "
              f"first, every {REFERENCE_EVERY_S:g} s or {REFERENCE_EVERY_JOBS} jobs (the "
              f"defaults), and last in every collection; its rows are in the side table `{SIDE}/`, never among the "
              "data. The A/A floor (median |b - a| / a) is how far two timings of one network at one moment differ: "
              "rows of the device are not comparable closer than that (timings minutes apart differ by more when "
              "the host moves: `latkit data retest` measures that). The drift is the reference's range over the checks; "
              f"above {DRIFT_FACTOR:g}x the noise (the larger of the floor and the median ci_rel) it is a warning.", "",
              "| device | runtime | checks | from / to (UTC) | reference ms first / min / max / last | drift | "
              "largest step | A/A floor | noise |", "|---|---|---|---|---|---|---|---|---|"]
    for d in drifts:
        ms = " / ".join(f"{x:.4g}" for x in (d.first_ms, d.min_ms, d.max_ms, d.last_ms))
        lines.append(f"| {md_cell(d.device)} | {md_cell(d.runtime)} | {d.checks} | {d.start:%Y-%m-%d %H:%M} / "
                     f"{d.end:%Y-%m-%d %H:%M} | {ms} | {d.drift * 100:.2f} % | {d.step * 100:.2f} % "
                     f"({d.step_from:%H:%M:%S}-{d.step_to:%H:%M:%S}) | {d.aa_floor * 100:.2f} % | "
                     f"{d.noise * 100:.2f} % |")
    warned = [clean(d.warning(), 600) for d in drifts if d.warning()]
    return lines + [""] + [f"Warning: {w}." for w in warned] + ([""] if warned else [])


def png(fig, dpi: int = 110) -> bytes:
    """The figure as PNG bytes; closes it."""
    import io
    import matplotlib.pyplot as plt
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    return buf.getvalue()


def save_png(fig, path: Path, dpi: int = 110) -> Path:
    """The figure as a PNG written atomically (a symlink at `path` is replaced, not followed); closes it."""
    return validate.write_atomic(path, png(fig, dpi))


def front_matter(path, name: str, licence: str, rows: int) -> list:
    """The card's YAML header for the Hugging Face Hub: licence, name, size and the configs naming the data files,
    so the Hub's viewer shows the rows (one config per retest side table too). JSON strings are valid YAML."""
    size = next(label for n, label in ((1e3, "n<1K"), (1e4, "1K<n<10K"), (1e5, "10K<n<100K"), (1e6, "100K<n<1M"),
                                       (float("inf"), "n>1M")) if rows < n)
    configs = ["- config_name: default", "  data_files:", "  - split: train", "    path: data/**/*.parquet"]
    store = Store(path)
    for stamp in store.folders("_retest"):
        if not validate.NAME.fullmatch(stamp) or "data" not in store.folders(f"_retest/{stamp}"):
            continue  # a folder name is written into YAML: only plain names
        configs += [f"- config_name: retest-{stamp}", "  data_files:", "  - split: train",
                    f"    path: _retest/{stamp}/data/**/*.parquet"]
    if "data" in store.folders(SIDE):
        configs += ["- config_name: reference", "  data_files:", "  - split: train",
                    f"    path: {SIDE}/data/**/*.parquet"]
    return ["---", f"license: {licence.lower()}", f"pretty_name: {json.dumps(name)}",
            "tags:", "- latency", "- neural-architecture-search", "- latkit", "size_categories:", f"- {size}",
            "configs:", *configs, "---", ""]


def _strip_front_matter(text: str) -> str:
    """`text` without a leading YAML header (`---` ... `---`): a refresh writes it anew."""
    if text.startswith("---\n") and "\n---\n" in text[4:]:
        return text[4:].split("\n---\n", 1)[1].lstrip("\n")
    return text


def plot(path, out_dir=None) -> list:
    """PNGs: latency histogram per device (one figure per space) and device-vs-device Spearman heatmap
    over the archs every device of that space has; in `out_dir`, else in the dataset's `plots/`. Returns their
    Paths (URIs where the dataset is remote)."""
    need("matplotlib", "plot", "latkit data plot").use("Agg")
    plt = need("matplotlib.pyplot", "plot", "latkit data plot")
    spearmanr = need("scipy.stats", "plot", "latkit data plot").spearmanr
    need("pandas", "plot", "latkit data plot")

    t = read_latency(path)
    if t.num_rows == 0:
        raise LatkitError(f"no ok rows in {path} to plot")
    advice, store = "give --out a writable folder", Store(path)
    if out_dir:  # a local folder of the user's choosing
        out = validate.writable_dir(out_dir, advice)
    elif store.local:  # else plots/ in the dataset, on its filesystem
        validate.own_folder(store.root, Path(store.root, "plots"), advice)

    def save(fig, name: str) -> Path | str:
        return save_png(fig, out / name) if out_dir else store.write_bytes(f"plots/{name}", png(fig), advice)
    df = t.to_pandas()
    written = []
    for space, d in df.groupby("space"):
        devices = sorted(d["device"].unique())
        cols = min(4, len(devices))
        rows_ = -(-len(devices) // cols)
        fig, axes = plt.subplots(rows_, cols, figsize=(3.2 * cols, 2.4 * rows_), squeeze=False)
        for ax, dev in zip(axes.ravel(), devices):
            ax.hist(d.loc[d["device"] == dev, "latency_ms"], bins=40, color="tab:blue")
            ax.set_title(dev, fontsize=9)
            ax.set_xlabel("latency_ms", fontsize=8)
        for ax in axes.ravel()[len(devices):]:
            ax.axis("off")
        fig.suptitle(f"{space}: latency per device")
        fig.tight_layout()
        written.append(save(fig, f"{validate.name(space, 'space')}_latency_hist.png"))
        if len(devices) > 1:
            wide = d.pivot_table(index="arch", columns="device", values="latency_ms", aggfunc="median").dropna()
            if len(wide) >= 3:
                rho = spearmanr(wide.values).statistic
                rho = np.atleast_2d(rho)
                fig, ax = plt.subplots(figsize=(1.0 + 0.42 * len(devices), 0.6 + 0.42 * len(devices)))
                im = ax.imshow(rho, vmin=min(0.0, float(np.nanmin(rho))), vmax=1.0, cmap="viridis")
                ax.set_xticks(range(len(wide.columns)), wide.columns, rotation=90, fontsize=7)
                ax.set_yticks(range(len(wide.columns)), wide.columns, fontsize=7)
                fig.colorbar(im, ax=ax, label="Spearman ρ")
                ax.set_title(f"{space}: device vs device ({len(wide)} common archs)", fontsize=9)
                fig.tight_layout()
                written.append(save(fig, f"{validate.name(space, 'space')}_spearman.png"))
    return written

