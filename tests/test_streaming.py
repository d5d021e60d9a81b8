"""Exports stream into the devices' queues: a device times the first archs while later ones still export, an
export that fails mid-way keeps what was measured, a device that fails does not stall the others, and a
re-run resumes. Real exports (torch -> ONNX), a real local agent and store."""
import dataclasses
import os
import threading
import time
from pathlib import Path

import pytest

from latkit.collector import Registry, Settings, Store
from latkit.collector.api import collect_space
from latkit.collector.errors import LatkitError
from latkit.collector.job import Artifact, Job
from latkit.collector.samplers import sample
from latkit.collector.scheduler import DeviceReport, Stream, feed
from latkit.collector.spaces import NB201

# The local devices are pinned to core 0, so exports run beside them on the other cores (export_plan); an
# unpinned local device would share its cores with them and time only after every export.
FAST = Settings(warmup_min_count=2, warmup_min_s=0.01, repeats_min_count=5, repeats_min_s=0.02, repeats_max_s=0.05,
                rounds=2, cores=(0,))
pytestmark = pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2 or 0 not in os.sched_getaffinity(0),
                                reason="streams exports beside a local device pinned to core 0: needs cores 0 and another")


class SlowNB201(NB201):
    """NB201 whose networks take `delay` s to build, like a big space's export; arch index `broken` exports a
    network that cannot run (the export fails)."""

    def __init__(self, delay: float = 0.0, broken: str = ""):
        super().__init__()
        self.delay, self.broken = delay, broken

    def options(self) -> dict:  # the same networks as NB201's: the same export keys and files
        return NB201().options()

    def build(self, arch, resolution=None, device="cpu"):
        time.sleep(self.delay)
        net = super().build(arch, resolution, device)
        if arch == self.broken:
            def fail(*_):
                raise RuntimeError("this network cannot run")
            net.forward = fail
        return net


@pytest.fixture
def reg(tmp_path):
    lines = []
    for name in ("loc", "loc2"):
        lines += [f"[devices.{name}]", 'transport = "local"', f'workdir = "{tmp_path / name}"',
                  f'lease = "{tmp_path / name}.lease"', ""]
    (tmp_path / "devices.toml").write_text("\n".join(lines))
    return Registry(tmp_path / "devices.toml")


def test_devices_time_while_later_archs_export(tmp_path, reg):
    """With 0.6 s per export and 6 archs, the first row is timed before the last export exists; every arch is
    measured once on each device, in rounds."""
    space = SlowNB201(delay=0.6)
    report = collect_space(space, 6, ["loc", "loc2"], settings=FAST, out=tmp_path / "data", registry=reg,
                           progress=False, cache_dir=tmp_path / "cache")
    assert report.ok and report.measured == 12 and [d.total for d in report.devices] == [6, 6]
    rows = Store(tmp_path / "data").read().to_pylist()
    assert len({(r["device"], r["key"]) for r in rows}) == len(rows) == 12
    assert {len(r["round_ms"]) for r in rows} == {2}
    last_export = max(p.stat().st_mtime for p in (tmp_path / "cache").glob("*.onnx"))
    assert min(r["started_at"].timestamp() for r in rows) < last_export
    again = collect_space(space, 6, ["loc", "loc2"], settings=FAST, out=tmp_path / "data", registry=reg,
                          progress=False, cache_dir=tmp_path / "cache")
    assert again.ok and again.measured == 0 and [d.skipped for d in again.devices] == [6, 6]


def test_export_failure_mid_stream_keeps_the_rows_measured(tmp_path, reg):
    """An arch whose export fails stops the collection with one line naming it; the archs measured before it
    stay stored, and once the space is fixed the same call measures only the rest."""
    archs = sample(NB201(), 5, "uniform", 0)
    broken = SlowNB201(delay=0.3, broken=archs[3])
    with pytest.raises(LatkitError) as e:
        collect_space(broken, 5, ["loc"], settings=FAST, out=tmp_path / "data", registry=reg, progress=False,
                      cache_dir=tmp_path / "cache")
    said = str(e.value)
    assert "export of" in said and archs[3] in said and "the rows measured are kept" in said and "\n" not in said
    kept = {r["arch"] for r in Store(tmp_path / "data").read().to_pylist()}
    assert kept and kept <= set(archs[:3])
    fixed = collect_space(SlowNB201(), 5, ["loc"], settings=FAST, out=tmp_path / "data", registry=reg,
                          progress=False, cache_dir=tmp_path / "cache")
    assert fixed.ok and fixed.measured == 5 - len(kept) and fixed.devices[0].skipped == len(kept)
    assert sorted(r["arch"] for r in Store(tmp_path / "data").read().to_pylist()) == sorted(archs)


