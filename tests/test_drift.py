"""The reference network and the drift: every collection times an A/A pair of a fixed network now and then into
the side table `_reference/` (never among the data), and `collect`, `data show` and the card report the host's
noise floor and drift, with a warning naming the span a host drifted in. Real agents, real onnxruntime."""
import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest

from latkit.collector import Artifact, Job, Settings, Store
from latkit.collector.api import make_jobs
from latkit.collector.dataset import read_latency, summary, write_card
from latkit.collector.device_loop import DeviceRequest, run_device
from latkit.collector.drift import DRIFT_FACTOR, Check, dataset_drift, of_checks
from latkit.collector.reference import INPUT, Schedule, artifacts, onnx_bytes, side_store
from latkit.collector.reports import DeviceReport
from latkit.collector.scheduler import collect
from latkit.collector.schema import ROLES
from conftest import ROOT, small_onnx_models

FAST = ["--repeats", "5", "--min-time", "0.02", "--max-time", "0.05", "--rounds", "1"]
QUICK = Settings(warmup_min_count=2, warmup_min_s=0.01, repeats_min_count=5, repeats_min_s=0.02, repeats_max_s=0.05,
                 rounds=1)
# The ONNX reference's bytes never change (a dataset's series stays comparable across hosts and latkit versions)
REFERENCE_A_SHA256 = "98ec75a469f027a88d771214d03183d6db6dbb0ed73bce92334247e4ca647e6c"


