"""`latkit doctor` as a user runs it before a long collection: one line per device, exit 1 only for a problem
that spoils timing (unreachable, a busy process on the pinned cores), warnings never fail."""
import json
import os
import subprocess
import sys
import time

import pytest

from conftest import ROOT


def latkit(*args, timeout=180):
    return subprocess.run([sys.executable, "-m", "latkit.collector.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT)


@pytest.fixture
def ghost_registry(tmp_path):
    """A registry with one ssh device on a closed port of this machine."""
    reg = tmp_path / "devices.toml"
    reg.write_text('[devices.ghost]\ntransport = "ssh"\nhost = "127.0.0.1"\nport = 9\nuser = "nobody"\n')
    return reg


def test_local_is_one_line_and_fit(tmp_path):
    """The local device, not pinned: reachable, its runtimes, and only warnings (exit 0)."""
    r = latkit("doctor", "--devices", "local", "--registry", tmp_path / "none.toml")
    assert r.returncode == 0 and r.stderr == "", r.stdout + r.stderr
    line, = r.stdout.splitlines()
    assert line.startswith(("local: ok: runtimes ", "local: warn: runtimes ")), line
    assert "onnxruntime" in line and "GB free in " in line and "load " in line and "problem" not in line


def test_json_is_one_document_with_the_facts(tmp_path):
    r = latkit("--json", "doctor", "--devices", "local", "--registry", tmp_path / "none.toml")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["ok"] is True and [d["device"] for d in doc["devices"]] == ["local"]
    local = doc["devices"][0]
    assert local["reachable"] and local["problems"] == [] and "onnxruntime" in local["runtimes"]
    assert local["cpus"] == sorted(os.sched_getaffinity(0)) and local["cpu_count"] == os.cpu_count()
    assert local["disk_free_mb"] > 0 and len(local["loadavg"]) == 3 and isinstance(local["busy"], list)


def test_a_busy_process_on_the_pinned_core_fails_and_is_named(tmp_path):
    """--cores 0 (the cores a collection will pin to): a busy loop on CPU 0 spoils timing there, exit 1."""
    spin = subprocess.Popen([sys.executable, "-c", "import os; os.sched_setaffinity(0, {0})\nwhile True: pass"])
    try:
        time.sleep(0.5)
        r = latkit("doctor", "--devices", "local", "--cores", "0", "--registry", tmp_path / "none.toml")
    finally:
        spin.kill()
        spin.wait()
    assert r.returncode == 1, r.stdout + r.stderr
    line, = r.stdout.splitlines()
    assert line.startswith("local: problem: ") and "pinned to cpu 0" in line
    busy = next(part for part in line.split(" | ") if part.startswith("problem: busy on its pinned cpu 0: "))
    assert f"python (pid {spin.pid}, " in busy, line
    assert r.stderr == ("latkit: error: 1 device(s) not fit for timing (local): fix the problems named above, then "
                        "run latkit doctor again\n")


def test_every_device_by_default_and_unreachable_fails(ghost_registry):
    r = latkit("doctor", "--registry", ghost_registry)
    assert r.returncode == 1
    local, ghost = r.stdout.splitlines()
    assert local.startswith("local: ") and " problem" not in local.split("|")[0][len("local: "):]
    assert ghost.startswith("ghost: problem: unreachable | problem: cannot reach ghost at nobody@127.0.0.1:9"), ghost
    assert r.stderr.strip().splitlines() == ["latkit: error: 1 device(s) not fit for timing (ghost): fix the problems "
                                             "named above, then run latkit doctor again"]


def test_a_pinned_ssh_device(tmp_path):
    """A loopback sshd device whose agent is pinned to CPU 0 (taskset): doctor reaches it over ssh and judges
    CPU 0 as its cores."""
    from latkit.collector import Registry, add_device
    from latkit.collector.loopback import new_fleet_dir, start_fleet, stop_fleet
    base = new_fleet_dir()
    try:
        d, = start_fleet(base, [sys.executable], cores=["0"], prefix="doc")
        reg = Registry(tmp_path / "devices.toml")
        add_device(d.name, d.host, d.port, d.user, d.key, d.python, d.workdir, ["loopback"], trust_host_key=True,
                   registry=reg, lease=f"{d.dir}/lease")
        r = latkit("doctor", "--devices", "doc0", "--json", "--registry", reg.path)
    finally:
        stop_fleet(base, remove=True)
    assert r.returncode in (0, 1), r.stderr  # 1 where another process is busy on CPU 0 just then
    dev, = json.loads(r.stdout)["devices"]
    assert dev["reachable"] and dev["cpus"] == [0] and "pinned to cpu 0" in dev["summary"]
    assert dev["workdir"] == d.workdir
    assert all("busy on its pinned cpu 0" in p for p in dev["problems"])


def test_governor_heat_and_throttling_are_warnings(tmp_path):
    """A board as a fake /sys tree (LATKIT_SYSROOT, which the local agent inherits): powersave on every CPU,
    two sensors, one at 91 °C, clocks at 40 % of rated. All named, none fails the device."""
    root = tmp_path / "sysroot"
    for c in range(os.cpu_count()):
        d = root / f"sys/devices/system/cpu/cpu{c}/cpufreq"
        d.mkdir(parents=True)
        for name, text in (("scaling_governor", "powersave"), ("scaling_cur_freq", "1200000"),
                           ("cpuinfo_max_freq", "3000000"), ("scaling_max_freq", "3000000")):
            (d / name).write_text(text + "\n")
    for i, (kind, mc) in enumerate((("cpu-thermal", 91000), ("gpu-thermal", 50000))):
        z = root / f"sys/class/thermal/thermal_zone{i}"
        z.mkdir(parents=True)
        (z / "temp").write_text(f"{mc}\n")
        (z / "type").write_text(kind + "\n")
    r = subprocess.run([sys.executable, "-m", "latkit.collector.cli", "doctor", "--devices", "local", "--registry",
                        tmp_path / "none.toml"], capture_output=True, text=True, timeout=180, cwd=ROOT,
                       env=dict(os.environ, LATKIT_SYSROOT=str(root)))
    assert r.returncode == 0 and r.stderr == "", r.stdout + r.stderr
    line, = r.stdout.splitlines()
    cpus = f"0-{os.cpu_count() - 1}" if os.cpu_count() > 1 else "0"
    assert line.startswith("local: warn: ") and "governor powersave; 2 sensor(s), hottest 91 °C" in line, line
    assert f"warning: governor powersave on cpu {cpus}; set performance" in line
    assert "warning: cpu-thermal reads 91 °C; let it cool or use --cooldown-temp" in line
    assert "warning: throttled now: cpu0 at 1200 of 3000 MHz" in line


def test_the_energy_counter_is_a_fact_with_its_reason_in_json(tmp_path):
    """`--energy` is opt-in, so doctor says which counter it would read (a fact, never a warning): RAPL from a
    package domain of a fake powercap tree; with none, `energy n/a` and the reason in --json."""
    root = tmp_path / "sysroot"
    zone = root / "sys/class/powercap/intel-rapl:0"
    zone.mkdir(parents=True)
    for name, text in (("name", "package-0"), ("energy_uj", "123456"), ("max_energy_range_uj", "262143328850")):
        (zone / name).write_text(text + "\n")
    cmd = [sys.executable, "-m", "latkit.collector.cli", "doctor", "--devices", "local", "--registry",
           tmp_path / "none.toml"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=180, cwd=ROOT,
                       env=dict(os.environ, LATKIT_SYSROOT=str(root)))
    assert "; energy rapl" in r.stdout and "warning: energy" not in r.stdout, r.stdout + r.stderr
    r = subprocess.run(cmd + ["--json"], capture_output=True, text=True, timeout=180, cwd=ROOT,
                       env=dict(os.environ, LATKIT_SYSROOT=str(tmp_path / "bare")))
    dev, = json.loads(r.stdout)["devices"]
    assert dev["summary"].endswith("energy n/a") and "no RAPL package domain" in dev["energy"]["rapl"], dev


def test_a_device_without_a_runtime_is_a_problem(tmp_path):
    """README: no runtime is a problem (exit 1, named). A device whose Python is a bare venv (the agent needs only
    the stdlib) is reachable and has nothing to time with."""
    import venv
    venv.create(tmp_path / "bare", with_pip=False)
    reg = tmp_path / "devices.toml"
    reg.write_text(f'[devices.bare]\ntransport = "local"\npython = "{tmp_path}/bare/bin/python"\n'
                   f'workdir = "{tmp_path}/wd"\nlease = "{tmp_path}/lease"\n')
    r = latkit("doctor", "--devices", "bare", "--registry", reg)
    assert r.returncode == 1, r.stdout + r.stderr
    line, = r.stdout.splitlines()
    assert line.startswith("bare: problem: runtimes none; ") and "GB free in " in line, line
    assert "problem: no runtime imports there; install onnxruntime, ai-edge-litert or torch in its Python" in line
    assert r.stderr == ("latkit: error: 1 device(s) not fit for timing (bare): fix the problems named above, then "
                        "run latkit doctor again\n")


@pytest.mark.parametrize("change,status,said", [
    ({}, "ok", None),
    ({"disk_free_mb": 900}, "problem", "problem: only 0.9 GB free in /w; free space there"),
    ({"disk_free_mb": 3000}, "warn", "warning: only 2.9 GB free in /w"),
    ({"loadavg": [3.5, 1, 1]}, "warn", "warning: load 3.5 on 2 CPUs: other work shares the machine"),
    ({"busy": [{"name": "make", "pid": 7, "cpu_share": 0.9, "cpus": [1]}]}, "warn",
     "warning: busy: make (pid 7, 90 %) (the device is not pinned"),
    ({"busy": [{"name": "make", "pid": 7, "cpu_share": 0.9, "cpus": [1]}], "cpus": [1]}, "problem",
     "problem: busy on its pinned cpu 1: make (pid 7, 90 %)"),
    ({"sensors": []}, "warn", "warning: no thermal sensor readable"),
    ({"governors": {"performance": [0], "powersave": [1]}}, "warn", "warning: governor powersave on cpu 1"),
])
def test_each_verdict_is_a_problem_or_a_warning_as_the_readme_says(change, status, said):
    """README "Before a long collection": under 1 GB free and a busy process on the pinned cores are problems
    (exit 1); a load above the core count, busy processes on an unpinned device, no thermal sensor and a governor
    other than performance are warnings (exit 0)."""
    from latkit.collector.doctor import judge, line
    health = {"cpu_count": 2, "cpus": [0, 1], "loadavg": [0.2, 0.1, 0.1], "busy": [], "disk_free_mb": 50_000,
              "workdir": "/w", "sensors": [{"name": "cpu", "temp_c": 45.0}], "governors": {"performance": [0, 1]}}
    r = judge("pi", {"runtimes": {"onnxruntime": {"version": "1.32.0"}}}, {**health, **change})
    assert r["status"] == status, r
    if said:
        assert said in line(r), line(r)
