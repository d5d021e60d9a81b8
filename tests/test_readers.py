"""Other tools read a latkit dataset's `data/` as one table with no options, as users call them: pyarrow.dataset
(Hive), pyarrow.parquet, pandas, DuckDB, polars and Hugging Face `datasets` (offline); old files (76 columns,
dictionary-encoded device and space, as the shipped datasets had) and old folders (`device=<d>/space=<s>/`, keyed
like the columns) read after `latkit data migrate`; and `data show` on a folder that is no dataset."""
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from conftest import ROOT
from test_store import make_measurement
from latkit.collector import SCHEMA, LatkitError, Store
from latkit.collector.schema import FILE_SCHEMA

LATKIT = [sys.executable, "-m", "latkit.collector.cli"]
DEVICES = ("1080ti_1", "dev1")  # starts with digits: still a name to every reader
SHIPPED = [ROOT / "datasets" / d for d in ("local-cpu-nb201-fbnet", "h200-ofa-bs1", "h200-ofa-bs64")] + \
    sorted((ROOT / "datasets" / "h200-ofa-bs64" / "_retest").glob("*"))


def cli(*argv):
    return subprocess.run([*LATKIT, *map(str, argv)], capture_output=True, text=True, timeout=300)


def hf_load(*args, **kwargs) -> dict:
    """`datasets.load_dataset(*args, **kwargs)["train"]` offline in a fresh process (the offline switch is read
    at import), with a cache of its own: {rows, devices}."""
    code = textwrap.dedent(f"""
        import datasets, json, sys, tempfile
        d = datasets.load_dataset(*{args!r}, cache_dir=tempfile.mkdtemp(), **{kwargs!r})["train"]
        print(json.dumps({{"rows": d.num_rows, "devices": sorted(set(d["device"])), "spaces": sorted(set(d["space"]))}}))
    """)
    home = tempfile.mkdtemp(prefix="latkit-hf-")
    env = dict(os.environ, HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1", HF_HOME=home)
    try:  # cwd "/": the checkout's datasets/ folder would shadow the `datasets` package
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env, cwd="/")
    finally:
        shutil.rmtree(home, ignore_errors=True)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def every_reader(root: Path) -> dict:
    """What each reader makes of `root/data`, called with no options (or only the Hive switch), as (rows, sorted
    distinct devices)."""
    import duckdb
    import pandas as pd
    import polars as pl
    data, glob = root / "data", f"{root}/data/**/*.parquet"
    devices = lambda values: tuple(sorted(set(map(str, values))))  # noqa: E731
    out = {}
    t = ds.dataset(data, partitioning="hive").to_table()
    out["pyarrow hive"] = (t.num_rows, devices(t["device"].to_pylist()))
    t = ds.dataset(data).to_table()
    out["pyarrow"] = (t.num_rows, devices(t["device"].to_pylist()))
    t = pq.read_table(data)
    out["pyarrow.parquet"] = (t.num_rows, devices(t["device"].to_pylist()))
    for name, q in [("duckdb", f"read_parquet('{glob}')"), ("duckdb hive", f"read_parquet('{glob}', hive_partitioning=true)")]:
        rows = duckdb.sql(f"select device from {q}").fetchall()
        out[name] = (len(rows), devices(r[0] for r in rows))
    for name, kw in [("polars", {}), ("polars hive", {"hive_partitioning": True})]:
        f = pl.scan_parquet(glob, **kw).collect()
        out[name] = (f.height, devices(f["device"].to_list()))
    f = pl.read_parquet(glob)
    out["polars read"] = (f.height, devices(f["device"].to_list()))
    f = pl.read_parquet(data)
    out["polars folder"] = (f.height, devices(f["device"].to_list()))
    f = pd.read_parquet(data)
    out["pandas"] = (len(f), devices(f["device"]))
    got = hf_load("parquet", data_dir=str(data))
    out["hf datasets"] = (got["rows"], tuple(got["devices"]))
    return out


def old_file(path: Path, rows: list) -> None:
    """A file as the shipped datasets held before: 76 columns, device and space dictionary-encoded."""
    t = pa.Table.from_pylist(rows, schema=SCHEMA).drop_columns(["latency_statistic", "session_reused",
                                                                 "round_session_reused"])
    for name in ("device", "space"):
        i = t.schema.get_field_index(name)
        t = t.set_column(i, name, t[name].dictionary_encode())
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(t, path)


