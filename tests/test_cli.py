"""The CLI end to end: real agent, real runtimes; bad inputs give one clear line and leave data alone."""
import json
import re
import subprocess
import sys

import pytest

from latkit.collector import Store

FAST = ["--repeats", "5", "--min-time", "0.05", "--max-time", "0.3"]


def latkit(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "latkit.collector.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=300, cwd=cwd)


def snapshot(root):
    return {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, artifacts):
    out = tmp_path_factory.mktemp("cli") / "data"
    r = latkit("measure", artifacts["onnx"].path, "--out", out, *FAST)
    assert r.returncode == 0, r.stderr
    assert "on local/onnxruntime (threads=1):" in r.stdout and "ms, median" in r.stdout
    return out


def test_measure_appends_and_skips_known_key(dataset, artifacts):
    assert Store(dataset).read().num_rows == 1
    before = snapshot(dataset)
    r = latkit("measure", artifacts["onnx"].path, "--out", dataset, *FAST)
    assert r.returncode == 0 and "ms, median" in r.stdout
    assert snapshot(dataset) == before  # already measured under this key: nothing timed, nothing written
    r = latkit("measure", artifacts["tflite"].path, "--out", dataset, "--threads", "2", *FAST)
    assert r.returncode == 0 and "local/tflite (threads=2)" in r.stdout
    assert Store(dataset).read().num_rows == 2


@pytest.mark.parametrize("args,message", [
    (["measure", "/no/such/model.onnx"], "model file /no/such/model.onnx not found; check the path"),
    (["measure", "{onnx}", "--device", "nope"], "unknown device 'nope'; known devices: local"),
    (["measure", "{txt}"], "cannot tell the format of model.txt; use one of"),
    (["measure", "{onnx}", "--out", "{file}/sub"], "cannot write to"),
    (["measure", "{onnx}", "--threads", "0"], "argument --threads: must be a whole number >= 1"),
    (["data", "show", "{missing}"], "no dataset at"),
])
def test_bad_input_one_line_and_data_untouched(dataset, artifacts, tmp_path, args, message):
    (tmp_path / "model.txt").write_text("x")
    (tmp_path / "file").write_text("x")
    subst = {"{onnx}": artifacts["onnx"].path, "{txt}": tmp_path / "model.txt", "{file}": tmp_path / "file",
             "{missing}": tmp_path / "missing"}
    args = [str(a) for a in args]
    for k, v in subst.items():
        args = [a.replace(k, str(v)) for a in args]
    if args[0] == "measure" and "--out" not in args:
        args += ["--out", str(dataset)]
    before = snapshot(dataset)
    r = latkit(*args, *(FAST if args[0] == "measure" else []))
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("latkit: error: ") and message in lines[0], r.stderr
    assert snapshot(dataset) == before


def test_corrupt_model_row_kept_exit_1(dataset, tmp_path):
    bad = tmp_path / "corrupt.onnx"
    bad.write_bytes(b"garbage" * 100)
    before = {p: m for p, m in snapshot(dataset).items() if p.suffix == ".parquet"}
    r = latkit("measure", bad, "--out", dataset, *FAST)
    assert r.returncode == 1 and r.stdout == "" and r.stderr.count("\n") == 1  # the failure is one line on stderr
    assert r.stderr.startswith("latkit: error: corrupt.onnx on local/onnxruntime") and "corrupt_model" in r.stderr
    after = snapshot(dataset)
    assert all(after.get(p) == m for p, m in before.items())  # rows already there are untouched
    rows = Store(dataset).read().to_pylist()
    assert [r["status"] for r in rows].count("error") == 1


def test_runtime_mismatch_is_refused_before_shipping(dataset, artifacts):
    """A runtime that cannot read the file's format is bad input (exit 2), refused on the host: no row."""
    before = snapshot(dataset)
    r = latkit("measure", artifacts["onnx"].path, "--runtime", "tflite", "--out", dataset, *FAST)
    assert r.returncode == 2 and "runtime tflite cannot run" in r.stderr and "(onnx, for onnxruntime)" in r.stderr
    assert snapshot(dataset) == before


def test_misnamed_model_is_a_wrong_runtime_row_measured_again(dataset, artifacts, tmp_path):
    """ONNX content named .tflite passes the host's check by name; the agent reads the content and says so:
    a wrong_runtime row (exit 1) that is not permanent, so the next run tries again instead of skipping it."""
    fake = tmp_path / "really-onnx.tflite"
    fake.write_bytes(artifacts["onnx"].path.read_bytes())
    for n in (1, 2):
        r = latkit("measure", fake, "--out", dataset, *FAST)
        assert r.returncode == 1 and "wrong_runtime: the content of" in r.stderr
        assert "use runtime onnxruntime" in r.stderr
        rows = [x for x in Store(dataset).read().to_pylist() if x["arch"] == fake.name]
        assert len(rows) == n and {x["error_kind"] for x in rows} == {"wrong_runtime"}


def test_device_list_and_probe():
    r = latkit("device", "list")
    assert r.returncode == 0 and "local" in r.stdout
    r = latkit("device", "probe", "local")
    probe = json.loads(r.stdout)
    assert probe["cpu_count"] >= 1 and "onnxruntime" in probe["runtimes"]


def test_data_show(dataset):
    r = latkit("data", "show", dataset)
    assert r.returncode == 0
    lines = [line for line in r.stdout.splitlines() if "onnxruntime" in line and "│" in line]  # the table's rows
    assert len(lines) == 1 and " local " in lines[0] and " custom " in lines[0]
    assert "local/onnxruntime/custom: median contention " in r.stdout  # rows of agent >= 0.3.6 have cpu_ms


def test_version():
    r = latkit("--version")
    assert r.returncode == 0 and re.fullmatch(r"latkit \S+, device agent \d+\.\d+\.\d+\n", r.stdout)


def test_json_documents(dataset, artifacts):
    """--json: stdout is one JSON document and nothing else, for every command that has it."""
    def doc(*args):
        r = latkit(*args, "--json")
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)
    m = doc("measure", artifacts["onnx"].path, "--out", dataset, *FAST)
    assert m["status"] == "ok" and m["latency_ms"] > 0 and m["device"] == "local" and "samples_ms" not in m
    assert "cpu_samples_ms" not in m and m["cpu_ms"] > 0
    groups = doc("data", "show", dataset)
    assert {(g["device"], g["runtime"]) for g in groups} >= {("local", "onnxruntime")}
    assert all(g["min_ms"] <= g["median_ms"] <= g["max_ms"] for g in groups if g["ok"])
    devices = doc("device", "list", "--no-check")
    assert devices[0]["name"] == "local" and devices[0]["reachable"] is None
    assert doc("device", "list")[0]["reachable"] is True
    assert doc("device", "probe", "local")["cpu_count"] >= 1


