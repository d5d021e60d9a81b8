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


def test_a_torchscript_file_is_timed_with_the_input_shapes_given(artifacts, tmp_path):
    """README: `.pt` (TorchScript) files declare no inputs: `--input-shape` gives them; the key holds them, so other
    shapes are other rows, and the same again is not timed again."""
    out, ts = tmp_path / "d", artifacts["torchscript"].path
    runs = [latkit("measure", ts, "--out", out, "--input-shape", shape, *FAST) for shape in
            ("1x3x32x32", "1x3x32x32", "1x3x64x64")]
    assert [r.returncode for r in runs] == [0, 0, 0], [r.stderr for r in runs]
    assert "local/torch" in runs[0].stdout and "input 1x3x32x32" in runs[0].stdout
    assert "not timed again" in runs[1].stdout and "input 1x3x64x64" in runs[2].stdout
    rows = Store(out).read(columns=["input_shape", "status", "settings"]).to_pylist()
    assert sorted(x["input_shape"] for x in rows) == ["1x3x32x32", "1x3x64x64"] and {x["status"] for x in rows} == {"ok"}
    assert sorted(json.loads(x["settings"])["input_shapes"] for x in rows) == [[[1, 3, 32, 32]], [[1, 3, 64, 64]]]
    r = latkit("data", "retest", out, "--n", "2", "--models", ts.parent, "--quiet")  # the rows say their shapes
    assert r.returncode == 0 and "2 rows measured again" in r.stdout, r.stderr


def test_measure_prints_one_line_and_one_per_warning(artifacts, tmp_path):
    """README: `latkit measure` prints one line (and one more per warning of the row) and appends one row."""
    r = latkit("measure", artifacts["onnx"].path, "--out", tmp_path / "d", *FAST)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    (row,) = Store(tmp_path / "d").read(["latency_ms", "warnings"]).to_pylist()
    first, *more = r.stdout.splitlines()
    assert re.match(rf"{artifacts['onnx'].path.name} on local/onnxruntime \(threads=1\): {row['latency_ms']:.4f} ms, ",
                    first), first
    assert all(x.startswith("  warning: ") for x in more), r.stdout
    assert "; ".join(x[len("  warning: "):] for x in more) == row["warnings"]  # the row's warnings, one a line


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
    assert doc("device", "show", "local") == {"name": "local", "transport": "local", "tags": ["builtin"]}


def test_collect_lists_failed_models_logs_progress_and_exits_1(artifacts, tmp_path):
    """Off a terminal, progress is log lines on stderr (no bars, no control codes); the models that failed are
    listed and the exit code is 1. A permanent error is skipped by the re-run, which then exits 0 and, -q or not,
    says so in one warning line (a re-run must not pass for a clean collection); --json counts it."""
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
    assert r.returncode == 0 and r.stderr == ("latkit: warning: 1 model(s) skipped as stored errors that would fail "
                                              "again (bad_model, corrupt_model, unsupported_op); fix the files, or "
                                              "after upgrading the runtime re-run with --retry-errors\n"), r.stderr
    assert " done " in r.stdout and "failed" not in r.stdout
    assert json.loads(latkit(*args, "--json", "-q").stdout)["devices"][0]["skipped_errors"] == 1


def test_retry_errors_measures_permanent_errors_again_and_only_them(artifacts, tmp_path):
    """README: a re-run skips a permanent error (corrupt_model); `--retry-errors` measures it again (a new error
    row, exit 1, listed), while the ok rows stay skipped."""
    models = tmp_path / "models"
    models.mkdir()
    (models / "good.onnx").write_bytes(artifacts["onnx"].path.read_bytes())
    (models / "bad.onnx").write_bytes(b"garbage" * 100)
    out = tmp_path / "d"
    args = ["collect", "--models", models, "--devices", "local", "--out", out, "--rounds", "1", "--no-reference",
            "-q", "--json", *FAST]
    assert latkit(*args).returncode == 1
    assert json.loads(latkit(*args).stdout)["devices"][0]["skipped"] == 2  # both rows count as done
    r = latkit(*args, "--retry-errors")
    assert r.returncode == 1 and "1 model(s) failed" in r.stderr
    (dev,) = json.loads(r.stdout)["devices"]
    assert (dev["skipped"], dev["measured"], dev["errors"]) == (1, 0, 1)
    rows = Store(out).read(["arch", "status", "error_kind"]).to_pylist()
    assert sorted((x["arch"], x["status"], x["error_kind"]) for x in rows) == [
        ("bad.onnx", "error", "corrupt_model"), ("bad.onnx", "error", "corrupt_model"), ("good.onnx", "ok", "")]
