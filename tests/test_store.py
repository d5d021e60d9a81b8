"""The Parquet store: append-only, partitioned, batched, compacted, resumable by key, never half-written."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from latkit.collector.schema import FILE_SCHEMA
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


def file_without(path, columns, n: int = 3) -> None:
    """A data file of a latkit from before `columns`: n rows of the current schema, those columns left out."""
    old = pa.Table.from_pylist([make_measurement(i).to_row() for i in range(n)], schema=SCHEMA)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(old.drop_columns(sorted(columns)), path)


def test_append_read_partitions(tmp_path):
    store = Store(tmp_path)
    assert store.read().num_rows == 0 and store.done_keys() == set()
    store.append([make_measurement(i).to_row() for i in range(3)] + [make_measurement(9, device="dev2").to_row()])
    t = store.read()
    assert t.schema.equals(SCHEMA) and t.num_rows == 4
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["device_=dev1", "device_=dev2"]
    for f in (tmp_path / "data").rglob("*.parquet"):  # every column in every file, partition columns too
        assert pq.read_schema(f).remove_metadata().equals(FILE_SCHEMA)
    row = t.filter(ds.field("arch") == "m1").to_pylist()[0]
    assert row["latency_ms"] == pytest.approx(1.92) and row["samples_ms"] == pytest.approx([2.0, 2.1, 1.9], rel=1e-7)  # p10 on a CPU
    assert row["input_shape"] == "1x3x8x8" and row["batch_size"] == 1 and row["telemetry_after_temp_c"] == 40.0
    assert row["measured_at"].tzinfo is not None
    # Other readers see the same rows: folder names and the files' columns agree (tests/test_readers.py: all readers)
    assert ds.dataset(tmp_path / "data", partitioning="hive").to_table().num_rows == 4
    assert store.read(filter=ds.field("device") == "dev2").num_rows == 1


def test_done_keys(tmp_path):
    """Ok rows and model errors (which would only fail again) count as done; retry_errors drops the latter."""
    store = Store(tmp_path)
    ok, bad = make_measurement(1), make_measurement(2, status="error")
    store.append([ok.to_row(), bad.to_row()])
    assert store.done_keys() == {ok.job.key, bad.job.key}
    assert store.done_keys(include_errors=False) == {ok.job.key}
    assert store.read().filter(ds.field("status") == "error").to_pylist()[0]["error_kind"] == "corrupt_model"


def test_reads_many_files_in_chunks(tmp_path, monkeypatch):
    """A read scans a bounded number of files at a time (one scan holds ~230 KB per file until it ends); the
    chunks join into one table whatever partition each chunk saw, with the same rows, filter and keys."""
    from latkit.collector import store as store_module
    store = Store(tmp_path)
    for i in range(7):  # seven files over two partitions
        store.append([make_measurement(i, device=f"dev{i % 2}").to_row()])
    whole = store.read().sort_by("arch")
    monkeypatch.setattr(store_module, "_READ_CHUNK", 3)
    chunked = store.read().sort_by("arch")
    assert len(store.files()) == 7 and chunked.equals(whole) and chunked.schema.equals(SCHEMA)
    assert store.read(filter=ds.field("device") == "dev1").num_rows == 3
    assert store.done_keys() == {make_measurement(i, device=f"dev{i % 2}").job.key for i in range(7)}


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


# -- batches, compaction, layout ---------------------------------------------------------------------------


def test_batch_writer_writes_by_rows_by_time_and_on_close(tmp_path):
    store = Store(tmp_path)
    with store.writer(max_rows=3, max_seconds=0.5) as w:
        for i in range(3):
            w.add(make_measurement(i).to_row())
        assert store.read().num_rows == 3 and len(store.files()) == 1  # a full batch is one file
        w.add(make_measurement(3).to_row())
        assert store.read().num_rows == 3
        deadline = time.time() + 10
        while store.read().num_rows < 4 and time.time() < deadline:  # the timer writes a batch that waited
            time.sleep(0.05)
        assert store.read().num_rows == 4 and len(store.files()) == 2
        w.add(make_measurement(4).to_row())
    assert store.read().num_rows == 5  # close writes the rest
    with pytest.raises(ValueError, match="not in the schema"):
        store.writer().add(dict(make_measurement(5).to_row(), typo=1))


def test_devices_one_file_per_fingerprint(tmp_path):
    store = Store(tmp_path)
    store.record_devices({"aaaa": {"device": "d1", "cpu_model": "x"}})
    Store(tmp_path).record_devices({"bbbb": {"device": "d2", "cpu_model": "y"}})  # another collection
    assert sorted(p.name for p in (tmp_path / "devices").iterdir()) == ["d1-aaaa.json", "d2-bbbb.json"]
    assert store.devices() == {"aaaa": {"device": "d1", "cpu_model": "x"}, "bbbb": {"device": "d2", "cpu_model": "y"}}
    (tmp_path / "devices" / "d3-cccc.json").write_text("{not json")
    with pytest.raises(LatkitError, match="d3-cccc.json is not a device probe.*remove it"):
        store.devices()


def _keys(path):
    return Counter(Store(path).read(columns=["key"])["key"].to_pylist())


def test_compact_while_writing_never_loses_or_doubles(tmp_path):
    """A writer appends batches while compactions run and readers read: each read sees every row written before
    it began, once."""
    from latkit.collector.compact import compact
    store, stop, written = Store(tmp_path), threading.Event(), []

    def write():
        i = 0
        while not stop.is_set() and i < 400:
            rows = [make_measurement(i + k, device=f"dev{k % 2}").to_row() for k in range(4)]
            store.append(rows)
            written.extend(r["key"] for r in rows)
            i += 4

    t = threading.Thread(target=write)
    t.start()
    try:
        for _ in range(6):
            before = set(written)
            compact(tmp_path)
            seen = _keys(tmp_path)
            assert set(seen.values()) <= {1} and before <= set(seen)
    finally:
        stop.set()
        t.join()
    compact(tmp_path)
    assert _keys(tmp_path) == Counter(written) and len(Store(tmp_path).files()) == 2


@pytest.mark.parametrize("local", [True, False])
def test_compact_conforms_older_files(tmp_path, monkeypatch, local):
    """Files an older latkit wrote (columns missing, device and space dictionary-encoded, samples as float64), first and last in the folder and
    among current ones, compact to the full schema with every value kept; `local=False` reads the files as
    bytes through the store's filesystem, as on an object store."""
    from latkit.collector.compact import compact
    store = Store(tmp_path)
    for i in range(3):
        store.append([make_measurement(i).to_row()])
    folder = tmp_path / "data" / "device_=dev1" / "space_=custom"
    full = pa.Table.from_pylist([make_measurement(i).to_row() for i in range(3, 7)], schema=SCHEMA).cast(FILE_SCHEMA)
    older = full.slice(0, 2).drop_columns(["session_reused", "round_session_reused"])
    for name in ("device", "space"):  # dictionary-encoded, as latkit wrote them before
        older = older.set_column(older.schema.get_field_index(name), name, older[name].dictionary_encode())
    pq.write_table(older, folder / "part-0-older.parquet")
    f64 = pa.list_(pa.float64())
    pq.write_table(full.slice(2).set_column(full.schema.get_field_index("samples_ms"), "samples_ms",
                                            full["samples_ms"].slice(2).cast(f64)), folder / "part-z-older.parquet")
    want = store.read().sort_by("key")
    assert want.num_rows == 7 and want["session_reused"].null_count == 2
    if not local:
        monkeypatch.setattr(Store, "local", property(lambda self: False))
    r = compact(tmp_path)
    assert (r.files_before, r.files_after, r.rows) == (5, 1, 7)
    [f] = folder.glob("*.parquet")
    assert f.name.startswith("compact-") and pq.read_schema(f).remove_metadata().equals(FILE_SCHEMA)
    assert Store(tmp_path).read().sort_by("key").equals(want)


