"""The SSH fleet for real: sshd on 127.0.0.2-4, paramiko, agents deployed by hash, faults injected for real."""
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import psutil
import pytest

from latkit.collector import Artifact, LatkitError, Registry, Settings, Store, add_device, collect, collect_models, export
from latkit.collector.api import make_jobs
from latkit.collector.loopback import _keygen, kill_sshd, start_sshd
from latkit.collector.reference import side_store
from conftest import ROOT

QUICK = Settings(warmup_min_count=2, warmup_min_s=0.01, repeats_min_count=10, repeats_min_s=0.05, repeats_max_s=0.2,
                 rounds=1)


def latkit(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "latkit.collector.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


@pytest.fixture(scope="module")
def models(tmp_path_factory, export_cache):
    """Eight distinct small ONNX models and their TFLite twins (a width per model)."""
    import torch
    out = tmp_path_factory.mktemp("models")
    arts = {"onnx": [], "tflite": []}
    for width in range(4, 12):
        m = torch.nn.Sequential(torch.nn.Conv2d(3, width, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                                torch.nn.Linear(width * 16 * 16, 10)).eval()
        for fmt in arts:
            a = export(m, (torch.randn(1, 3, 16, 16),), fmt, arch=f"w{width}", cache_dir=export_cache)
            dst = out / fmt / f"w{width}{a.path.suffix}"
            dst.parent.mkdir(exist_ok=True)
            dst.write_bytes(a.path.read_bytes())
            arts[fmt].append(Artifact.from_file(dst, arch=f"w{width}"))
    return arts


def agent_procs(device):
    """Agent processes serving `device` (identified by its workdir on the command line)."""
    found = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = p.info["cmdline"] or []
        if any("agent-" in c for c in cmd) and device.workdir in cmd:
            found.append(p)
    return found


def rows_per_key(out):
    return Counter(Store(out).read(columns=["key"])["key"].to_pylist())


# -- registry, host keys, keys ------------------------------------------------------------------------


def test_registered_fleet(registry, fleet):
    devs = {d.name: d for d in registry.devices()}
    assert set(devs) == {"local", "dev0", "dev1", "dev2"}
    assert devs["dev1"].probe["runtimes"] == {"tflite": "2.14.0"}
    assert "torch" not in devs["dev2"].probe["runtimes"] and devs["dev2"].probe["cpu_affinity"] == [0]
    assert len({devs[n].fingerprint for n in ("dev0", "dev1", "dev2")}) == 3
    assert registry.known_hosts.read_text().count("ssh-ed25519") == 3
    # the agent was deployed once, by content hash
    agents = list(Path(fleet[0].workdir).glob("agent-*.py"))
    assert len(agents) == 1
    r = latkit("device", "list", "--registry", registry.path)
    assert r.returncode == 0
    for name in ("dev0", "dev1", "dev2"):
        line = next(l for l in r.stdout.splitlines() if f" {name} " in l)
        assert " yes " in line
    assert "tflite 2.14.0" in r.stdout


def test_unknown_host_key_refused_then_trusted(fleet, tmp_path):
    reg = tmp_path / "devices.toml"
    d = fleet[0]
    args = ["device", "add", "x", "--host", d.host, "--port", d.port, "--user", d.user, "--key", d.key,
            "--python", d.python, "--workdir", d.workdir, "--registry", reg]
    r = latkit(*args)
    assert r.returncode == 2 and "is not known (ssh-ed25519 SHA256:" in r.stderr and "--trust-host-key" in r.stderr
    assert not reg.exists()
    r = latkit(*args, "--trust-host-key")
    assert r.returncode == 0, r.stderr
    assert "added x" in r.stdout and Registry(reg).get("x").fingerprint
    r = latkit("device", "remove", "x", "--registry", reg)
    assert r.returncode == 0 and [d.name for d in Registry(reg).devices()] == ["local"]


def test_changed_host_key_always_refused(fleet, tmp_path):
    d = fleet[0]
    reg = Registry(tmp_path / "devices.toml")
    _keygen(tmp_path / "other")
    other = (tmp_path / "other.pub").read_text().split()
    reg.known_hosts.write_text(f"[{d.host}]:{d.port} {other[0]} {other[1]}\n")
    for trust in (False, True):
        with pytest.raises(LatkitError, match=r"host key of .* changed .* refused.*remove its line"):
            add_device("x", d.host, d.port, d.user, d.key, d.python, d.workdir, trust_host_key=trust, registry=reg)
    assert reg.devices() == reg.devices()[:1]


def test_a_host_key_changed_after_registration_fails_that_device_only(registry, models, tmp_path):
    """README: a changed host key is always refused, also for a device registered long ago (reinstalled, or a
    machine in its place). `collect` marks that device failed with one line naming it and what to do, never
    records the new key, stores no row of it; the other device measures."""
    reg, out = tmp_path / "devices.toml", tmp_path / "d"
    shutil.copy(registry.path, reg)
    d = registry.get("dev0")
    _keygen(tmp_path / "other")
    other = " ".join((tmp_path / "other.pub").read_text().split()[:2])
    host = f"[{d.host}]:{d.port} "
    known = [host + other if line.startswith(host) else line
             for line in registry.known_hosts.read_text().splitlines()]
    assert known != registry.known_hosts.read_text().splitlines()
    (tmp_path / "known_hosts").write_text("\n".join(known) + "\n")
    r = latkit("collect", "--models", *[a.path for a in models["tflite"][:2]], "--devices", "dev0,dev1", "--registry",
               reg, "--out", out, "--json", "-q", "--no-reference", "--rounds", "1", "--min-time", "0.05",
               "--max-time", "0.2")
    assert r.returncode == 1 and r.stderr.splitlines()[-1].startswith("latkit: error: 1 device(s) failed (dev0)")
    by = {x["device"]: x for x in json.loads(r.stdout)["devices"]}
    assert by["dev0"]["status"] == "failed" and by["dev0"]["measured"] == 0, by["dev0"]
    assert f"host key of dev0 at {d.user}@{d.host}:{d.port} changed" in by["dev0"]["message"]
    assert "refused" in by["dev0"]["message"] and "--trust-host-key" in by["dev0"]["message"]
    assert by["dev1"]["status"] == "done" and by["dev1"]["measured"] == 2
    assert set(Store(out).read(["device"])["device"].to_pylist()) == {"dev1"}
    assert (tmp_path / "known_hosts").read_text().splitlines() == known  # the new key was not recorded


def test_device_probe_refreshes_the_stored_fingerprint(registry, tmp_path):
    """README: `device probe` refreshes the fingerprint the registry keeps (after a device's runtime was upgraded,
    `device list` shows the new one) and the time of the last probe; other entries stay as they were."""
    from latkit.collector.measurement import fingerprint
    shutil.copy(registry.known_hosts, tmp_path / "known_hosts")
    reg = Registry(tmp_path / "devices.toml")
    for d in registry.devices()[1:]:
        reg.save(d)
    reg.save(dataclasses.replace(registry.get("dev2"), fingerprint="0" * 16, last_probe="2020-01-01T00:00:00Z"))
    r = latkit("device", "probe", "dev2", "--registry", reg.path)
    assert r.returncode == 0, r.stderr
    fresh = reg.get("dev2")
    assert fresh.fingerprint == fingerprint(json.loads(r.stdout)) == registry.get("dev2").fingerprint
    assert fresh.last_probe > "2020-01-01T00:00:00Z"
    assert [reg.get(n) for n in ("dev0", "dev1")] == [registry.get(n) for n in ("dev0", "dev1")]


def test_the_users_own_known_hosts_is_checked_too(fleet, registry, tmp_path):
    """README: host keys are checked against ~/.ssh/known_hosts as well as latkit's: a device the user's ssh
    already knows is added without --trust-host-key (nothing recorded beside the registry); a different key
    there is refused, trusted or not, naming that file as the one to fix."""
    d = fleet[0]
    host = f"[{d.host}]:{d.port} "
    (tmp_path / "home" / ".ssh").mkdir(parents=True)
    users = tmp_path / "home" / ".ssh" / "known_hosts"
    users.write_text(next(x for x in registry.known_hosts.read_text().splitlines() if x.startswith(host)) + "\n")
    env = dict(os.environ, HOME=str(tmp_path / "home"))

    def add(reg, *more):
        return subprocess.run([sys.executable, "-m", "latkit.collector.cli", "device", "add", "x", "--host", d.host,
                               "--port", str(d.port), "--user", d.user, "--key", d.key, "--python", d.python,
                               "--workdir", d.workdir, "--registry", str(reg), *more], capture_output=True, text=True,
                              timeout=120, cwd=ROOT, env=env)
    r = add(tmp_path / "a" / "devices.toml")
    assert r.returncode == 0, r.stderr
    assert Registry(tmp_path / "a" / "devices.toml").get("x").fingerprint
    assert not (tmp_path / "a" / "known_hosts").exists()
    _keygen(tmp_path / "other")
    users.write_text(host + " ".join((tmp_path / "other.pub").read_text().split()[:2]) + "\n")
    for more in ((), ("--trust-host-key",)):
        r = add(tmp_path / "b" / "devices.toml", *more)
        line, = r.stderr.splitlines()
        assert r.returncode == 2 and f"host key of x at {d.user}@{d.host}:{d.port} changed" in line, line
        assert f"remove its line from {users} and add the device again" in line
    assert not (tmp_path / "b" / "devices.toml").exists()


def test_wrong_key(fleet, tmp_path, registry):
    d = fleet[0]
    _keygen(tmp_path / "stranger")
    r = latkit("device", "add", "x", "--host", d.host, "--port", d.port, "--user", d.user, "--key",
               tmp_path / "stranger", "--trust-host-key", "--registry", tmp_path / "r.toml")
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1
    assert "authentication to" in lines[0] and "failed with key" in lines[0] and "authorized_keys" in lines[0]


def test_unreachable_host(tmp_path):
    reg = Registry(tmp_path / "devices.toml")
    t0 = time.time()
    with pytest.raises(LatkitError, match=r"cannot reach x at 127\.0\.0\.9:1: connection refused; is sshd running"):
        add_device("x", "127.0.0.9", 1, registry=reg, trust_host_key=True)
    assert time.time() - t0 < 15


# -- collection -----------------------------------------------------------------------------------------


def test_collect_over_fleet_and_resume(registry, models, tmp_path):
    out = tmp_path / "data"
    report = collect_models([a.path for a in models["tflite"][:4]], ["dev0", "dev1", "dev2"], settings=QUICK,
                            out=out, registry=registry, progress=False)
    assert report.ok and report.measured == 12
    t = Store(out).read()
    assert t.num_rows == 12 and set(t["status"].to_pylist()) == {"ok"}
    fps = {d.name: d.fingerprint for d in registry.devices()}
    for row in t.select(["device", "device_fingerprint", "runtime_version"]).to_pylist():
        assert row["device_fingerprint"] == fps[row["device"]]
    assert {r["runtime_version"] for r in t.to_pylist() if r["device"] == "dev1"} == {"2.14.0"}
    # each model was shipped once per device, under its sha256: the data's and the reference's twins
    twins = {f"{sha}.tflite" for sha in side_store(Store(out)).read(["model_sha256"])["model_sha256"].to_pylist()}
    assert len(twins) == 2
    for d in ("dev0", "dev1", "dev2"):
        shipped = os.listdir(os.path.join(registry.get(d).workdir, "models"))
        assert sorted(shipped) == sorted({a.name for a in models["tflite"][:4]} | twins)
    again = collect_models([a.path for a in models["tflite"][:4]], ["dev0", "dev1", "dev2"], settings=QUICK,
                           out=out, registry=registry, progress=False)
    assert again.ok and again.measured == 0 and sum(d.skipped for d in again.devices) == 12
    assert Store(out).read().num_rows == 12


def test_runtime_missing_fails_that_device_only(registry, models, tmp_path):
    """dev1 has no onnxruntime: it is marked failed with the reason; the others finish."""
    report = collect_models([a.path for a in models["onnx"][:2]], ["dev0", "dev1"], settings=QUICK,
                            out=tmp_path / "d", registry=registry, progress=False)
    by = {d.device: d for d in report.devices}
    assert by["dev0"].status == "done" and by["dev0"].measured == 2
    assert by["dev1"].status == "failed" and "onnxruntime is not installed" in by["dev1"].message


def test_corrupt_model_stored_as_error_and_collection_goes_on(registry, models, tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not onnx" * 64)
    paths = [models["onnx"][0].path, bad, models["onnx"][1].path]
    out = tmp_path / "d"
    args = ["collect", "--models", *paths, "--devices", "dev0", "--registry", registry.path, "--out", out,
            "--min-time", "0.05", "--max-time", "0.2", "--rounds", "1", "--quiet"]
    r = latkit(*args)
    assert r.returncode == 1 and "1 model(s) failed" in r.stderr and "bad.onnx" in r.stdout, r.stderr
    t = Store(out).read().to_pylist()
    assert sorted(x["status"] for x in t) == ["error", "ok", "ok"]
    assert next(x for x in t if x["status"] == "error")["error_kind"] == "corrupt_model"
    r = latkit(*args)
    assert r.returncode == 0 and Store(out).read().num_rows == 3  # a permanent error row counts as done


def test_sshd_killed_mid_collection(registry, fleet, models, tmp_path):
    """~1 s per job, rows written in batches every 2 s: the first batch of dev0 lands well before its last job."""
    out = tmp_path / "d"
    jobs = make_jobs(models["tflite"], ["dev0", "dev2"], settings=dataclasses.replace(QUICK, repeats_min_s=1.0,
                                                                                      repeats_max_s=1.0,
                                                                                      repeats_max_count=10_000_000))
    devices = [registry.get("dev0"), registry.get("dev2")]
    victim = fleet[0]
    result = {}
    thread = threading.Thread(target=lambda: result.update(r=collect(jobs, devices, out=out, retries=2, backoff_s=0.2,
                                                                       progress=False)))
    thread.start()
    try:
        while sum(1 for k in Store(out).read(columns=["device"])["device"].to_pylist() if k == "dev0") < 1:
            time.sleep(0.05)
        kill_sshd(victim)
        thread.join(120)
        report = {d.device: d for d in result["r"].devices}
        assert report["dev0"].status == "failed" and "cannot reach dev0" in report["dev0"].message
        assert report["dev2"].status == "done" and report["dev2"].measured == 8
        assert 1 <= report["dev0"].measured < 8
    finally:
        start_sshd(victim)
    again = collect(jobs, devices, out=out, progress=False)
    assert again.ok
    counts = rows_per_key(out)
    assert len(counts) == 16 and set(counts.values()) == {1}


def test_agent_killed_mid_measure_is_retried(registry, fleet, models, tmp_path):
    out = tmp_path / "d"
    slow = dataclasses.replace(QUICK, repeats_min_s=1.5, repeats_max_s=1.5, repeats_max_count=10_000_000)
    jobs = make_jobs(models["tflite"][:2], ["dev0"], settings=slow)
    result = {}
    thread = threading.Thread(target=lambda: result.update(r=collect(jobs, [registry.get("dev0")], out=out,
                                                                       backoff_s=0.1, progress=False)))
    thread.start()
    deadline = time.time() + 60
    while not agent_procs(fleet[0]) and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.8)  # inside the first measurement
    for p in agent_procs(fleet[0]):
        p.send_signal(signal.SIGKILL)
    thread.join(120)
    assert result["r"].ok and result["r"].devices[0].measured == 2
    counts = rows_per_key(out)
    assert len(counts) == 2 and set(counts.values()) == {1}


def test_hung_model_is_a_timeout_row(registry, fleet, models, tmp_path):
    """A measurement past --job-timeout: the agent is killed on the device (not left timing), the job stored as a
    timeout row, a fresh agent started, and the device goes on with the other jobs."""
    # 30 s of timing (no sample cap ends it first: the agent never sends more samples than the cap)
    hung = dataclasses.replace(QUICK, repeats_min_s=30.0, repeats_max_s=30.0, repeats_max_count=10_000_000)
    jobs = make_jobs(models["tflite"][:1], ["dev0"], settings=hung) + make_jobs(models["tflite"][1:3], ["dev0"],
                                                                                 settings=QUICK)
    t0 = time.time()
    report = collect(jobs, [registry.get("dev0")], out=tmp_path / "d", retries=1, backoff_s=0.1, job_timeout=2.0,
                     progress=False)
    assert time.time() - t0 < 25
    d = report.devices[0]
    assert d.status == "done" and d.errors == 1 and d.measured == 2
    rows = {r["arch"]: r for r in Store(tmp_path / "d").read().to_pylist()}
    assert rows["w4"]["status"] == "error" and rows["w4"]["error_kind"] == "timeout"
    assert "--job-timeout" in rows["w4"]["error"]
    time.sleep(0.5)
    assert agent_procs(fleet[0]) == []


def test_orchestrator_sigkill_then_rerun(registry, models, tmp_path):
    out = tmp_path / "d"
    args = ["collect", "--models", *[a.path for a in models["tflite"]], "--devices", "dev0,dev1", "--registry",
            registry.path, "--out", out, "--min-time", "0.8", "--max-time", "1.0", "--max-repeats", "10000000",
            "--rounds", "1", "--quiet"]
    # one round a job, so rows come one by one (with several rounds every job ends in the last one, and a loaded
    # host's CI once saw all 16 rows in the first files it read); the sample cap raised, or these tiny models stop
    # at 10,000 runs (~0.2 s) and a whole device's rows land in one batch (CI saw 0 rows, then 16): ~7 s of timing
    # per device, rows written 2 s after the first, so the kill lands with ~4 s of the run left
    proc = subprocess.Popen([sys.executable, "-m", "latkit.collector.cli", *map(str, args)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0, seen = time.time(), [(0.0, 0)]  # (seconds, rows) at each change: what a failure needs to be understood
    while seen[-1][1] < 3 and time.time() < t0 + 120:
        time.sleep(0.05)
        n = Store(out).read(columns=["key"]).num_rows
        if n != seen[-1][1]:
            seen.append((round(time.time() - t0, 2), n))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = Store(out).read(columns=["key"]).num_rows
    assert 3 <= partial < 16, (partial, seen, proc.returncode)
    r = latkit(*args)
    assert r.returncode == 0, r.stderr
    counts = rows_per_key(out)
    assert len(counts) == 16 and set(counts.values()) == {1}


def test_unwritable_out_before_device_time(registry, models, tmp_path):
    (tmp_path / "file").write_text("x")
    fresh = models["onnx"][7]
    shipped = os.path.join(registry.get("dev0").workdir, "models", fresh.name)
    r = latkit("collect", "--models", fresh.path, "--devices", "dev0", "--registry", registry.path,
               "--out", tmp_path / "file" / "d", "--quiet")
    assert r.returncode == 2 and "cannot write to" in r.stderr and "choose another --out" in r.stderr
    assert not os.path.exists(shipped)  # nothing was shipped, nothing timed


def test_full_disk_before_device_time(registry, models, tmp_path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        r = latkit("collect", "--models", models["onnx"][6].path, "--devices", "dev0", "--registry", registry.path,
                   "--out", mnt / "d", "--quiet")
        assert r.returncode == 2 and "MiB free at" in r.stderr
        assert not os.path.exists(os.path.join(registry.get("dev0").workdir, "models", models["onnx"][6].name))
    finally:
        subprocess.run(["umount", str(mnt)])


def test_bounded_device_model_cache(registry, models, tmp_path):
    """--cache-max-gb: after each stored row the device's model folder is cut to the bound, least recently
    used first, never a model still pending; every model is still measured."""
    files = [a.path for a in models["onnx"]]
    bound = 2.5 * max(f.stat().st_size for f in files)
    report = collect_models(files, ["dev0"], settings=QUICK, out=tmp_path / "data", registry=registry,
                            progress=False, cache_max_gb=bound / 2 ** 30, reference=False)  # the data's files only
    assert report.ok and report.measured == len(files)
    folder = Path(registry.get("dev0").workdir) / "models"
    left = [f for f in folder.iterdir() if f.is_file()]
    assert sum(f.stat().st_size for f in left) <= bound < sum(f.stat().st_size for f in files)
    rows = sorted(Store(tmp_path / "data").read(columns=["model_sha256", "measured_at"]).to_pylist(),
                  key=lambda r: r["measured_at"])
    kept = {f.name.split(".")[0] for f in left}
    assert rows[-1]["model_sha256"] in kept and rows[0]["model_sha256"] not in kept  # least recently used went


def test_a_bounded_cache_keeps_the_reference_twins_between_checks(registry, models, tmp_path):
    """With --cache-max-gb the data's files come and go, but the reference pair is shipped once per run: a
    check every job, a bound of ~2 data files, and the twins' files on the device are still the first copies."""
    from latkit.collector.device_loop import DeviceRequest, run_device
    from latkit.collector.reports import DeviceReport
    dev = registry.get("dev0")
    folder = Path(dev.workdir) / "models"
    for f in folder.iterdir():  # a fresh device cache: every file of this run is shipped by this run
        f.unlink()
    arts = models["onnx"][:5]
    bound = 2.2 * max(a.path.stat().st_size for a in arts)
    jobs = make_jobs(arts, ["dev0"], settings=QUICK)
    report = DeviceReport("dev0", total=len(jobs))
    run_device(dev, jobs, Store(tmp_path / "d"), report, DeviceRequest(reference=True, reference_every_jobs=1,
                                                                       reference_every_s=3600,
                                                                       cache_max_gb=bound / 2 ** 30))
    assert report.measured == 5 and len(report.checks) == 6, report.message
    first: dict = {}  # twin -> the start of its first timing
    for r in side_store(Store(tmp_path / "d")).read().to_pylist():
        first[r["model_sha256"]] = min(first.get(r["model_sha256"], r["started_at"]), r["started_at"])
    twins = set(first)
    left = {f.name.split(".")[0]: f.stat().st_mtime for f in folder.iterdir() if f.is_file()}
    assert len(twins) == 2 and twins <= set(left), "the twins were evicted"
    assert all(left[t] <= first[t].timestamp() for t in twins), "a twin was shipped again after its first timing"
    data = [s for s in left if s not in twins]
    assert len(data) < 5  # the bound did evict data files


def test_next_model_ships_while_this_one_is_timed(registry, fleet, models):
    """dev0 (both CPUs) gets the next model during the current measurement; dev2 (sshd and agent pinned to
    CPU 0, timing on its only CPU) does not: an upload there would share the CPU with the timed runs."""
    from latkit.collector import Job
    from latkit.collector.runner import DeviceRunner
    a, b, c = models["onnx"][5:8]
    for name, ships in (("dev0", True), ("dev2", False)):
        dev = registry.get(name)
        for art in (a, b, c):
            Path(dev.workdir, "models", art.name).unlink(missing_ok=True)
        with DeviceRunner(dev) as r:
            job = Job(a, name, QUICK)
            assert r.measure(job, next_job=Job(b, name, QUICK)).status == "ok"
            nxt = Path(dev.workdir, "models", b.name)
            deadline = time.time() + 30
            while ships and not nxt.exists() and time.time() < deadline:
                time.sleep(0.05)
            assert nxt.exists() == ships, name
            assert r.measure(Job(b, name, QUICK)).status == "ok"
            again = r.measure(Job(b, name, QUICK))
            assert again.round_session_reused == (True,)  # one agent, which kept the session
    assert not any(Path(registry.get(n).workdir, "models", c.name).exists() for n in ("dev0", "dev2"))


def test_the_fleet_script_registers_devices_that_time_at_once(models, tmp_path):
    """README: `scripts/fleet up --register` starts real sshd devices and registers them, each with a lease of its
    own (they share this machine), so `collect` times them at once; `scripts/fleet down` stops them."""
    from latkit.collector.loopback import new_fleet_dir
    state, reg, out = new_fleet_dir(), tmp_path / "devices.toml", tmp_path / "d"
    fleet = [sys.executable, str(ROOT / "scripts" / "fleet.py")]
    try:
        r = subprocess.run([*fleet, "up", "--register", "--n", "2", "--dir", str(state), "--registry", str(reg)],
                           capture_output=True, text=True, timeout=300, cwd=ROOT)
        assert r.returncode == 0, r.stderr
        assert "registered dev0 at" in r.stdout and "registered dev1 at" in r.stdout
        devices = {d.name: d for d in Registry(reg).devices() if d.name != "local"}
        assert sorted(devices) == ["dev0", "dev1"] and len({d.lease for d in devices.values()} - {None}) == 2
        assert list(devices["dev1"].tags) == ["loopback", "pinned"]
        r = latkit("collect", "--models", *[a.path for a in models["onnx"][:4]], "--devices", "dev0,dev1",
                   "--registry", reg, "--out", out, "--min-time", "0.3", "--max-time", "0.3",
                   "--max-repeats", "10000000", "--rounds", "1", "--no-reference", "--quiet")
        assert r.returncode == 0, r.stderr
        spans = {}
        for x in Store(out).read(columns=["device", "round_started_at", "measured_at"]).to_pylist():
            start, end = spans.get(x["device"], (x["round_started_at"][0], x["measured_at"]))
            spans[x["device"]] = (min(start, x["round_started_at"][0]), max(end, x["measured_at"]))
        (a0, a1), (b0, b1) = spans["dev0"], spans["dev1"]
        assert max(a0, b0) < min(a1, b1), spans  # the two devices timed at the same time, not one after the other
    finally:
        r = subprocess.run([*fleet, "down", "--dir", str(state)], capture_output=True, text=True, timeout=60, cwd=ROOT)
        shutil.rmtree(state, ignore_errors=True)
    assert r.returncode == 0 and "fleet stopped" in r.stdout, r.stderr


def test_an_onnx_file_with_its_weights_beside_it_is_timed_over_ssh(registry, tmp_path):
    """torch.onnx.export's default writes `model.onnx` and its weights `model.onnx.data`; a device gets one file, so
    the host packs them into one: timed over SSH, its key covers the weights, a copy without its weights file or
    one whose weights lead out of its folder is refused on the host in one line, and no row is stored for it."""
    import onnx
    import torch
    onnx_dir = tmp_path / "m"
    onnx_dir.mkdir()
    for seed in (0, 1):  # the same network, other weights
        torch.manual_seed(seed)
        (onnx_dir / f"s{seed}").mkdir()
        torch.onnx.export(torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU()).eval(),
                          (torch.randn(1, 3, 16, 16),), str(onnx_dir / f"s{seed}" / "model.onnx"))
    assert (onnx_dir / "s0" / "model.onnx.data").is_file()  # else this torch no longer writes external data
    out = tmp_path / "d"
    measure = ["measure", "--device", "dev0", "--registry", registry.path, "--out", out, "--min-time", "0.05",
               "--max-time", "0.1", "--repeats", "5"]
    runs = [latkit(*measure[:1], onnx_dir / s / "model.onnx", *measure[1:]) for s in ("s0", "s0", "s1")]
    assert [r.returncode for r in runs] == [0, 0, 0], [r.stderr for r in runs]
    assert "not timed again" in runs[1].stdout and "not timed again" not in runs[2].stdout  # other weights
    rows = Store(out).read(columns=["key", "model_sha256", "status", "arch"]).to_pylist()
    assert len(rows) == 2 and {x["status"] for x in rows} == {"ok"} and {x["arch"] for x in rows} == {"model.onnx"}

    lonely = tmp_path / "lonely.onnx"
    lonely.write_bytes((onnx_dir / "s0" / "model.onnx").read_bytes())
    escape = tmp_path / "escape" / "model.onnx"
    escape.parent.mkdir()
    m = onnx.load(str(onnx_dir / "s0" / "model.onnx"), load_external_data=False)
    for t in m.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = "../m/s0/model.onnx.data"  # a file that exists, out of the model's folder
    onnx.save(m, str(escape))
    for bad, said in ((lonely, "which is not beside it"), (escape, "outside its folder")):
        r = latkit(*measure[:1], bad, *measure[1:])
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and said in r.stderr, r.stderr
    assert Store(out).read(columns=["key"]).num_rows == 2