def test_a_failed_device_does_not_stall_the_stream(tmp_path, reg):
    """One device cannot start (its python does not exist): it fails at once and the other measures every
    arch."""
    text = (tmp_path / "devices.toml").read_text().replace(
        "[devices.loc2]\n", "[devices.loc2]\npython = \"/nonexistent/python3\"\n")
    (tmp_path / "devices.toml").write_text(text)
    report = collect_space(SlowNB201(delay=0.2), 4, ["loc", "loc2"], settings=FAST, out=tmp_path / "data",
                           registry=Registry(tmp_path / "devices.toml"), progress=False,
                           cache_dir=tmp_path / "cache")
    by = {d.device: d for d in report.devices}
    assert by["loc2"].status == "failed" and "python" in by["loc2"].message
    assert by["loc"].status == "done" and by["loc"].measured == 4


def test_feed_skips_stored_keys_and_drops_jobs_of_a_stopped_device():
    """The feeder never blocks on the full queue of a device that has stopped taking jobs; stored keys count
    as skipped (a stored permanent error also as such), and totals are exact at the end of the stream."""
    art = Artifact(Path("m.onnx"), "0" * 64, "onnx")
    jobs = [Job(dataclasses.replace(art, sha256=f"{i:064d}"), d, Settings()) for i in range(6) for d in ("a", "b")]
    streams = {"a": Stream(maxsize=2), "b": Stream(maxsize=2)}
    reports = {"a": DeviceReport("a", total=0), "b": DeviceReport("b", total=0, status="failed")}
    reports["a"].status = "running"
    done, stop, errors = {jobs[0].key}, threading.Event(), []
    got = []
    drain = threading.Thread(target=lambda: [got.extend(w) for w in iter(lambda: streams["a"].window(stop), None)])
    drain.start()
    t = threading.Thread(target=feed, args=(iter(jobs), streams, reports, done, stop, errors, done))
    t.start()
    t.join(10)
    assert not t.is_alive(), "the feeder blocked on a device that stopped taking jobs"
    drain.join(10)
    assert not errors and [j.key for j in got] == [j.key for j in jobs[2::2]]
    assert (reports["a"].total, reports["a"].skipped, reports["a"].skipped_errors, reports["b"].total) == (6, 1, 1, 6)


def test_sigint_while_exporting_and_timing_then_resume(tmp_path, reg):
    """Ctrl-C while the device times and the export worker still exports: exit 130 within 5 s with one line,
    no agent or export worker left; the same command then measures the rest, each key once."""
    import signal
    import subprocess
    import sys
    from collections import Counter

    import psutil
    from conftest import ROOT
    out = tmp_path / "d"
    args = [sys.executable, "-m", "latkit.collector.cli", "collect", "--space", "nb201", "--n", "30", "--devices",
            "loc", "--registry", str(reg.path), "--out", str(out), "--cores", "0", "--min-time", "0.5", "--max-time",
            "0.5", "--rounds", "1", "--quiet"]
    env = dict(os.environ, LATKIT_CACHE=str(tmp_path / "cache"))  # empty: every arch is exported during the run
    proc = subprocess.Popen(args, cwd=ROOT, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 180
    while Store(out).read(columns=["key"]).num_rows < 1 and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the collection ended before it could be interrupted"
    children = psutil.Process(proc.pid).children(recursive=True)
    t0 = time.time()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert time.time() - t0 < 5 and proc.returncode == 130, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert "run the same command again to resume" in err
    time.sleep(1)
    assert [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE] == []
    r = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    counts = Counter(Store(out).read(columns=["key"])["key"].to_pylist())
    assert len(counts) == 30 and set(counts.values()) == {1}


def test_sigkilled_orchestrator_leaves_no_export_worker(tmp_path, reg):
    """The export workers die with the orchestrator (PR_SET_PDEATHSIG), as its agents do: SIGKILL while the
    device times and the workers export leaves no process of the run after 10 s."""
    import signal
    import subprocess
    import sys

    import psutil
    from conftest import ROOT
    args = [sys.executable, "-m", "latkit.collector.cli", "collect", "--space", "nb201", "--n", "40", "--devices",
            "loc", "--registry", str(reg.path), "--out", str(tmp_path / "d"), "--cores", "0", "--min-time", "0.5",
            "--max-time", "0.5", "--rounds", "1", "--quiet"]
    env = dict(os.environ, LATKIT_CACHE=str(tmp_path / "cache"))
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    me = psutil.Process(proc.pid)
    deadline = time.time() + 120
    while time.time() < deadline and not any("multiprocessing" in " ".join(c.cmdline()) for c in me.children()):
        time.sleep(0.1)
    while time.time() < deadline and Store(tmp_path / "d").read(columns=["key"]).num_rows < 1:
        time.sleep(0.1)  # the device is timing too
    children = me.children(recursive=True)
    assert any("multiprocessing" in " ".join(c.cmdline()) for c in children), "no export worker was started"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    gone, alive = psutil.wait_procs(children, timeout=10)
    assert alive == [], [" ".join(p.cmdline())[:120] for p in alive]