def test_sigkill_during_compaction(tmp_path):
    """Kill `latkit data compact` mid-write and mid-delete: reads see every row once; the next compaction
    cleans up."""
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    hits = set()
    for attempt in range(12):
        d = tmp_path / str(attempt)
        Store(d).append([make_measurement(0).to_row()])
        folder = d / "data" / "device_=dev1" / "space_=custom"
        for f in range(1, 600):  # single-row files, copies of one with another key (fast to make)
            t = pq.read_table(next(folder.glob("*.parquet")))
            pq.write_table(t.set_column(t.schema.get_field_index("key"), "key", pa.array([f"k{f}"])),
                           folder / f"part-{f}.parquet")
        want = _keys(d)
        assert len(want) == 600
        stage = "mid-write" if attempt % 2 == 0 else "mid-delete"
        proc = subprocess.Popen([sys.executable, "-m", "latkit.collector.cli", "data", "compact", str(d)], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 120
        while proc.poll() is None and time.time() < deadline:
            names = os.listdir(folder)
            if stage == "mid-write" and any(n.startswith(".compact-") for n in names) or \
                    stage == "mid-delete" and any(n.startswith("compact-") for n in names):
                break
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        names = os.listdir(folder)
        if stage == "mid-delete" and any(n.startswith("compact-") for n in names) and any(
                n.startswith("part-") for n in names):
            hits.add(stage)  # compacted file and replaced files side by side
        elif stage == "mid-write" and not any(n.startswith("compact-") for n in names):
            hits.add(stage)
        assert _keys(d) == want  # no loss, no doubles
        r = subprocess.run([sys.executable, "-m", "latkit.collector.cli", "data", "compact", str(d)], env=env,
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        assert _keys(d) == want and os.listdir(folder) == [n for n in os.listdir(folder) if n.startswith("compact-")]
        if hits == {"mid-write", "mid-delete"}:
            break
    assert hits == {"mid-write", "mid-delete"}


def test_migrate_older_layout(tmp_path):
    """A dataset of the older layout (Hive folders beside the card, fewer columns in some files, float64
    samples, _devices.json) is refused with the command to run, and migrated with every value kept."""
    rows = [make_measurement(i).to_row() for i in range(4)]
    t = pa.Table.from_pylist(rows, schema=SCHEMA.set(SCHEMA.get_field_index("samples_ms"),
                                                     pa.field("samples_ms", pa.list_(pa.float64()))))
    folder = tmp_path / "device=dev1" / "space=custom"
    folder.mkdir(parents=True)
    files = t.drop_columns(["device", "space"])
    pq.write_table(files.slice(0, 2), folder / "part-a.parquet")
    pq.write_table(files.slice(2).drop_columns(["launch_ms", "tf32"]), folder / "part-b.parquet")
    (tmp_path / "_devices.json").write_text(json.dumps({"fp": {"device": "dev1", "cpu_model": "x"}}))
    (tmp_path / "README.md").write_text("# card")
    with pytest.raises(LatkitError, match="older latkit.*latkit data migrate"):
        Store(tmp_path).read()
    r = subprocess.run([sys.executable, "-m", "latkit.collector.cli", "data", "migrate", str(tmp_path)],
                       env=dict(os.environ, PYTHONPATH=os.getcwd()), capture_output=True, text=True)
    assert r.returncode == 0 and "4 rows under data/" in r.stdout, r.stderr
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != ".compact.lock") == ["README.md", "data", "devices"]
    new = Store(tmp_path).read().sort_by("key")
    old = t.sort_by("key")
    for name in SCHEMA.names:
        want = old[name].cast(SCHEMA.field(name).type)
        if name in ("launch_ms", "tf32"):
            want = pa.chunked_array([want.slice(0, 2), pa.nulls(2, SCHEMA.field(name).type)])
        assert new[name].combine_chunks().equals(want.combine_chunks()), name
    assert Store(tmp_path).devices() == {"fp": {"device": "dev1", "cpu_model": "x"}}
    assert compact_migrate(tmp_path) == {str(tmp_path): 4}  # again: nothing to do


def test_a_planted_lock_symlink_is_refused_not_followed(tmp_path):
    """A shared dataset may hold `.compact.lock` as a symlink to any file: compact and migrate refuse it in one
    line and leave the file it points to as it was (opening the lock once truncated it)."""
    store = Store(tmp_path / "ds")
    store.append([make_measurement(i).to_row() for i in range(2)])
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    os.symlink(victim, tmp_path / "ds" / ".compact.lock")
    for command in ("compact", "migrate"):
        r = subprocess.run([sys.executable, "-m", "latkit.collector.cli", "data", command, str(tmp_path / "ds")],
                           env=dict(os.environ, PYTHONPATH=os.getcwd()), capture_output=True, text=True)
        assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
        assert "compaction lock" in r.stderr and "it is a symlink" in r.stderr
    assert victim.read_text() == "keep me" and store.read().num_rows == 2


def compact_migrate(path):
    from latkit.collector.compact import migrate
    return migrate(path)


def test_schema_command_and_card_columns(tmp_path):
    from latkit.collector.cli import main
    from latkit.collector.dataset import write_card
    import contextlib
    import io
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["data", "schema", "--json"]) == 0
    cols = json.loads(out.getvalue())
    assert [c["name"] for c in cols] == SCHEMA.names and {"type", "unit", "description"} <= set(cols[0])
    assert next(c for c in cols if c["name"] == "samples_ms")["type"] == "list<item: float>"
    Store(tmp_path).append([make_measurement(1).to_row()])
    card = write_card(tmp_path).read_text()
    assert all(f"| {n} | {SCHEMA.field(n).type} |" in card for n in SCHEMA.names)