def test_every_reader_reads_data_as_one_table_before_and_after_migrate(tmp_path):
    store = Store(tmp_path)
    store.append([make_measurement(i, device=DEVICES[i % 2]).to_row() for i in range(6)])
    assert folders(tmp_path) == [f"device_={d}/space_=custom" for d in sorted(DEVICES)]
    for f in (tmp_path / "data").rglob("*.parquet"):
        assert pq.read_schema(f).remove_metadata().equals(FILE_SCHEMA) and FILE_SCHEMA.field("device").type == pa.string()
    assert cli("data", "card", tmp_path).returncode == 0
    got = every_reader(tmp_path)
    assert got == dict.fromkeys(got, (6, DEVICES)) and len(got) == 11, got
    # An old file in an old folder beside new ones: latkit reads it at once (conformed); others after `data migrate`
    old_file(tmp_path / "data" / "device=dev1" / "space=custom" / "part-old.parquet",
             [make_measurement(i, device="dev1").to_row() for i in (10, 11)])
    t = Store(tmp_path).read()
    assert t.num_rows == 8 and t.schema.equals(SCHEMA) and t["session_reused"].null_count == 2
    import polars as pl
    with pytest.raises(pl.exceptions.PolarsError):  # what users met: the old file's columns clash with the new ones'
        pl.scan_parquet(f"{tmp_path}/data/**/*.parquet").collect()
    r = cli("data", "migrate", tmp_path)
    assert r.returncode == 0 and f"{tmp_path}: 8 rows under data/" in r.stdout, r.stderr
    assert folders(tmp_path) == [f"device_={d}/space_=custom" for d in sorted(DEVICES)]  # moved in beside the new
    for f in (tmp_path / "data").rglob("*.parquet"):
        assert pq.read_schema(f).remove_metadata().equals(FILE_SCHEMA), f
    assert Store(tmp_path).read().sort_by("key").equals(t.sort_by("key"))  # every value kept
    got = every_reader(tmp_path)
    assert got == dict.fromkeys(got, (8, DEVICES)) and len(got) == 11, got
    # the card's YAML header names the configs: `load_dataset(DIR)` (what the Hub does) finds the rows
    assert cli("data", "card", tmp_path).returncode == 0
    card = (tmp_path / "README.md").read_text()
    assert card.startswith("---\nlicense: cc-by-4.0\n") and "  - split: train\n    path: data/**/*.parquet" in card
    assert hf_load(str(tmp_path)) == {"rows": 8, "devices": list(DEVICES), "spaces": ["custom"]}


def folders(root: Path) -> list:
    """The folders under `root/data` that hold files, relative to it."""
    return sorted({f.parent.relative_to(root / "data").as_posix() for f in (root / "data").rglob("*") if f.is_file()})


def old_layout(root: Path) -> None:
    """`root/data` as latkit wrote it before the folder keys differed from the columns: device=<d>/space=<s>/."""
    for folder in sorted((root / "data").glob("device_=*/space_=*")):
        dev, space = (p.split("=", 1)[1] for p in folder.relative_to(root / "data").parts)
        (root / "data" / f"device={dev}").mkdir(exist_ok=True)
        folder.rename(root / "data" / f"device={dev}" / f"space={space}")
        if not any(folder.parent.iterdir()):
            folder.parent.rmdir()


def test_old_folders_are_read_by_latkit_and_moved_by_migrate_for_the_others(tmp_path):
    """A dataset in `device=`/`space=` folders with an old file, one folder moved by a killed `data migrate` and
    rows written since: latkit reads every row once; pyarrow.parquet (and so pandas) cannot read it as one table;
    `data migrate` moves the rest with every value kept, after which every reader, `data show` and `fit` read it."""
    d = tmp_path / "d"
    shutil.copytree(ROOT / "datasets" / "local-cpu-nb201-fbnet", d)
    old_layout(d)
    with pytest.raises(pa.ArrowException):  # the Hive dictionary of the device= folders against the string column
        pq.read_table(d / "data")
    old_file(d / "data" / "device=local" / "space=custom" / "part-old.parquet",
             [make_measurement(i, device="local").to_row() for i in (1, 2)])
    assert folders(d) == [f"device=local/space={s}" for s in ("custom", "fbnet", "nb201")]
    (d / "data" / "device_=local").mkdir()  # a killed migrate moved one folder; a collection wrote rows since
    os.rename(d / "data" / "device=local" / "space=nb201", d / "data" / "device_=local" / "space_=nb201")
    Store(d).append([make_measurement(3, device="local").to_row()])
    want = Store(d).read().sort_by("key")
    assert want.num_rows == 403 and len(want["key"].unique()) == 403  # every row once
    r = cli("data", "migrate", d)
    assert r.returncode == 0 and f"{d}: 403 rows under data/" in r.stdout, r.stderr
    assert folders(d) == [f"device_=local/space_={s}" for s in ("custom", "fbnet", "nb201")]
    assert sorted(p.name for p in (d / "data").iterdir()) == ["device_=local"]
    got = Store(d).read().sort_by("key")
    for name in ("key", "latency_ms", "samples_ms", "device", "space"):
        assert got[name].combine_chunks().equals(want[name].combine_chunks()), name
    assert got.equals(want)
    got = every_reader(d)
    assert got == dict.fromkeys(got, (403, ("local",))), got
    r = cli("data", "show", d, "--json")
    assert r.returncode == 0, r.stderr
    assert {g["space"]: g["rows"] for g in json.loads(r.stdout)} == {"custom": 3, "fbnet": 200, "nb201": 200}
    model = tmp_path / "m.latkit-model"
    r = cli("predictor", "fit", "--data", d, "--space", "fbnet", "--device", "local", "--budget", 50, "--model",
            "ridge", "--out", model)
    assert r.returncode == 0 and model.is_file(), r.stderr
    n = re.search(r"n_train=(\d+), n_test=(\d+)", r.stdout)
    assert int(n[1]) + int(n[2]) == 200, r.stdout  # every fbnet row, trained on or tested


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(ROOT / "datasets")))
def test_shipped_datasets_read_as_one_table_everywhere(path):
    t = Store(path).read(columns=["device"])
    for f in (path / "data").rglob("*.parquet"):  # migrated in the repo: the full schema in every file
        assert pq.read_schema(f).remove_metadata().equals(FILE_SCHEMA), f
    assert folders(path) and all(f.startswith("device_=") and "/space_=" in f for f in folders(path)), folders(path)
    got = every_reader(path)
    assert got == dict.fromkeys(got, (t.num_rows, tuple(sorted(set(t["device"].to_pylist()))))), got