def test_collect_lists_failed_models_logs_progress_and_exits_1(artifacts, tmp_path):
    """Off a terminal, progress is log lines on stderr (no bars, no control codes); the models that failed are
    listed and the exit code is 1. A permanent error is skipped by the re-run, which then exits 0; -q keeps
    stderr empty."""
    models = tmp_path / "models"
    models.mkdir()
    (models / "good.onnx").write_bytes(artifacts["onnx"].path.read_bytes())
    (models / "bad.onnx").write_bytes(b"garbage" * 100)
    args = ["collect", "--models", models, "--devices", "local", "--out", tmp_path / "d", "--rounds", "1", *FAST]
    r = latkit(*args, "--json")
    assert r.returncode == 1
    report = json.loads(r.stdout)
    assert not report["ok"] and [(f["arch"], f["error_kind"]) for f in report["failed_models"]] == [
        ("bad.onnx", "corrupt_model")]
    err = r.stderr.strip().splitlines()
    assert "\x1b[" not in r.stderr and any(re.match(r"latkit: local: \d/2 good\.onnx: [\d.]+ ms$", x) for x in err)
    assert err[-1].startswith("latkit: error: 1 model(s) failed")
    r = latkit(*args, "-q")
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert " done " in r.stdout and "failed" not in r.stdout
