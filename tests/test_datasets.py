"""Collection by space, dataset cards, the HELP import and plots, on real data."""
import json
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from latkit.collector import SCHEMA, Store
from latkit.collector.dataset import HELP_DIR, plot, read_latency
from conftest import ROOT


def latkit(*args):
    return subprocess.run([sys.executable, "-m", "latkit.collector.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=600, cwd=ROOT)


@pytest.fixture(scope="module")
def collected(tmp_path_factory):
    """A small real dataset: 6 nb201 (balanced) + 4 fbnet archs timed on `local` with onnxruntime."""
    out = tmp_path_factory.mktemp("ds") / "small"
    quick = ["--min-time", "0.05", "--max-time", "0.1", "--quiet", "--devices", "local", "--out", out]
    r = latkit("collect", "--space", "nb201", "--n", 6, "--sampler", "balanced", "--seed", 1, *quick)
    assert r.returncode == 0, r.stderr
    r = latkit("collect", "--space", "fbnet", "--n", 4, *quick)
    assert r.returncode == 0, r.stderr
    return out


def test_collect_by_space(collected):
    t = Store(collected).read()
    assert t.num_rows == 10 and set(t["status"].to_pylist()) == {"ok"}
    rows = t.to_pylist()
    from latkit.collector.spaces import get_space
    for r in rows:
        assert get_space(r["space"]).validate(r["arch"]) == r["arch"]
        assert r["input_shape"] == "1x3x32x32" and r["batch_size"] == 1
    assert {r["sampler"] for r in rows} == {"balanced(seed=1)", "uniform(seed=0)"}
    assert Store(collected).devices()  # the probe is kept beside the rows


def test_collect_by_space_resumes(collected):
    """The same command again measures nothing: an arch is always exported with the same weights, so it
    is the same file and the same key."""
    before = {p: p.stat().st_mtime_ns for p in collected.rglob("*.parquet")}
    r = latkit("collect", "--space", "nb201", "--n", 6, "--sampler", "balanced", "--seed", 1, "--min-time", "0.05",
               "--max-time", "0.1", "--quiet", "--devices", "local", "--out", collected)
    assert r.returncode == 0, r.stderr
    assert {p: p.stat().st_mtime_ns for p in collected.rglob("*.parquet")} == before


def test_collect_by_space_batch_and_resolution(tmp_path):
    r = latkit("collect", "--space", "nb201", "--n", 1, "--batch-size", 4, "--resolution", 16, "--devices", "local",
               "--out", tmp_path, "--min-time", "0.05", "--max-time", "0.1", "--quiet")
    assert r.returncode == 0, r.stderr
    row = Store(tmp_path).read().to_pylist()[0]
    assert row["input_shape"] == "4x3x16x16" and row["batch_size"] == 4


def test_collect_bad_space_and_arguments(tmp_path):
    r = latkit("collect", "--space", "darts", "--n", 3, "--devices", "local", "--out", tmp_path)
    assert r.returncode == 2 and "unknown space 'darts'; known spaces: nb201, fbnet, ofa" in r.stderr
    r = latkit("collect", "--space", "nb201", "--devices", "local", "--out", tmp_path)
    assert r.returncode == 2 and "--space needs --n" in r.stderr
    r = latkit("collect", "--devices", "local", "--out", tmp_path)
    assert r.returncode == 2 and "give either --models" in r.stderr


def test_card_from_data(collected):
    r = latkit("data", "card", collected, "--title", "test set")
    assert r.returncode == 0, r.stderr
    card = (collected / "README.md").read_text()
    # the YAML header for the Hugging Face Hub first (tests/test_readers.py loads a dataset through it)
    assert card.startswith('---\nlicense: cc-by-4.0\npretty_name: "test set"\n') and "\n---\n\n# test set\n" in card
    assert "10 rows (10 ok)" in card
    assert "| local | onnxruntime | nb201 | 6 | 6 |" in card and "| local | onnxruntime | fbnet | 4 | 4 |" in card
    fp = Store(collected).read(columns=["device_fingerprint"])["device_fingerprint"][0].as_py()
    assert f"`{fp}` (local)" in card and "CPUs" in card
    assert "balanced(seed=1)" in card and '"repeats_min_s":0.05' in card and "Licence: CC-BY-4.0" in card
    assert Store(collected).read().num_rows == 10  # the card is not read as data


def test_plot(collected, tmp_path):
    paths = plot(collected, tmp_path)
    assert {p.name for p in paths} == {"nb201_latency_hist.png", "fbnet_latency_hist.png"}
    assert all(p.stat().st_size > 5000 and p.read_bytes()[:4] == b"\x89PNG" for p in paths)


def test_shipped_help_tables():
    """The HELP tables ship in the repository (a clean clone needs nothing outside it): every arch of each
    table on every device, canonical arch strings, every device a task names, every task a baseline cites."""
    from latkit.collector.cli import build_parser
    from latkit.collector.spaces import get_space
    assert build_parser().parse_args(["data", "import-help", "out"]).src == str(HELP_DIR)
    tasks = json.loads((HELP_DIR / "tasks.json").read_text())
    published = json.loads((HELP_DIR / "published.json").read_text())
    for space, n_archs in (("nb201", 15625), ("fbnet", 5000)):
        t = read_latency(HELP_DIR / f"{space}_latency.parquet").to_pandas()
        devices = set(t["device"])
        assert len(devices) == 27 and len(t) == 27 * n_archs and (t["latency_ms"] > 0).all()
        assert t.groupby("device")["arch"].nunique().eq(n_archs).all()
        assert all(get_space(space).validate(a) == a for a in t["arch"].unique())
        for task in tasks[space].values():
            assert set(task["source"]) | set(task["target"]) <= devices
    for key in published["tasks"]:
        space, tid = key.split()
        assert tid in tasks[space], key
    assert (HELP_DIR / "LICENSE").read_text().startswith("MIT License")


def test_import_help_schema_and_readers(tmp_path, collected):
    src = tmp_path / "src"
    src.mkdir()
    # a slice of the real table keeps the test quick: 3 devices x all fbnet archs
    full = pq.read_table(HELP_DIR / "fbnet_latency.parquet").to_pandas()
    part = full[full["device"].isin(["raspi4", "titan_rtx_32", "pixel3"])]
    pq.write_table(pa.Table.from_pandas(part, preserve_index=False), src / "fbnet_latency.parquet")
    out = tmp_path / "help"
    r = latkit("data", "import-help", src, out)
    assert r.returncode == 0 and "imported 15000 rows" in r.stdout
    imported = Store(out).read()
    assert imported.schema.equals(SCHEMA) and Store(collected).read().schema.equals(imported.schema)
    rows = {(x["device"], x["arch"]): x for x in imported.to_pylist()}
    sample_row = part.iloc[123]
    row = rows[(sample_row["device"], sample_row["arch"])]
    assert row["latency_ms"] == pytest.approx(sample_row["latency_ms"]) and row["space"] == "fbnet"
    assert rows[("titan_rtx_32", sample_row["arch"])]["batch_size"] == 32
    assert latkit("data", "import-help", src, out).stdout.strip() == f"imported 0 rows into {out}"
    said = latkit("data", "show", out).stdout.strip().splitlines()[-1]  # no reference: no collect ever ran there
    assert said == f"no reference timings in {out}: its rows are published tables (latkit data import-help), whose " \
                   "hosts' noise floor and drift are unknown"
    # predictors read a raw HELP table, an imported one and a collected one the same way
    a, b, c = read_latency(src / "fbnet_latency.parquet"), read_latency(out), read_latency(collected, "fbnet")
    assert a.schema.equals(b.schema) and b.schema.equals(c.schema) and a.num_rows == b.num_rows == 15000


def test_read_latency_bad_input(tmp_path):
    from latkit.collector import LatkitError
    with pytest.raises(LatkitError, match="no dataset at"):
        read_latency(tmp_path / "nothing")
    pq.write_table(pa.table({"x": [1]}), tmp_path / "t.parquet")
    with pytest.raises(LatkitError, match="lacks columns"):
        read_latency(tmp_path / "t.parquet")


def test_plot_of_several_devices_adds_the_device_vs_device_heatmap(tmp_path):
    """README: `data plot` writes DATA/plots/: a latency histogram per space and, with more than one device, the
    device-vs-device Spearman heatmap over the archs they share."""
    full = pq.read_table(HELP_DIR / "fbnet_latency.parquet").to_pandas()
    archs = sorted(full["arch"].unique())[:40]
    part = full[full["device"].isin(["raspi4", "pixel3", "titan_rtx_32"]) & full["arch"].isin(archs)]
    (tmp_path / "src").mkdir()
    pq.write_table(pa.Table.from_pandas(part, preserve_index=False), tmp_path / "src" / "fbnet_latency.parquet")
    assert latkit("data", "import-help", tmp_path / "src", tmp_path / "d").returncode == 0
    r = latkit("data", "plot", tmp_path / "d")
    assert r.returncode == 0, r.stderr
    plots = tmp_path / "d" / "plots"
    assert r.stdout.split() == [str(plots / "fbnet_latency_hist.png"), str(plots / "fbnet_spearman.png")]
    assert all(p.read_bytes()[:4] == b"\x89PNG" and p.stat().st_size > 5000 for p in plots.iterdir())