def test_the_card_names_every_table_for_the_hub():
    path = ROOT / "datasets" / "h200-ofa-bs64"
    [stamp] = [p.name for p in (path / "_retest").iterdir()]
    card = (path / "README.md").read_text()
    assert card.startswith("---\n") and f"- config_name: retest-{stamp}" in card
    assert hf_load(str(path), f"retest-{stamp}")["rows"] == Store(path / "_retest" / stamp).read(["key"]).num_rows


def test_partition_values_that_readers_would_type_are_refused(tmp_path):
    for bad in ("007", "0x1f", "2024-01-01", "inf"):
        with pytest.raises(LatkitError, match=f"device '{bad}' is not a valid name: Hive readers .* rename it"):
            Store(tmp_path).append([make_measurement(1, device=bad).to_row()])
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize("folder", ["onnx", "help"])
def test_data_show_on_a_folder_that_is_not_a_dataset(tmp_path, folder):
    if folder == "onnx":
        path = tmp_path / "models"
        path.mkdir()
        for name in ("a.onnx", "b.onnx"):
            (path / name).write_bytes(b"\x08\x07")
        hint = "measure into this one (latkit measure MODEL --out"
    else:
        path = ROOT / "datasets" / "help"
        hint = f"import them with `latkit data import-help {path} OUT`"
    r = cli("data", "show", path)
    line, = r.stderr.splitlines()
    assert r.returncode == 2 and r.stdout == "", r
    assert line.startswith(f"latkit: error: {path} is not a latkit dataset (no rows under {path}/data); ") and hint in line


def test_migrate_needs_no_polars_and_compact_names_its_extra(tmp_path):
    """On an install without polars (made unimportable in the subprocess), `data migrate` upgrades old files
    and `data compact`, which merges with polars, says in one line which extra to install."""
    shutil.copytree(ROOT / "datasets" / "h200-ofa-bs1", tmp_path / "d")
    folder = next((tmp_path / "d" / "data").glob("device_=*/space_=*"))
    old_file(folder / "part-old.parquet", [make_measurement(i, device="local").to_row() for i in (1, 2)])
    code = ("import sys\n"
            "class Absent:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name.split('.')[0] == 'polars':\n"
            "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
            "sys.meta_path.insert(0, Absent())\n"
            "from latkit.collector.cli import main\n"
            "sys.exit(main(sys.argv[1:]))\n")
    run = lambda *a: subprocess.run([sys.executable, "-c", code, *a], capture_output=True, text=True,  # noqa: E731
                                    timeout=300)
    r = run("data", "migrate", str(tmp_path / "d"))
    assert r.returncode == 0 and "261 rows under data/" in r.stdout, r.stderr
    assert len(list(folder.glob("*.parquet"))) == 2  # the old file rewritten; the current one left as it was
    r = run("data", "compact", str(tmp_path / "d"))
    line, = r.stderr.splitlines()
    assert r.returncode == 2 and line == ("latkit: error: latkit data compact needs polars, which is not installed "
                                          "here; install it with pip install 'latkit[compact]'"), r.stderr
    assert cli("data", "compact", tmp_path / "d").returncode == 0 and len(list(folder.glob("*.parquet"))) == 1