def latkit(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "latkit.collector.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT)


@pytest.fixture(scope="module")
def models(tmp_path_factory, export_cache):
    return small_onnx_models(tmp_path_factory.mktemp("models"), range(4, 9), export_cache)


def reference_rows(out) -> list:
    return sorted(side_store(Store(out)).read().to_pylist(), key=lambda r: r["started_at"])


def test_the_onnx_reference_is_one_fixed_valid_network_under_two_names(tmp_path):
    """Written without torch or onnx, it is valid ONNX; the twins differ in their doc_string only, give the same
    outputs in onnxruntime, and the bytes are those of every host."""
    onnx = pytest.importorskip("onnx")
    import onnxruntime as ort
    a, b = onnx_bytes("a"), onnx_bytes("b")
    assert a != b and onnx_bytes("a") == a
    ma, mb = onnx.load_from_string(a), onnx.load_from_string(b)
    onnx.checker.check_model(ma, full_check=True)
    ma.doc_string = mb.doc_string = ""
    assert ma.SerializeToString() == mb.SerializeToString()
    x = np.random.RandomState(1).standard_normal(INPUT).astype(np.float32)
    ya, yb = (ort.InferenceSession(m).run(None, {"input_0": x})[0] for m in (a, b))
    assert ya.shape == (1, 10) and np.array_equal(ya, yb) and np.abs(ya).max() > 0
    assert hashlib.sha256(a).hexdigest() == REFERENCE_A_SHA256
    made = []  # the devices' threads ask at once: one pair is made, no temporary file is left
    threads = [threading.Thread(target=lambda: made.append(artifacts("onnxruntime", tmp_path))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    twins = made[0]
    assert len(made) == 4 and all(m == twins for m in made)
    assert [t.arch for t in twins] == ["reference-a", "reference-b"] and twins[0].sha256 != twins[1].sha256
    assert sorted(p.name for p in (tmp_path / "reference").iterdir()) == ["reference-a.onnx", "reference-b.onnx"]
    assert twins[0].sha256 == REFERENCE_A_SHA256


def test_a_reference_that_cannot_be_placed_leaves_no_temporary_file(tmp_path):
    """A folder where the reference file goes: the write fails in one error, and its temporary file goes too (no
    hidden file left in the cache by each run that tried)."""
    (tmp_path / "reference" / "reference-a.onnx").mkdir(parents=True)
    (tmp_path / "reference" / "reference-a.onnx" / "x").write_text("in the way")
    with pytest.raises(OSError):
        artifacts("onnxruntime", tmp_path)
    assert sorted(p.name for p in (tmp_path / "reference").iterdir()) == ["reference-a.onnx"]


def test_a_check_timed_again_after_a_broken_link_gets_rows_of_its_own(tmp_path):
    """A link that breaks between the twins leaves twin a's row; the check is timed again on a fresh agent, and
    its rows must not share a key with the first ones."""
    sch = Schedule()
    art = Artifact(path="/m/x.onnx", sha256="0" * 64, format="onnx", space="custom", arch="x")
    twins = sch.jobs(Job(art, "loc", QUICK), tmp_path)
    first = [sch.key(j) for j in twins]
    again = [sch.key(j) for j in twins]  # no sch.done() between: the same check, timed again
    assert len(set(first + again)) == 4


def test_collect_times_reference_pairs_into_the_side_table_and_reports_them(reg, models, tmp_path):
    out = tmp_path / "d"
    r = latkit("collect", "--models", models, "--devices", "loc", "--registry", reg.path, "--out", out, "--json",
               "-q", *FAST)
    assert r.returncode == 0, r.stderr
    (dev,) = json.loads(r.stdout)["devices"]
    ref = dev["reference"]
    assert ref["checks"] == 2 and ref["runtime"] == "onnxruntime" and 0 <= ref["aa_floor"] < 0.5
    assert ref["min_ms"] <= ref["first_ms"] <= ref["max_ms"] and dev["reference_s"] > 0
    rows = reference_rows(out)
    assert len(rows) == 4 and {r["role"] for r in rows} == {"reference"} and "reference" in ROLES
    assert [r["arch"] for r in rows] == ["reference-a", "reference-b"] * 2
    assert len({r["key"] for r in rows}) == 4 and len({r["model_sha256"] for r in rows}) == 2
    assert {r["space"] for r in rows} == {"reference"} and all(r["status"] == "ok" for r in rows)
    assert json.loads(rows[0]["settings"])["rounds"] == 2 and rows[0]["threads"] == 1
    for a, b in (rows[:2], rows[2:]):  # a round each in the order a b b a: a's rounds enclose b's
        assert len(a["round_started_at"]) == len(b["round_started_at"]) == 2
        assert a["round_started_at"][0] < b["round_started_at"][0] < b["round_started_at"][1] < a["round_started_at"][1]
    data = Store(out).read().to_pylist()
    assert len(data) == 5 and not {r["role"] for r in data} - {""} and len(Store(out).done_keys()) == 5
    # what reads the data never sees the reference: latency tables (fit), data show, graphs (graph models)
    lat = read_latency(out)
    assert lat.num_rows == 5 and not any(a.startswith("reference") for a in lat["arch"].to_pylist())
    assert [(g["rows"], g["space"]) for g in summary(out)["groups"]] == [(5, "custom")]
    pytest.importorskip("pandas")
    from latkit.predictor.graphdata import graph_rows
    graphs = graph_rows(out, models=[models])
    assert len(graphs) == 5 and set(graphs.space) == {"custom"}
    shown = latkit("data", "show", out)
    assert shown.returncode == 0 and "reference on loc (onnxruntime):" in shown.stdout
    assert "A/A floor" in shown.stdout and "drift" in shown.stdout
    (group,) = json.loads(latkit("data", "show", out, "--json").stdout)
    assert group["rows"] == 5 and group["reference"][0]["checks"] == 2
    card = write_card(out).read_text()
    assert "## Reference, noise floor and drift" in card and "| loc | onnxruntime | 2 |" in card
    assert "config_name: reference" in card


def test_collect_prints_the_reference_line_and_no_reference_writes_none(reg, models, tmp_path):
    out = tmp_path / "d"
    r = latkit("collect", "--models", models, "--devices", "loc", "--registry", reg.path, "--out", out, "-q", *FAST)
    assert r.returncode == 0, r.stderr
    line = next(x for x in r.stdout.splitlines() if x.startswith("reference on loc"))
    assert "over 2 check(s)" in line and "A/A floor" in line and "% of the run)" in line
    share = float(line.rsplit("(", 1)[1].split(" %")[0])
    assert 0 < share < 100
    off = tmp_path / "off"
    r = latkit("collect", "--models", models, "--devices", "loc", "--registry", reg.path, "--out", off, "--json",
               "--no-reference", "-q", *FAST)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["devices"][0]["reference"] is None and not (off / "_reference").exists()
    assert Store(off).read(["key"]).num_rows == 5
    shown = latkit("data", "show", off)
    assert "no reference timings" in shown.stdout and "only `collect` times the reference" in shown.stdout
    assert "No reference timings" in write_card(off).read_text()


def test_checks_come_every_n_jobs_and_at_the_end(reg, models, tmp_path):
    jobs = make_jobs([Artifact.from_file(p) for p in sorted(models.glob("*.onnx"))], ["loc"], settings=QUICK)
    report = DeviceReport("loc", total=len(jobs))
    run_device(reg.get("loc"), jobs, Store(tmp_path / "d"), report,
               DeviceRequest(reference=True, reference_every_jobs=2, reference_every_s=3600))
    assert report.measured == 5 and report.status == "done", report.message
    assert len(report.checks) == 4  # first, after jobs 2 and 4, and after the last
    assert [c.at for c in report.checks] == sorted(c.at for c in report.checks)
    assert len(reference_rows(tmp_path / "d")) == 8 and report.drift().checks == 4


def test_resume_after_a_stop_neither_duplicates_nor_loses_rows(reg, models, tmp_path):
    """A collection stopped after two rows keeps them and its first check (no end check); the re-run times the
    other three and checks first and last: every data key once, every reference row a key of its own."""
    out, stop = tmp_path / "d", threading.Event()
    jobs = make_jobs([Artifact.from_file(p) for p in sorted(models.glob("*.onnx"))], ["loc"], settings=QUICK)
    report = DeviceReport("loc", total=len(jobs))

    def on_row(rep, m):
        if rep.measured == 2:
            stop.set()
    run_device(reg.get("loc"), jobs, Store(out), report, DeviceRequest(reference=True), on_row=on_row, stop=stop)
    assert report.status == "stopped" and report.measured == 2 and len(report.checks) == 1
    again = collect(jobs, [reg.get("loc")], out=out, progress=False)
    assert again.ok and again.devices[0].measured == 3 and again.devices[0].skipped == 2
    assert len(again.devices[0].checks) == 2
    keys = Counter(Store(out).read(["key"])["key"].to_pylist())
    assert len(keys) == 5 and set(keys.values()) == {1}
    rows = reference_rows(out)
    assert len(rows) == 6 and len({r["key"] for r in rows}) == 6
    assert [d.checks for d in dataset_drift(out)] == [1, 2]  # each collection run apart (its sampler names it)
    assert len({r["sampler"] for r in rows}) == 2 and all(r["sampler"].startswith("reference(run=") for r in rows)


def _row(device: str, arch: str, ms: float, at: datetime, n: int, run: str = "") -> dict:
    return {"space": "reference", "arch": arch, "device": device, "runtime": "onnxruntime", "settings": "{}",
            "key": f"k{n}", "status": "ok", "latency_ms": ms, "ci_rel": 0.002, "started_at": at, "role": "reference",
            "sampler": run, "model_sha256": arch, "error_kind": "", "error": "", "samples_ms": []}


def test_two_runs_days_apart_are_two_drifts_not_a_step(tmp_path):
    """A resume two days later on a host 20 % slower (another kernel, say) is another run: each run's drift is
    its own (none here), no warning spans the gap."""
    out, t0, rows = tmp_path / "d", datetime(2026, 12, 4, 10, 0, tzinfo=timezone.utc), []
    for run, start, base in (("reference(run=aaaa)", t0, 1.0), ("reference(run=bbbb)", t0 + timedelta(days=2), 1.2)):
        for i in range(4):
            for twin, ms in (("a", base), ("b", base * 1.004)):
                rows.append(_row("pi4", f"reference-{twin}", ms, start + timedelta(minutes=i, seconds=twin == "b"),
                                 len(rows), run))
    side_store(Store(out)).append(rows)
    first, second = dataset_drift(out)
    assert (first.checks, second.checks) == (4, 4) and first.start < second.start
    assert first.drift == pytest.approx(0.0) and second.first_ms == pytest.approx(1.2024) and not second.drifted
    assert first.warning() is None and second.warning() is None


def test_a_host_that_jumps_gets_a_warning_naming_the_span(tmp_path, capfd):
    """Crafted reference rows: 1.000 / 1.004 ms every minute from 10:00, then 1.25 ms from 10:06 on. The floor is
    0.4 %, the drift 25 %: data show, the card and of_checks name 10:05-10:06 as the span."""
    out = tmp_path / "d"
    t0 = datetime(2026, 12, 6, 10, 0, tzinfo=timezone.utc)
    rows, n = [], 0
    for i in range(10):
        base = 1.0 if i < 6 else 1.25
        for twin, ms in (("a", base), ("b", base * 1.004)):
            at = t0 + timedelta(minutes=i, seconds=1 if twin == "b" else 0)
            rows.append(_row("pi4", f"reference-{twin}", ms, at, n))
            n += 1
    side_store(Store(out)).append(rows)
    Store(out).append([dict(_row("pi4", "arch0", 3.0, t0, 99), space="custom", role="")])
    (d,) = dataset_drift(out)
    assert d.checks == 10 and d.aa_floor == pytest.approx(0.004, rel=1e-6) and d.noise == pytest.approx(0.004, rel=1e-6)
    assert d.drift == pytest.approx(0.25, rel=1e-3) and d.step == pytest.approx(0.25, rel=1e-3) and d.drifted
    assert (d.step_from, d.step_to) == (t0 + timedelta(minutes=5), t0 + timedelta(minutes=6))
    warning = d.warning()
    assert "between 2026-12-06 10:05:00 and 2026-12-06 10:06:00 UTC" in warning and "pi4" in warning
    r = latkit("data", "show", out)
    assert r.returncode == 0 and "reference on pi4 (onnxruntime): 1.002 -> 1.25" in r.stdout
    assert "ms over 10 check(s) 2026-12-06 10:00:00-10:09:00 UTC" in r.stdout
    assert "between 2026-12-06 10:05:00 and 2026-12-06 10:06:00 UTC" in r.stderr and "warning:" in r.stderr
    card = write_card(out).read_text()
    assert "Warning: pi4's reference changed by 25.0 % in one step between 2026-12-06 10:05:00" in card
    assert summary(out)["rows"] == 1  # the data: one row, the reference apart


def test_drift_below_the_noise_is_quiet_and_slow_drift_names_its_whole_span():
    t0 = datetime(2026, 12, 6, 10, 0, tzinfo=timezone.utc)
    rng = np.random.RandomState(0)
    noisy = [Check(t0 + timedelta(minutes=i), 1 + e, 1 + f) for i, (e, f) in
             enumerate(rng.normal(0, 0.01, (8, 2)))]
    d = of_checks("dev", "onnxruntime", noisy)
    assert d.aa_floor > 0.004 and d.drift < DRIFT_FACTOR * d.noise and d.warning() is None
    slow = [Check(t0 + timedelta(minutes=i), 1 + 0.002 * i, (1 + 0.002 * i) * 1.001, 0.001) for i in range(10)]
    d = of_checks("dev", "onnxruntime", slow)
    assert d.step < DRIFT_FACTOR * d.noise < d.drift
    assert "drifted 1.8 % between 2026-12-06 10:00:00 and 2026-12-06 10:09:00 UTC" in d.warning()
    assert of_checks("dev", "onnxruntime", []) is None
    one = of_checks("dev", "onnxruntime", slow[:1])
    assert not one.drifted and "one check" in one.line()


def _children(pid: int) -> list:
    """The pids whose parent is `pid` (from /proc)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _stall(pid: int, stop: threading.Event) -> None:
    """What an oversubscribed host does to a guest: the process is stopped ~half of every millisecond."""
    try:
        while not stop.is_set():
            os.kill(pid, signal.SIGSTOP)
            time.sleep(0.0005)
            os.kill(pid, signal.SIGCONT)
            time.sleep(0.0005)
    except ProcessLookupError:
        pass
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)


def test_a_host_that_stalls_for_a_while_mid_collect_gets_the_warning_at_its_end(reg, models, tmp_path):
    """A real drift, not crafted rows: 3 s into a `collect` (a reference check every second) the host stalls the
    agent for 4 s. The reference, timed by the real agent, slows down; the end of `collect` warns naming a span
    that meets the stall, and `data show` and the card find the same drift in the side table. Every row is kept."""
    out = tmp_path / "d"
    cmd = [sys.executable, "-m", "latkit.collector.cli", "collect", "--models", str(models), "--devices", "loc",
           "--registry", str(reg.path), "--out", str(out), "-q", "--reference-every", "1", "--rounds", "12",
           "--min-time", "0.1", "--max-time", "0.1", "--repeats", "5"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    stop, stalls = threading.Event(), []
    try:
        deadline = time.monotonic() + 60
        while not (agents := _children(proc.pid)) and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert agents, "no agent started"
        time.sleep(3)
        began = datetime.now(timezone.utc)
        stalls = [threading.Thread(target=_stall, args=(pid, stop)) for pid in agents]
        for t in stalls:
            t.start()
        time.sleep(4)
        stop.set()
        ended = datetime.now(timezone.utc)
        stdout, stderr = proc.communicate(timeout=240)
    finally:
        stop.set()
        for t in stalls:
            t.join()
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stderr
    assert Store(out).read(["key"]).num_rows == 5  # every row kept
    (d,) = dataset_drift(out)
    timeline = [(f"{r['started_at']:%H:%M:%S.%f}", r["arch"][-1], round(r["latency_ms"], 3)) for r in reference_rows(out)]
    assert d.checks >= 6 and d.drifted and d.drift > 0.1, (d.line(), f"stall {began:%H:%M:%S.%f}-{ended:%H:%M:%S.%f}",
                                                           timeline)
    assert d.end > ended, "the collection ended before the stall did: it measured nothing after it"
    warning = next(x for x in stderr.splitlines() if "warning:" in x and "loc's reference" in x)
    assert "rows timed then may be off by as much" in warning
    span = (d.step_from, d.step_to) if f"between {d.step_from:%Y-%m-%d %H:%M:%S}" in warning else \
        (d.drift_from, d.drift_to)
    assert f"between {span[0]:%Y-%m-%d %H:%M:%S} and {span[1]:%Y-%m-%d %H:%M:%S} UTC" in warning
    assert span[0] <= ended and span[1] >= began, (span, began, ended)  # the span meets the stall
    line = next(x for x in stdout.splitlines() if x.startswith("reference on loc"))
    assert f"over {d.checks} check(s)" in line
    assert d.warning() in latkit("data", "show", out).stderr
    assert "Warning: loc's reference" in write_card(out).read_text()
