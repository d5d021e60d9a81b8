"""The Parquet store: append-only, partitioned, resumable by key, never half-written."""
import os
import signal
import subprocess
import sys
import textwrap
import time

import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from latkit.collector import SCHEMA, Artifact, Job, LatkitError, Measurement, Settings, Store


def make_measurement(i, status="ok", device="dev1"):
    art = Artifact(path=f"/m/{i}.onnx", sha256=f"{i:064x}", format="onnx", space="custom", arch=f"m{i}")
    job = Job(art, device, Settings())
    if status != "ok":
        return Measurement.failed(job, "corrupt_model", "bad file")
    return Measurement.from_result(job, {
        "samples_ms": [1.0 + i, 1.1 + i, 0.9 + i], "warmup": 10, "runtime_version": "1.0", "agent_version": "0.1.0",
        "inputs": [{"name": "x", "shape": [1, 3, 8, 8], "dtype": "float32"}],
        "telemetry_before": {"freq_mhz": 2000.0, "temp_c": None, "load1": 0.5},
        "telemetry_after": {"freq_mhz": 2100.0, "temp_c": 40.0, "load1": 0.6}}, "fp")


def test_append_read_partitions(tmp_path):
    store = Store(tmp_path / "data")
    assert store.read().num_rows == 0 and store.done_keys() == set()
    store.append([make_measurement(i).to_row() for i in range(3)] + [make_measurement(9, device="dev2").to_row()])
    t = store.read()
    assert t.schema.equals(SCHEMA) and t.num_rows == 4
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["device=dev1", "device=dev2"]
    row = t.filter(ds.field("arch") == "m1").to_pylist()[0]
    assert row["latency_ms"] == pytest.approx(2.0) and row["samples_ms"] == [2.0, 2.1, 1.9]
    assert row["input_shape"] == "1x3x8x8" and row["batch_size"] == 1 and row["telemetry_after_temp_c"] == 40.0
    assert row["measured_at"].tzinfo is not None
    # Any reader sees the same rows through plain hive partitioning.
    assert ds.dataset(tmp_path / "data", partitioning="hive").to_table().num_rows == 4


def test_done_keys(tmp_path):
    """Ok rows and model errors (which would only fail again) count as done; retry_errors drops the latter."""
    store = Store(tmp_path)
    ok, bad = make_measurement(1), make_measurement(2, status="error")
    store.append([ok.to_row(), bad.to_row()])
    assert store.done_keys() == {ok.job.key, bad.job.key}
    assert store.done_keys(include_errors=False) == {ok.job.key}
    assert store.read().filter(ds.field("status") == "error").to_pylist()[0]["error_kind"] == "corrupt_model"


def test_appends_never_touch_existing_files(tmp_path):
    store = Store(tmp_path)
    store.append([make_measurement(1).to_row()])
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*.parquet")}
    store.append([make_measurement(2).to_row()])
    assert all(p.stat().st_mtime_ns == m for p, m in before.items())
    assert len(list(tmp_path.rglob("*.parquet"))) == 2


def test_file_uri(tmp_path):
    store = Store(f"file://{tmp_path}/uri-data")
    store.append([make_measurement(1).to_row()])
    assert Store(tmp_path / "uri-data").read().num_rows == 1


def test_unwritable_out_dir(tmp_path):
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(LatkitError, match="cannot write to .*a_file/data.*choose another --out"):
        Store(tmp_path / "a_file" / "data").check_writable()


WRITER = textwrap.dedent("""
    import sys
    from test_store import make_measurement
    from latkit.collector import Store
    store = Store(sys.argv[1])
    store.append([make_measurement(0).to_row()])
    print("first", flush=True)
    big = make_measurement(1).to_row()
    big["samples_ms"] = [1.0] * 3_000_000     # a slow write, to be killed in the middle
    while True:
        store.append([big])
""")


def test_killed_writer_leaves_readable_dataset(tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.dirname(__file__), os.getcwd()]))
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path)], stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout.readline().strip() == "first"
    deadline = time.time() + 60
    while not list(tmp_path.rglob(".part-*.tmp")) and time.time() < deadline:  # wait until a write is under way
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert list(tmp_path.rglob(".part-*.tmp")), "the kill should land mid-write"
    for f in tmp_path.rglob("*.parquet"):
        pq.read_table(f)  # every visible file is whole
    t = Store(tmp_path).read()
    assert t.num_rows >= 1 and make_measurement(0).job.key in Store(tmp_path).done_keys()
