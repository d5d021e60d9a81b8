"""The CLI end to end: real agent, real runtimes; bad inputs give one clear line and leave data alone."""
import json
import subprocess
import sys

import pytest

from collector import Store

FAST = ["--repeats", "5", "--min-time", "0.05", "--max-time", "0.3"]


def latkit(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "collector.cli", *map(str, args)], capture_output=True, text=True,
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
    (["measure", "{onnx}", "--threads", "0"], "threads must be a whole number >= 1"),
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
    assert r.returncode == 1 and "corrupt_model" in r.stdout
    after = snapshot(dataset)
    assert all(after.get(p) == m for p, m in before.items())  # rows already there are untouched
    rows = Store(dataset).read().to_pylist()
    assert [r["status"] for r in rows].count("error") == 1


def test_runtime_mismatch_is_reported(dataset, artifacts):
    r = latkit("measure", artifacts["onnx"].path, "--runtime", "tflite", "--out", dataset, *FAST)
    assert r.returncode == 1 and "corrupt_model" in r.stdout and "tflite" in r.stdout


def test_device_list_and_probe():
    r = latkit("device", "list")
    assert r.returncode == 0 and "local" in r.stdout
    r = latkit("device", "probe", "local")
    probe = json.loads(r.stdout)
    assert probe["cpu_count"] >= 1 and "onnxruntime" in probe["runtimes"]


def test_data_show(dataset):
    r = latkit("data", "show", dataset)
    assert r.returncode == 0
    lines = [line for line in r.stdout.splitlines() if "onnxruntime" in line]
    assert len(lines) == 1 and " local " in lines[0] and " custom " in lines[0]
