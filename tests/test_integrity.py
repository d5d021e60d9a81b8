"""Numbers you can trust: one measuring agent per device, nothing outlives the host, Ctrl-C stops, a hung
model is a row, banners are ignored, settings are read back, throttling is flagged, rounds interleave, and a
retest says how well a dataset repeats. Real processes throughout: agents, sshd, signals."""
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import psutil
import pyarrow.compute as pc
import pytest

from latkit.collector import Artifact, Job, Registry, Settings, Store
from latkit.collector.measurement import ERROR_KINDS
from latkit.collector.reference import side_store
from latkit.collector.runner import DeviceRunner
from conftest import AGENT, ROOT, small_onnx_models

QUICK = ["--min-time", "0.05", "--max-time", "0.1", "--repeats", "5", "--quiet"]


def latkit(*args, timeout=300, env=None):
    return subprocess.run([sys.executable, "-m", "latkit.collector.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env=env)


def spawn(*args):
    return subprocess.Popen([sys.executable, "-m", "latkit.collector.cli", *map(str, args)], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@pytest.fixture(scope="module")
def models(tmp_path_factory, export_cache):
    """Six small distinct ONNX models in a folder."""
    return small_onnx_models(tmp_path_factory.mktemp("models"), range(4, 10), export_cache)


@pytest.fixture
def reg(tmp_path):
    """A registry with two local-transport devices, each with its own lease and workdir (the machine-wide
    default lease is shared with whatever else runs here)."""
    path = tmp_path / "devices.toml"
    lines = []
    for name in ("loc", "loc2"):
        lines += [f"[devices.{name}]", 'transport = "local"', f'workdir = "{tmp_path / name}"',
                  f'lease = "{tmp_path / "lease"}"' if name == "loc" else f'lease = "{tmp_path / "lease2"}"', ""]
    path.write_text("\n".join(lines))
    return Registry(path)


def agents_of(marker: str) -> list:
    """Live agent processes whose command line mentions `marker` (a workdir or lease path)."""
    found = []
    for p in psutil.process_iter(["cmdline", "status"]):
        cmd = p.info["cmdline"] or []
        if any(c.endswith(".py") and "agent" in c for c in cmd) and any(marker in c for c in cmd) \
                and p.info["status"] != psutil.STATUS_ZOMBIE:
            found.append(p)
    return found


def intervals(out) -> dict:
    """device -> every (start, end) of a timed round stored in the dataset."""
    by = {}
    for r in Store(out).read(columns=["device", "round_started_at", "round_finished_at"]).to_pylist():
        by.setdefault(r["device"], []).extend(zip(r["round_started_at"] or [], r["round_finished_at"] or []))
    return by


def assert_no_overlap(out):
    for dev, spans in intervals(out).items():
        spans.sort()
        for (s1, e1), (s2, e2) in zip(spans, spans[1:]):
            assert e1 <= s2, f"{dev}: rounds overlap ({s1}..{e1} and {s2}..{e2})"


# -- the device lease ------------------------------------------------------------------------------------


def test_two_collections_on_one_device_take_turns(reg, models, tmp_path):
    """Two orchestrators, same device, same dataset: the second waits for the lease and says who holds it;
    no two timed rounds overlap and no key is stored twice. The first's agent is paused (SIGSTOP) while it
    holds the lease until the second says it waits: otherwise a fast first run can finish before the second
    has even started, and the second then has nothing left to wait for."""
    import threading
    out = tmp_path / "d"
    args = ["collect", "--models", models, "--devices", "loc", "--registry", reg.path, "--out", out,
            "--rounds", "2", "--min-time", "0.2", "--max-time", "0.2", "--quiet"]
    first = spawn(*args)
    lease, deadline = tmp_path / "lease", time.time() + 120
    while time.time() < deadline:
        held = lease.read_text() if lease.exists() else ""
        if str(first.pid) in held and "agent_pid" in held:
            break
        time.sleep(0.02)
    agent = psutil.Process(json.loads(held)["agent_pid"])
    agent.suspend()
    try:
        second = subprocess.Popen([sys.executable, "-m", "latkit.collector.cli", *map(str, args)], cwd=ROOT, text=True,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        lines = []
        reader = threading.Thread(target=lambda: lines.extend(second.stderr), daemon=True)
        reader.start()
        deadline = time.time() + 120
        while not any("waiting for device loc" in x for x in lines) and second.poll() is None \
                and time.time() < deadline:
            time.sleep(0.05)
    finally:
        agent.resume()
    out1, err1 = first.communicate(timeout=300)
    second.wait(timeout=300)
    reader.join(timeout=10)
    err2 = "".join(lines)
    assert first.returncode == 0 and second.returncode == 0, err1 + err2
    assert "waiting for device loc: held by pid " + str(first.pid) in err2 and " since " in err2
    counts = Counter(Store(out).read(columns=["key"])["key"].to_pylist())
    assert len(counts) == 6 and set(counts.values()) == {1}
    assert_no_overlap(out)


def test_no_wait_fails_at_once_naming_the_holder(reg, models, tmp_path):
    holder = DeviceRunner(reg.get("loc"))
    holder.start()
    holder.lease()
    try:
        t0 = time.time()
        r = latkit("measure", models / "w4.onnx", "--device", "loc", "--registry", reg.path, "--out", tmp_path / "d",
                   "--no-wait")
        assert time.time() - t0 < 30
        assert r.returncode == 1 and f"device loc is busy: held by pid {os.getpid()}" in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1
    finally:
        holder.close()
    r = latkit("measure", models / "w4.onnx", "--device", "loc", "--registry", reg.path, "--out", tmp_path / "d",
               "--no-wait", *QUICK[:-1])
    assert r.returncode == 0, r.stderr  # released on close


def test_lease_spans_ssh_and_local_on_one_machine(registry, models, tmp_path):
    """A loopback sshd device and a local device given the same lease file are one physical device: their
    collections take turns."""
    lease = registry.get("dev0").lease
    reg2 = Registry(tmp_path / "r.toml")
    reg2.path.write_text(f'[devices.same]\ntransport = "local"\nworkdir = "{tmp_path / "w"}"\nlease = "{lease}"\n')
    out = tmp_path / "d"
    a = spawn("collect", "--models", models, "--devices", "dev0", "--registry", registry.path, "--out", out,
              "--rounds", "1", *QUICK)
    time.sleep(1.0)
    b = spawn("collect", "--models", models, "--devices", "same", "--registry", reg2.path, "--out", out,
              "--rounds", "1", *QUICK)
    for p in (a, b):
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    spans = sorted(s for v in intervals(out).values() for s in v)
    assert len(spans) == 12
    for (s1, e1), (s2, e2) in zip(spans, spans[1:]):
        assert e1 <= s2


# -- nothing outlives the orchestrator -----------------------------------------------------------------


@pytest.mark.parametrize("where", ["local", "ssh"])
def test_sigkilled_orchestrator_leaves_no_agent(where, reg, registry, fleet, models, tmp_path):
    if where == "local":
        device, registry_path, marker = "loc", reg.path, str(tmp_path / "loc")
    else:
        device, registry_path, marker = "dev0", registry.path, fleet[0].workdir
    proc = spawn("collect", "--models", models, "--devices", device, "--registry", registry_path,
                 "--out", tmp_path / "d", "--min-time", "20", "--max-time", "20", "--max-repeats", "10000000", "--rounds",
                 "1", "--quiet")
    deadline = time.time() + 60
    while not agents_of(marker) and time.time() < deadline:
        time.sleep(0.05)
    assert agents_of(marker), proc.stderr.read() if proc.poll() is not None else "no agent started"
    time.sleep(1.5)  # well inside a 20 s measurement
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 10
    while agents_of(marker) and time.time() < deadline:
        time.sleep(0.1)
    assert agents_of(marker) == []


def test_agent_exits_when_stdin_closes_mid_measurement(tmp_path, models):
    proc = subprocess.Popen([sys.executable, str(AGENT), "--workdir", str(tmp_path / "wd"), "--lease",
                             str(tmp_path / "lease")], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    settings = dict(Settings(rounds=1).agent_settings(), repeats_min_s=60.0, repeats_max_s=60.0,
                    repeats_max_count=10_000_000)  # 60 s of timing: the sample cap must not end it first
    proc.stdin.write(json.dumps({"id": 1, "op": "lease"}) + "\n")
    proc.stdin.write(json.dumps({"id": 2, "op": "measure", "model": str(models / "w4.onnx"),
                                 "runtime": "onnxruntime", "settings": settings}) + "\n")
    proc.stdin.flush()
    assert json.loads(proc.stdout.readline()[len("@@latkit "):])["result"]["acquired"]
    time.sleep(1.0)
    t0 = time.time()
    proc.stdin.close()
    proc.wait(timeout=10)
    assert time.time() - t0 < 5


# -- Ctrl-C and SIGTERM ---------------------------------------------------------------------------------


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_stops_collection_then_resume(sig, code, reg, models, tmp_path):
    out = tmp_path / "d"
    # ~1 s per model, 6 per device, rows written in batches every 2 s: the first rows land well before the end
    args = ["collect", "--models", models, "--devices", "loc,loc2", "--registry", reg.path, "--out", out,
            "--min-time", "1.0", "--max-time", "1.0", "--max-repeats", "10000000", "--rounds", "1", "--quiet"]
    proc = spawn(*args)
    deadline = time.time() + 120
    while Store(out).read(columns=["key"]).num_rows < 1 and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the collection ended before it could be interrupted"
    t0 = time.time()
    proc.send_signal(sig)
    try:
        _, err = proc.communicate(timeout=5)
        lines = err.strip().splitlines()
    except subprocess.TimeoutExpired:  # slower than it should be: latkit's threads' stacks say what held it up
        proc.send_signal(signal.SIGUSR1)
        _, err = proc.communicate(timeout=30)
        warnings.warn(f"the stop took {time.time() - t0:.1f} s; stacks at 5 s: {err}")
        lines = [x for x in err.strip().splitlines() if x.startswith("latkit")]  # less the stacks
    assert time.time() - t0 < 15 and proc.returncode == code
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"latkit: interrupted by {sig.name}: ") and " left on 2 device(s)" in lines[0]
    assert "run the same command again to resume" in lines[0]
    time.sleep(0.5)
    assert agents_of(str(tmp_path / "loc")) == [] and agents_of(str(tmp_path / "loc2")) == []
    r = latkit(*args)
    assert r.returncode == 0, r.stderr
    counts = Counter(Store(out).read(columns=["key"])["key"].to_pylist())
    assert len(counts) == 12 and set(counts.values()) == {1}


def test_sigusr1_prints_every_threads_stack_and_goes_on(reg, models, tmp_path):
    """README: `kill -USR1 <pid>` makes a latkit that seems stuck print every thread's stack on stderr and go on."""
    proc = spawn("collect", "--models", models / "w4.onnx", "--devices", "loc", "--registry", reg.path, "--out",
                 tmp_path / "d", "--min-time", "30", "--max-time", "30", "--max-repeats", "10000000", "--no-reference",
                 "--rounds", "1", "--quiet")
    time.sleep(3)
    proc.send_signal(signal.SIGUSR1)
    time.sleep(1)
    assert proc.poll() is None
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130 and "most recent call first" in err and "Thread 0x" in err, err
    assert err.strip().splitlines()[-1].startswith("latkit: interrupted by SIGINT")


def test_a_sigkill_between_rounds_keeps_the_rounds_timed(reg, models, tmp_path):
    """README: a round a device timed is saved (`_rounds/`) until its model's row is stored. SIGKILL the
    orchestrator in round 2 of 3 and run the same command (its agent killed once on the way): it takes back every
    saved round of a model not yet stored, once, times only the missing ones, each row holds its 3 rounds (the
    saved ones with their original times), and the saved rounds go once every model is a row."""
    from latkit.collector.rounds import rounds_store
    out = tmp_path / "d"
    args = ["collect", "--models", models, "--devices", "loc", "--registry", reg.path, "--out", out, "--json",
            "--rounds", "3", "--min-time", "0.3", "--max-time", "0.3", "--max-repeats", "10000000", "--no-reference"]
    proc = spawn(*args)
    side = rounds_store(Store(out))
    deadline = time.time() + 120
    while side.read(columns=["key"]).num_rows < 8 and time.time() < deadline:  # round 1 (6 models) and some of 2
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    deadline = time.time() + 10
    while agents_of(str(tmp_path / "loc")) and time.time() < deadline:  # its agent dies with it
        time.sleep(0.05)
    stored = set(Store(out).read(columns=["key"])["key"].to_pylist())
    saved = [x for x in side.read().to_pylist() if x["key"] not in stored]
    assert len(saved) >= 6 and len(stored) < 6, (len(saved), len(stored))
    proc = spawn(*args)  # and its agent dies once on the way: the fresh one takes nothing back twice
    for said in proc.stderr:  # said once the lease is taken, before the first round is timed
        if "timed by an earlier run taken back" in said:
            break
    assert f"loc: {len(saved)} round(s) of" in said and "timed by an earlier run taken back" in said, said
    time.sleep(0.5)
    for p in agents_of(str(tmp_path / "loc")):
        p.kill()
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    report = json.loads(stdout)["devices"][0]
    assert report["rounds_taken"] == len(saved) and report["agent_starts"] == 2, (report, stderr)
    rows = {x["key"]: x for x in Store(out).read().to_pylist()}
    assert len(rows) == 6 and {x["rounds"] for x in rows.values()} == {3}
    for x in saved:  # a saved round is in its model's row: its samples and when it ran
        row = rows[x["key"]]
        assert x["round_started_at"][0] in row["round_started_at"] and x["round_ms"][0] in row["round_ms"]
        assert set(x["samples_ms"]) <= set(row["samples_ms"])
    assert not Path(side.root).exists()  # every saved round's model is a row: the scratch folder is gone


def test_saved_rounds_are_taken_back_only_for_the_same_hardware_and_runtime(reg, models, tmp_path):
    """A saved round counts only for its job's key on an agent of the same fingerprint (the same hardware and
    runtime), never with `measure --force`, and only if it is one round of finite, positive samples (a dataset
    may come from elsewhere: a lying row is timed again, not mixed in)."""
    from latkit.collector.rounds import rounds_store
    opts = ["--registry", reg.path, "--rounds", "2", *QUICK]
    r = latkit("collect", "--models", models / "w4.onnx", "--devices", "loc", "--no-reference", "--out",
               tmp_path / "first", *opts)
    assert r.returncode == 0, r.stderr
    row = Store(tmp_path / "first").read().to_pylist()[0]
    one = dict(row, rounds=1, **{k: row[k][:1] for k in ("round_ms", "round_started_at", "round_finished_at",
                                                         "round_session_reused")})
    fp = row["device_fingerprint"]
    for name, saved, taken in (("same", one, 1), ("other", dict(one, device_fingerprint="0" * 16), 0),
                               ("forced", one, 0), ("two-rounds", row, 0),
                               ("nan", dict(one, samples_ms=[float("nan")] * 3), 0),
                               ("empty", dict(one, samples_ms=[]), 0), ("negative", dict(one, round_ms=[-1.0]), 0),
                               ("shape", dict(one, input_shape="1xax3"), 0), ("after-an-error", one, 0)):
        out = tmp_path / name
        rounds_store(Store(out)).append([saved])
        if name == "after-an-error":  # a later round failed (a timeout): the model is timed afresh
            Store(out).append([dict(one, status="error", error_kind="timeout", error="no result within 3 s",
                                    measured_at=datetime.now(timezone.utc))])
        if name == "forced":
            r = latkit("measure", models / "w4.onnx", "--device", "loc", "--force", "--out", out, *opts)
        else:
            r = latkit("collect", "--models", models / "w4.onnx", "--devices", "loc", "--no-reference", "--json",
                       "--out", out, *opts)
            assert r.returncode == 0, (name, r.stderr)
            assert json.loads(r.stdout)["devices"][0]["rounds_taken"] == taken, name
        assert r.returncode == 0, r.stderr
        new, = Store(out).read(filter=pc.field("status") == "ok").to_pylist()
        assert new["rounds"] == 2 and new["device_fingerprint"] == fp, name
        assert (one["round_started_at"][0] in new["round_started_at"]) == bool(taken), name
        assert all(x > 0 for x in new["samples_ms"]), name


# -- a hung model is a row ----------------------------------------------------------------------------------


def test_slow_model_is_a_timeout_row_and_the_rest_is_measured(reg, models, tmp_path):
    """A model taking seconds per inference with a 3 s --job-timeout: timeout row, agent restarted, the other
    models measured, the device not failed; the run lists the model that failed and exits 1."""
    import torch
    slow = tmp_path / "slow"
    slow.mkdir()
    big = torch.nn.Sequential(*[torch.nn.Conv2d(64, 64, 3, padding=1) for _ in range(24)]).eval()  # ~2 s a run
    torch.onnx.export(big, (torch.randn(1, 64, 512, 512),), str(slow / "big.onnx"), dynamo=False)
    for name in ("w4.onnx", "w5.onnx"):
        (slow / name).write_bytes((models / name).read_bytes())
    out = tmp_path / "d"
    r = latkit("collect", "--models", slow, "--devices", "loc", "--registry", reg.path, "--out", out,
               "--job-timeout", "3", "--rounds", "1", *QUICK)
    assert r.returncode == 1 and r.stderr.strip().splitlines()[-1].startswith("latkit: error: 1 model(s) failed")
    assert "big.onnx" in r.stdout and "timeout: no result within 3 s" in r.stdout
    rows = {x["arch"]: x for x in Store(out).read().to_pylist()}
    assert rows["big.onnx"]["status"] == "error" and rows["big.onnx"]["error_kind"] == "timeout"
    assert rows["w4.onnx"]["status"] == "ok" and rows["w5.onnx"]["status"] == "ok"
    assert agents_of(str(tmp_path / "loc")) == []
    # a timeout is not permanent (README): the same command measures that model again, and only that one
    r = latkit("collect", "--models", slow, "--devices", "loc", "--registry", reg.path, "--out", out,
               "--job-timeout", "3", "--rounds", "1", "--no-reference", "--json", *QUICK)
    assert r.returncode == 1, r.stderr
    (dev,) = json.loads(r.stdout)["devices"]
    assert (dev["skipped"], dev["errors"]) == (2, 1)
    assert sorted((x["arch"], x["error_kind"]) for x in Store(out).read().to_pylist()) == [
        ("big.onnx", "timeout"), ("big.onnx", "timeout"), ("w4.onnx", ""), ("w5.onnx", "")]


# -- banners and wrappers ----------------------------------------------------------------------------------


def banner_python(tmp_path) -> str:
    """A device Python behind a wrapper that talks on stdout first, as login scripts and wrappers do."""
    wrapper = tmp_path / "python-with-banner"
    wrapper.write_text(f"#!/bin/sh\necho 'Welcome to board-7 (last login: yesterday)'\nprintf 'no newline yet'\n"
                       f"echo '{{\"id\": 1, \"ok\": true}}'\nexec {sys.executable} \"$@\"\n")
    wrapper.chmod(0o755)
    return str(wrapper)


def test_banner_printing_device_works(fleet, registry, models, tmp_path):
    from latkit.collector import add_device, measure
    py = banner_python(tmp_path)
    reg = Registry(tmp_path / "r.toml")
    reg.path.write_text(f'[devices.chatty]\ntransport = "local"\npython = "{py}"\nworkdir = "{tmp_path / "w"}"\n'
                        f'lease = "{tmp_path / "lease"}"\n')
    fast = Settings(repeats_min_s=0.05, repeats_max_s=0.1, rounds=1)
    m = measure(models / "w4.onnx", device="chatty", settings=fast, out=tmp_path / "d", registry=reg)
    assert m.status == "ok" and m.latency_ms > 0
    d = fleet[0]  # the same wrapper as an SSH device's python
    add_device("chatty-ssh", d.host, d.port, d.user, d.key, py, str(tmp_path / "sw"), trust_host_key=True,
               registry=reg, lease=str(tmp_path / "lease-ssh"))
    m = measure(models / "w5.onnx", device="chatty-ssh", settings=fast, out=tmp_path / "d", registry=reg)
    assert m.status == "ok" and m.latency_ms > 0


@pytest.fixture(scope="module")
def banner_device():
    """A loopback sshd device whose login (ForceCommand) prints a banner on stdout on every session."""
    from latkit.collector.loopback import new_fleet_dir, start_fleet, stop_fleet
    base = new_fleet_dir()
    yield start_fleet(base, [sys.executable], prefix="chatty", banners=[True])[0]
    stop_fleet(base, remove=True)


def test_login_banner_device_add_and_collect(banner_device, models, tmp_path):
    """The banner breaks SFTP for real (paramiko reads it as a packet); device add and collect still work, files
    ship over exec channels with one warning line, and the rows are right."""
    import paramiko
    d = banner_device
    ssh = paramiko.SSHClient()
    ssh.set_missing_host_key_policy(paramiko.AutoAddPolicy())
    ssh.connect(d.host, port=d.port, username=d.user, key_filename=d.key, allow_agent=False, look_for_keys=False)
    try:
        _, out, _ = ssh.exec_command("echo hi")
        assert out.read().decode().startswith("Welcome to chatty0")
        with pytest.raises(Exception):
            ssh.open_sftp()
    finally:
        ssh.close()
    reg = tmp_path / "r.toml"
    add = latkit(*d.add_command(str(reg))[1:])
    assert add.returncode == 0, add.stderr
    assert add.stderr.count("SFTP does not work on chatty0") == 1 and "exec channels" in add.stderr
    out = tmp_path / "d"
    r = latkit("collect", "--models", models, "--devices", "chatty0", "--registry", reg, "--out", out, *QUICK,
               "--rounds", "2")
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("SFTP does not work") == 1
    rows = Store(out).read().to_pylist()
    assert len(rows) == 6 and {x["status"] for x in rows} == {"ok"} and {x["device"] for x in rows} == {"chatty0"}
    assert all(x["rounds"] == 2 and x["latency_ms"] > 0 for x in rows)
    shipped = sorted(os.listdir(Path(d.workdir) / "models"))  # by sha256, checked on the device, no leftovers
    timed = rows + side_store(Store(out)).read(["model_sha256"]).to_pylist()  # the data and the reference's twins
    assert shipped == sorted({x["model_sha256"] + ".onnx" for x in timed}) and len(shipped) == len(rows) + 2


# -- settings read back -----------------------------------------------------------------------------------


def test_applied_settings_are_read_back_and_pinning_does_not_stick(reg, models):
    base = sorted(os.sched_getaffinity(0))
    fast = Settings(repeats_min_s=0.05, repeats_max_s=0.1, rounds=1)
    art = Artifact.from_file(models / "w4.onnx")
    with DeviceRunner(reg.get("loc")) as r:
        pinned = r.measure(Job(art, "loc", Settings(repeats_min_s=0.05, repeats_max_s=0.1, rounds=1, cores=(0,),
                                                    threads=2)))
        free = r.measure(Job(art, "loc", fast))
    assert pinned.to_row()["cores_applied"] == "0" and pinned.to_row()["threads_applied"] == 2
    assert free.to_row()["cores_applied"] == ",".join(map(str, base))  # back to the agent's own affinity
    assert free.to_row()["threads_applied"] == 1 and free.to_row()["cores"] == ""


def test_a_row_whose_settings_were_not_applied_is_refused():
    from latkit.collector.runner import not_applied
    job = Job(Artifact(Path("m.onnx"), "0" * 64, "onnx"), "d", Settings(threads=2, cores=(1,), rounds=1))
    assert not_applied(job, {"threads": 2, "cores": [1]}) == ""
    assert "threads=1 (asked 2)" in not_applied(job, {"threads": 1, "cores": [1]})
    assert "cores=[0, 1] (asked [1])" in not_applied(job, {"threads": 2, "cores": [0, 1]})
    gpu = Job(Artifact(Path("m.pt2"), "0" * 64, "pt2"), "d", Settings(runtime="torch", accelerator="cuda",
                                                                       dtype="float16"))
    assert "dtype=float32" in not_applied(gpu, {"dtype": "float32", "cuda_graphs": True})
    assert "cuda_graphs=False" in not_applied(gpu, {"dtype": "float16", "cuda_graphs": False})
    assert not_applied(gpu, {"dtype": "float16", "cuda_graphs": False, "graph_fallback": "capture failed"}) == ""


# -- thermals and clocks, against a fake sysfs and fake device tools ------------------------------------------


def fake_root(tmp_path, cur_khz, max_khz, policy_khz=None, temp_mc=45000):
    root = tmp_path / "sysroot"
    for c in range(os.cpu_count()):
        d = root / f"sys/devices/system/cpu/cpu{c}/cpufreq"
        d.mkdir(parents=True)
        (d / "scaling_cur_freq").write_text(f"{cur_khz}\n")
        (d / "cpuinfo_max_freq").write_text(f"{max_khz}\n")
        (d / "scaling_max_freq").write_text(f"{policy_khz or max_khz}\n")
    z = root / "sys/class/thermal/thermal_zone0"
    z.mkdir(parents=True)
    (z / "temp").write_text(f"{temp_mc}\n")
    return root


def fake_tool(bin_dir, name, output):
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / name).write_text(f"#!/bin/sh\nprintf '{output}'\n")
    (bin_dir / name).chmod(0o755)


def test_throttle_state_reads_cpufreq_vcgencmd_and_nvpmodel(tmp_path, monkeypatch):
    from test_agent import load_agent_module
    agent = load_agent_module()
    monkeypatch.setenv("LATKIT_SYSROOT", str(fake_root(tmp_path, 3000000, 3000000)))
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    assert agent.throttle_state([0]) == ""  # readable and at full speed
    monkeypatch.setenv("LATKIT_SYSROOT", str(fake_root(tmp_path / "slow", 1200000, 3000000)))
    assert agent.throttle_state([0]) == "cpu0 at 1200 of 3000 MHz"
    monkeypatch.setenv("LATKIT_SYSROOT", str(fake_root(tmp_path / "cap", 1800000, 3000000, policy_khz=1800000)))
    assert agent.throttle_state([0]) == "cpu0 capped at 1800 of 3000 MHz"
    monkeypatch.setenv("LATKIT_SYSROOT", str(tmp_path / "nothing"))
    assert agent.throttle_state([0]) is None  # cannot tell
    bins = tmp_path / "bin"
    fake_tool(bins, "vcgencmd", "throttled=0x50005\\n")
    fake_tool(bins, "nvpmodel", "NV Power Mode: 15W\\n2\\n")
    monkeypatch.setenv("PATH", f"{bins}:/usr/bin:/bin")
    assert agent.throttle_state([0]) == "vcgencmd throttled=0x50005; nvpmodel power mode 15W"
    fake_tool(bins, "vcgencmd", "throttled=0x50000\\n")  # happened since boot, not now
    fake_tool(bins, "nvpmodel", "NV Power Mode: MAXN\\n0\\n")
    assert agent.throttle_state([0]) == ""


def test_rows_flag_throttling_and_cooldown(tmp_path, models, monkeypatch):
    """End to end through a real agent: a hot fake sensor makes the agent wait (bounded) and say so; a slow
    clock lands in the row's throttle column and warnings."""
    from latkit.collector import measure
    monkeypatch.setenv("LATKIT_SYSROOT", str(fake_root(tmp_path, 1000000, 3000000, temp_mc=90000)))
    reg = Registry(tmp_path / "r.toml")
    reg.path.write_text(f'[devices.hot]\ntransport = "local"\nworkdir = "{tmp_path / "w"}"\n'
                        f'lease = "{tmp_path / "lease"}"\n')
    s = Settings(repeats_min_s=0.05, repeats_max_s=0.1, rounds=1, cooldown_temp_c=60, cooldown_max_s=1.5)
    m = measure(models / "w4.onnx", device="hot", settings=s, out=tmp_path / "d", registry=reg)
    row = m.to_row()
    assert m.status == "ok" and 1.5 <= row["cooldown_s"] < 4 and m.cooled is False
    assert row["throttle"].startswith("cpu") and "of 3000 MHz" in row["throttle"]
    assert "did not cool to 60 C" in row["warnings"] and "throttled: cpu" in row["warnings"]


# -- rounds, statistics, error kinds --------------------------------------------------------------------------


def test_rounds_interleave_on_kept_sessions(reg, models, tmp_path):
    """Rounds interleave; the first loads each model, the others run on the session the agent kept; latency_ms
    is the p10 of all samples on a CPU."""
    import numpy as np
    from latkit.collector import collect_models
    s = Settings(repeats_min_s=0.05, repeats_max_s=0.1, rounds=3)
    report = collect_models(sorted(models.glob("*.onnx"))[:3], ["loc"], settings=s, out=tmp_path / "d", registry=reg,
                            progress=False)
    assert report.ok and report.measured == 3
    rows = Store(tmp_path / "d").read().to_pylist()
    for r in rows:
        assert r["rounds"] == 3 and len(r["round_ms"]) == 3 and r["latency_statistic"] == "p10"
        assert r["latency_ms"] == pytest.approx(np.percentile(r["samples_ms"], 10))
        assert r["round_session_reused"] == [False, True, True] and r["session_reused"] is False
        assert r["repeats"] == len(r["samples_ms"]) and r["stopped_by"] in ("ci_target", "max_time", "max_count")
        assert r["load_ms"] > 0 and r["first_ms"] > 0 and r["p99_ms"] >= r["p90_ms"] and r["peak_rss_mb"] > 10
    # interleaved: every model's first round comes before any model's last round
    firsts = [r["round_started_at"][0] for r in rows]
    lasts = [r["round_started_at"][-1] for r in rows]
    assert max(firsts) < min(lasts)
    assert_no_overlap(tmp_path / "d")


def test_rounds_interleave_within_windows():
    """Every job gets its rounds; a job's rounds stay inside its window of jobs (whose sessions the agent keeps),
    shuffled anew each round."""
    from latkit.collector.scheduler import round_queue
    art = Artifact(Path("m.onnx"), "0" * 64, "onnx")
    jobs = [Job(dataclasses.replace(art, sha256=f"{i:064d}"), "d", Settings(rounds=3)) for i in range(10)]
    q = round_queue(jobs, window=4)
    assert Counter(j.key for j, _ in q) == {j.key: 3 for j in jobs}
    windows = [q[:12], q[12:24], q[24:]]
    for w, part in enumerate(windows):
        assert {j.key for j, _ in part} == {j.key for j in jobs[4 * w:4 * w + 4]}
        assert [r for _, r in part] == sorted(r for _, r in part)
    assert [j.key for j, _ in q[:4]] != [j.key for j, _ in q[4:8]] or [j.key for j, _ in q[4:8]] != \
        [j.key for j, _ in q[8:12]]
    assert round_queue(jobs) == round_queue(jobs, window=64)


def test_agent_error_kinds_are_all_classified():
    import re
    kinds = set(re.findall(r'AgentError\("([a-z_]+)"', AGENT.read_text()))
    assert kinds and kinds <= set(ERROR_KINDS)
    assert {"timeout", "settings_not_applied"} <= set(ERROR_KINDS)


def test_data_show_counts_rows_that_missed_the_ci_target(reg, models, tmp_path):
    from latkit.collector import measure
    m = measure(models / "w4.onnx", device="loc", settings=Settings(repeats_min_s=0.02, repeats_max_s=0.05, rounds=1),
                out=tmp_path / "d", registry=reg)
    row = m.to_row()
    Store(tmp_path / "d").append([dict(row, key="k2", stopped_by="max_time"), dict(row, key="k3", stopped_by="max_count")])
    r = latkit("data", "show", tmp_path / "d")
    assert r.returncode == 0 and "missed CI" in r.stdout
    line = next(x for x in r.stdout.splitlines() if " loc " in x)
    cells = [c.strip() for c in line.split("│")]
    assert cells[4:7] == ["3", "3", str(2 + (row["stopped_by"] != "ci_target"))]


# -- test-retest ----------------------------------------------------------------------------------------------


def test_retest_measures_again_into_a_side_table(reg, models, tmp_path):
    out = tmp_path / "d"
    r = latkit("collect", "--models", models, "--devices", "loc", "--registry", reg.path, "--out", out,
               "--rounds", "2", *QUICK)
    assert r.returncode == 0, r.stderr
    latkit("data", "card", out)
    r = latkit("data", "retest", out, "--n", "5", "--seed", "1", "--models", models, "--registry", reg.path,
               "--quiet")
    assert r.returncode == 0, r.stderr
    assert "latency_ms" in r.stdout and "min_ms" in r.stdout and "5 rows measured again" in r.stdout
    assert Store(out).read().num_rows == 6  # the side table is never mixed with the rows
    figures = json.loads(next((out / "_retest").glob("*/retest.json")).read_text())
    assert figures["n"] == 5 and -1 <= figures["statistics"]["latency_ms"]["spearman"] <= 1
    lat = figures["statistics"]["latency_ms"]
    assert 0 <= lat["median_rel_diff"] <= lat["p90_rel_diff"] <= lat["max_rel_diff"] and "max rel. diff" in r.stdout
    rows = {x["key"]: x["latency_ms"] for x in Store(out).read().to_pylist()}
    again = {x["key"]: x["latency_ms"] for x in Store(out / figures["side_table"]).read().to_pylist()}
    ratio = sorted(again[k] / rows[k] for k in again)
    assert lat["shift"] == pytest.approx(ratio[2] - 1)  # the median ratio of the 5, less 1
    assert lat["median_rel_diff_less_shift"] == pytest.approx(sorted(abs(x / ratio[2] - 1) for x in ratio)[2])
    word = "slower" if lat["shift"] > 0 else "faster"
    assert f"the second measurement ran {abs(lat['shift']) * 100:.2f} % {word} overall" in r.stdout
    # README: it names the rows that moved most, largest first, with both latencies
    moved = next(x for x in r.stdout.splitlines() if x.startswith("moved most (latency_ms, first -> second): "))
    worst = max(again, key=lambda k: abs(again[k] / rows[k] - 1))
    arch = next(x["arch"] for x in Store(out).read(["key", "arch"]).to_pylist() if x["key"] == worst)
    first = moved.split(": ", 1)[1].split("; ")[0]
    assert first.startswith(f"{arch} on loc: {rows[worst]:.4g} -> {again[worst]:.4g} ms ("), moved
    assert len(moved.split("; ")) == 5
    assert "## Test-retest" in (out / "README.md").read_text()
    r = latkit("data", "retest", out, "--n", "3", "--registry", reg.path, "--quiet")
    assert r.returncode == 2 and "not among the files of --models; give --models with the folder" in r.stderr


def test_a_stopped_retest_resumes_where_it_stopped(reg, models, tmp_path):
    """Ctrl-C during `data retest` keeps what it timed: the same command again goes on in the same side table,
    takes back the saved rounds, times only the rest, and writes the figures there (one side table, no scratch)."""
    from latkit.collector.rounds import rounds_store
    out = tmp_path / "d"
    assert latkit("collect", "--models", models, "--devices", "loc", "--registry", reg.path, "--out", out,
                  "--rounds", "3", "--min-time", "0.3", "--max-time", "0.3", "--max-repeats", "10000000",
                  "--no-reference", "--quiet").returncode == 0
    args = ["data", "retest", out, "--n", "6", "--models", models, "--registry", reg.path]
    proc = spawn(*args)
    deadline = time.time() + 120
    while not list(out.glob("_retest/*/_rounds/data/*/*/part-*.parquet")) and time.time() < deadline:
        time.sleep(0.05)
    r = latkit(*args)  # the same retest again while it runs: refused, not joined
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "is running (pid" in r.stderr, r.stderr
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    [side] = list((out / "_retest").iterdir())
    saved = rounds_store(Store(side)).read(columns=["key"]).num_rows
    assert saved >= 1 and not (side / "retest.json").exists()
    r = latkit(*args)
    assert r.returncode == 0, r.stderr
    assert f"resuming the retest of these rows stopped in _retest/{side.name}" in r.stderr
    assert f"{saved} round(s) of" in r.stderr and "timed by an earlier run taken back" in r.stderr, r.stderr
    assert list((out / "_retest").iterdir()) == [side] and json.loads((side / "retest.json").read_text())["n"] == 6
    rows = Store(side).read(columns=["key", "rounds"]).to_pylist()
    assert len(rows) == 6 and {x["rounds"] for x in rows} == {3} and len({x["key"] for x in rows}) == 6
    assert not (side / "_rounds").exists()
    r = latkit(*args)  # a finished retest is not resumed: the next one is a retest of its own
    assert r.returncode == 0 and "resuming" not in r.stderr and len(list((out / "_retest").iterdir())) == 2
    # a side table without figures that this host did not leave (a dataset from elsewhere ships it, newest of
    # all) is never resumed: its rows would pass for timed again
    shipped = out / "_retest" / "29991231T235959Z"
    shutil.copytree(out / "data", shipped / "data")
    r = latkit(*args, "--seed", "1")
    assert r.returncode == 0 and "resuming" not in r.stderr and not (shipped / "retest.json").exists(), r.stderr
    assert len(list((out / "_retest").glob("*/retest.json"))) == 3


def test_a_retest_of_space_rows_exports_them_again_and_checks_the_hash(reg, tmp_path):
    """README: rows of a search space are re-exported from their arch for a retest, the same file checked by hash;
    a row whose file the exporter no longer makes is refused in one line (no --models needed)."""
    out = tmp_path / "d"
    r = latkit("collect", "--space", "nb201", "--n", "3", "--devices", "loc", "--registry", reg.path, "--out", out,
               "--rounds", "1", "--no-reference", *QUICK)
    assert r.returncode == 0, r.stderr
    r = latkit("data", "retest", out, "--n", "3", "--registry", reg.path, "--quiet")
    assert r.returncode == 0 and "3 rows measured again" in r.stdout, r.stderr
    rows = Store(out).read().to_pylist()
    rows[0] = dict(rows[0], model_sha256="0" * 64)  # as if another exporter had made the file measured
    Store(tmp_path / "d2").append(rows)
    r = latkit("data", "retest", tmp_path / "d2", "--n", "3", "--registry", reg.path, "--quiet")
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "gave another file than the one measured (exporter versions changed?); give the model files" in r.stderr
