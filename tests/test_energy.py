"""Energy per inference (`--energy`): the agent's RAPL reader against a powercap tree of the real layout whose
counters a thread advances at known rates (this VM has no RAPL), through `latkit measure` into the stored row;
unreadable, missing and hostile counters (null columns and a reason, the latency kept); the host's bounds on the
new reply fields; older files; and `predictor fit --target energy_mj` on rows written through the Store."""
import copy
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from conftest import AGENT, ROOT, small_onnx_models
from test_agent import load_agent_module
from latkit.collector import Artifact, Job, Measurement, Settings, Store, protocol
from latkit.collector.schema import FILE_SCHEMA, SCHEMA

LATKIT = [sys.executable, "-m", "latkit.collector.cli"]
PACKAGES_W = (12.0, 8.0)  # package-0, package-1: 20 W in all
WRAP_S = 1.5              # package-0's counter wraps at max_energy_range_uj every WRAP_S seconds


def latkit(*args, env=None, timeout=300):
    return subprocess.run([*LATKIT, *map(str, args)], capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                          env=dict(os.environ, **(env or {})))


def write(path: Path, text: str) -> None:
    """As sysfs reads: whole values (a reader never sees a half-written file)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class Powercap:
    """/sys/class/powercap under a fake root, as Linux lays it out: zones in /sys/devices/virtual/powercap and a
    link per zone in /sys/class/powercap (subzones too, intel-rapl:0:0). The intel-rapl control type holds
    package domains intel-rapl:0 and :1 with subdomains (core, dram) and psys (which would count the packages
    twice); intel-rapl-mmio:0 is an MMIO copy of package-0 (likewise). A thread advances every energy_uj at its
    rate, wrapping at its max_energy_range_uj, every millisecond."""

    def __init__(self, root: Path):
        self.root, self.base = root, root / "sys" / "class" / "powercap"
        zones = root / "sys" / "devices" / "virtual" / "powercap"
        self.domains = {}  # folder -> (watts, max_energy_range_uj, start µJ)
        spec = [("intel-rapl/intel-rapl:0", "package-0", PACKAGES_W[0], int(PACKAGES_W[0] * 1e6 * WRAP_S)),
                ("intel-rapl/intel-rapl:0/intel-rapl:0:0", "core", 5.0, 2 ** 32),
                ("intel-rapl/intel-rapl:0/intel-rapl:0:1", "dram", 3.0, 2 ** 32),
                ("intel-rapl/intel-rapl:1", "package-1", PACKAGES_W[1], 262143328850),
                ("intel-rapl/intel-rapl:2", "psys", 60.0, 262143328850),
                ("intel-rapl-mmio/intel-rapl-mmio:0", "package-0", PACKAGES_W[0], 262143328850)]
        self.base.mkdir(parents=True)
        for control in ("intel-rapl", "intel-rapl-mmio"):
            (zones / control).mkdir(parents=True)
            write(zones / control / "enabled", "1\n")
            (self.base / control).symlink_to(os.path.relpath(zones / control, self.base))
        for folder, name, watts, top in spec:
            d = zones / folder
            d.mkdir(parents=True)
            (self.base / d.name).symlink_to(os.path.relpath(d, self.base))  # ../../devices/virtual/powercap/...
            write(d / "name", name + "\n")
            write(d / "max_energy_range_uj", f"{top}\n")
            write(d / "enabled", "1\n")
            self.domains[d] = (watts, top, top // 3)
        self.stop, self.t0 = threading.Event(), time.monotonic()
        self.tick()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def tick(self):
        t = time.monotonic() - self.t0
        for d, (watts, top, start) in self.domains.items():
            write(d / "energy_uj", f"{int(start + watts * 1e6 * t) % top}\n")

    def run(self):
        while not self.stop.wait(0.001):
            self.tick()

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()


@pytest.fixture
def agent():
    return load_agent_module()


def test_measure_stores_energy_per_inference_from_rapl(tmp_path, artifacts):
    """`latkit measure --energy` on `local` with the fixture tree: 2 rounds, each read over >= 0.2 s (the timed
    runs, extended) with a 0.2 s idle span before; the row's power and idle power are the 20 W the packages draw
    (the subdomains, psys and the MMIO copy left out; package-0 wraps every 1.5 s), energy per inference is that
    power over the runs, and a stored row reads back the same."""
    model, out = artifacts["onnx"].path, tmp_path / "d"
    env = {"LATKIT_SYSROOT": str(tmp_path / "root")}
    with Powercap(tmp_path / "root"):
        r = latkit("measure", model, "--energy", "--rounds", "2", "--max-time", "0.05", "--out", out, "--registry",
                   tmp_path / "none.toml", "--json", env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    doc = json.loads(r.stdout)
    row, = Store(out).read().to_pylist()
    assert row["energy_method"] == "rapl" and doc["energy_mj"] == pytest.approx(row["energy_mj"])
    assert row["power_w"] == pytest.approx(sum(PACKAGES_W), rel=0.15), row
    assert row["idle_power_w"] == pytest.approx(sum(PACKAGES_W), rel=0.15), row
    assert row["energy_s"] >= 0.4 and row["energy_runs"] > row["repeats"]  # the short rounds were extended
    assert row["energy_mj"] == pytest.approx(row["power_w"] * row["energy_s"] / row["energy_runs"] * 1e3)
    assert not any(w.startswith("energy") for w in doc["warnings"])
    assert json.loads(row["settings"])["energy"] is True
    again = latkit("measure", model, "--energy", "--rounds", "2", "--max-time", "0.05", "--out", out, "--registry",
                   tmp_path / "none.toml", "--json", env=env)  # stored: not timed again
    stored = json.loads(again.stdout)
    assert stored["stored"] and stored["energy_runs"] == row["energy_runs"] and stored["energy_method"] == "rapl"
    for k in ("energy_mj", "power_w", "idle_power_w", "energy_s"):
        assert stored[k] == pytest.approx(row[k], rel=1e-12), k


def test_collect_and_retest_energy(tmp_path, export_cache):
    """`collect --energy` over two models, then `data retest`: energy_mj and power_w are compared beside latency
    (the counters' 20 W read back within 15 % by both passes)."""
    models = tmp_path / "models"
    models.mkdir()
    small_onnx_models(models, (4, 8), export_cache)
    env, none = {"LATKIT_SYSROOT": str(tmp_path / "root")}, tmp_path / "none.toml"
    with Powercap(tmp_path / "root"):
        r = latkit("collect", "--models", models, "--devices", "local", "--energy", "--rounds", "2", "--out",
                   tmp_path / "d", "--registry", none, "-q", env=env)
        assert r.returncode == 0, r.stdout + r.stderr
        r = latkit("data", "retest", tmp_path / "d", "--n", "2", "--models", models, "--registry", none, "-q",
                   env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    figures = json.loads(next((tmp_path / "d" / "_retest").glob("*/retest.json")).read_text())
    assert {"latency_ms", "energy_mj", "power_w"} <= set(figures["statistics"]), figures
    assert figures["statistics"]["power_w"]["max_rel_diff"] < 0.3
    for side in (Store(tmp_path / "d").read().to_pylist(),
                 Store(next((tmp_path / "d" / "_retest").glob("2*"))).read().to_pylist()):
        assert [row["power_w"] == pytest.approx(sum(PACKAGES_W), rel=0.15) for row in side] == [True, True], side


def test_without_a_counter_energy_is_null_and_warnings_say_why(tmp_path, artifacts):
    """No powercap tree (this VM): the row is ok with its latency, energy null, the reason in warnings; without
    --energy nothing is read or said, and the key is the one latkit gave before energy existed."""
    out, none = tmp_path / "d", tmp_path / "none.toml"
    env = {"LATKIT_SYSROOT": str(tmp_path / "bare")}
    r = latkit("measure", artifacts["onnx"].path, "--energy", "--rounds", "1", "--out", out, "--registry", none,
               env=env)
    assert r.returncode == 0, r.stderr
    assert f"warning: energy: no RAPL package domain under {tmp_path}/bare/sys/class/powercap" in r.stdout
    assert "  warning: energy: no RAPL" in r.stdout.splitlines()[-1] and "\\n" not in r.stdout  # a line of its own
    r = latkit("measure", artifacts["onnx"].path, "--rounds", "1", "--out", out, "--registry", none, env=env)
    assert r.returncode == 0, r.stderr
    rows = {json.loads(x["settings"]).get("energy", False): x for x in Store(out).read().to_pylist()}
    assert rows[True]["latency_ms"] > 0 and rows[True]["status"] == "ok"
    for row in rows.values():
        assert [row[c] for c in ("energy_mj", "power_w", "idle_power_w", "energy_s", "energy_runs",
                                 "energy_method")] == [None] * 6
    assert "energy: no RAPL package domain" in rows[True]["warnings"] and "energy" not in rows[False]["warnings"]
    assert '"energy"' not in Settings().canonical() and '"energy":true' in Settings(energy=True).canonical()


def meter_reply(agent, monkeypatch, root, between=None):
    """One EnergyMeter over ~0.2 s of fake runs on the tree at `root`; `between(domain)` changes it mid-span."""
    monkeypatch.setenv("LATKIT_SYSROOT", str(root))
    meter = agent.EnergyMeter("cpu")
    meter.start()
    if between is not None:
        between(Path(root) / "sys/class/powercap/intel-rapl:0")
    meter.stop(lambda: time.sleep(0.01), 0)
    return meter.reply()


def test_the_reader_takes_package_domains_and_unwraps(agent, tmp_path, monkeypatch):
    with Powercap(tmp_path):
        monkeypatch.setenv("LATKIT_SYSROOT", str(tmp_path))
        rapl = agent.Rapl()
        assert [os.path.basename(os.path.dirname(p)) for p, _ in rapl.domains] == ["intel-rapl:0", "intel-rapl:1"]
        r = meter_reply(agent, monkeypatch, tmp_path)
    assert r["energy_method"] == "rapl" and r["energy_warning"] is None and r["energy_runs"] >= 10
    assert r["energy_j"] / r["energy_s"] == pytest.approx(sum(PACKAGES_W), rel=0.15)
    top = int(PACKAGES_W[0] * 1e6 * WRAP_S)
    assert rapl.joules((top - 1000, 5000), (3000, 9000), 0.1) == pytest.approx((4000 + 4000) / 1e6)  # one wrap


@pytest.mark.parametrize("case, text, message", [
    ("not a number", "12ab\n", "holds '12ab', not a counter of microjoules"),
    ("negative", "-5\n", "holds '-5', not a counter of microjoules"),
    ("past 64 bits", "99999999999999999999999\n", "not a counter of microjoules"),
    ("past its range", f"{10 ** 15}\n", "not a plausible step"),
    ("went back", "1000\n", "not a plausible step"),
    ("did not move", None, "counter did not move"),
])
def test_hostile_counters_leave_energy_null_with_a_reason(agent, tmp_path, monkeypatch, case, text, message):
    """A counter that turns to garbage, jumps past its range, runs backwards (read as a wrap: 4 kJ in 0.2 s is no
    CPU package) or stands still: energy null and the reason, never an exception or a made-up number."""
    pc = Powercap(tmp_path)  # no thread: the values stand still unless changed here
    for d in pc.domains:
        if d.name == "intel-rapl:0":
            write(d / "max_energy_range_uj", f"{2 ** 32}\n")
            write(d / "energy_uj", "2000000\n")
    r = meter_reply(agent, monkeypatch, tmp_path, None if text is None else lambda d: write(d / "energy_uj", text))
    assert [r[k] for k in ("energy_j", "energy_s", "energy_runs", "energy_method")] == [None] * 4, r
    assert r["energy_warning"].startswith("energy: ") and message in r["energy_warning"], r


def test_unreadable_counters_say_so(agent, tmp_path, monkeypatch):
    """energy_uj is root-only on Linux >= 5.10: the meter says so at once (as root, the check runs as nobody)."""
    root = Path(tempfile.mkdtemp(prefix="latkit-rapl-"))
    try:
        Powercap(root)
        for d in root.rglob("energy_uj"):
            d.chmod(0o400)
        if os.geteuid() != 0:
            r = meter_reply(agent, monkeypatch, root)
        else:
            if not shutil.which("setpriv") or not os.access("/usr/bin/python3", os.X_OK):
                pytest.skip("running as root without setpriv or /usr/bin/python3 to drop to nobody")
            shutil.copy(AGENT, root / "agent.py")
            for p in [root, *root.rglob("*")]:  # the tree readable by nobody but the counters
                if not p.is_symlink():
                    p.chmod(0o755 if p.is_dir() else 0o400 if p.name == "energy_uj" else 0o644)
            code = ("import json, sys; sys.path.insert(0, sys.argv[1]); import agent; m = agent.EnergyMeter('cpu'); "
                    "m.idle(); print(json.dumps(m.reply()))")
            run = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "/usr/bin/python3",
                                  "-c", code, str(root)], capture_output=True, text=True, timeout=60,
                                 env={"LATKIT_SYSROOT": str(root), "PATH": "/usr/bin:/bin"}, cwd="/")
            assert run.returncode == 0, run.stderr
            r = json.loads(run.stdout)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    assert r["energy_j"] is None and r["idle_power_w"] is None and r["energy_method"] is None
    assert "intel-rapl:0/energy_uj: permission denied (energy_uj is root-only" in r["energy_warning"], r


def test_rounds_pool_energy_per_inference():
    """Rounds combine into one row: energy, span and runs summed (energy per inference over all runs), idle
    power averaged, a round without a reading left out of both, its reason kept once."""
    art = Artifact(path="/m/a.onnx", sha256="a" * 64, format="onnx", arch="a")
    job = Job(art, "dev", Settings(energy=True, rounds=3))
    base = {"samples_ms": [1.0, 1.1], "warmup": 1, "runtime_version": "1", "agent_version": "0.3.5",
            "inputs": [], "telemetry_before": {}, "telemetry_after": {}}
    read = [dict(base, energy_method="rapl", energy_j=j, energy_s=s, energy_runs=n, idle_power_w=w)
            for j, s, n, w in ((2.0, 0.2, 100, 4.0), (4.0, 0.3, 300, 6.0))]
    lost = dict(base, energy_warning="energy: the rapl counter did not move in 0.200 s")
    m = Measurement.combine([Measurement.from_result(job, r) for r in (read[0], lost, read[1], lost)])
    assert m.energy_mj == pytest.approx(6.0 / 400 * 1e3) and m.power_w == pytest.approx(6.0 / 0.5)
    assert m.idle_power_w == pytest.approx(5.0) and m.energy_runs == 400 and m.energy_method == "rapl"
    assert m.warnings.count("energy: the rapl counter did not move in 0.200 s") == 1
    row = m.to_row()
    assert (row["energy_mj"], row["power_w"], row["energy_s"], row["energy_method"]) == (15.0, 12.0, 0.5, "rapl")


OK_REPLY = {"samples_ms": [1.0, 1.1, 0.9], "warmup": 1, "runtime_version": "1.0", "agent_version": "0.3.5",
            "inputs": [], "telemetry_before": {}, "telemetry_after": {}, "energy_method": "nvml", "energy_j": 3.5,
            "energy_s": 1.02, "energy_runs": 1200, "idle_power_w": 61.0, "energy_warning": None}


@pytest.mark.parametrize("change", [
    {"energy_j": None}, {"energy_method": None}, {"energy_method": "wattmeter"}, {"energy_j": -1.0},
    {"energy_j": float("nan")}, {"energy_j": float("inf")}, {"energy_s": 0.0}, {"energy_runs": 0},
    {"energy_runs": True}, {"energy_runs": 1.5}, {"energy_j": 2e5, "energy_s": 1.0}, {"energy_s": 1e6},
    {"idle_power_w": -3.0}, {"idle_power_w": 1e9}, {"energy_warning": "x" * (protocol.TEXT + 1)},
    {"energy_warning": 7}, {"energy_method": "n" * 300},
])
def test_the_host_bounds_the_energy_fields(change):
    fields = {"settings": {"repeats_max_count": 10}}
    protocol.check_result("measure", copy.deepcopy(OK_REPLY), fields)
    protocol.check_result("measure", {k: v for k, v in OK_REPLY.items() if not k.startswith(("energy", "idle"))},
                          fields)  # an agent asked without energy sends none
    with pytest.raises(protocol.Bad):
        protocol.check_result("measure", {**OK_REPLY, **change}, fields)


def test_older_files_read_with_energy_null_and_migrate(tmp_path):
    """A file written before the energy columns: read with them null, rewritten with them by `data migrate`."""
    from test_store import file_without
    energy = {"energy_mj", "power_w", "idle_power_w", "energy_s", "energy_runs", "energy_method"}
    assert energy <= set(SCHEMA.names)
    file_without(tmp_path / "data" / "device=dev1" / "space=custom" / "part-old.parquet", energy)
    t = Store(tmp_path).read()
    assert t.num_rows == 3 and all(t[c].null_count == 3 for c in energy)
    r = latkit("data", "migrate", tmp_path)
    assert r.returncode == 0, r.stderr
    for f in (tmp_path / "data").rglob("*.parquet"):
        assert pq.read_schema(f).remove_metadata().equals(FILE_SCHEMA)
    assert Store(tmp_path).read()["energy_mj"].null_count == 3


def energy_dataset(path: Path, n: int, seed: int = 0, energy: bool = True) -> list:
    """n NB201 archs on device gpu0 through the Store: energy in proportion to FLOPs (5 % noise); a few rows
    measured without energy beside them."""
    from latkit.collector.samplers import sample
    from latkit.collector.spaces import get_space
    space = get_space("nb201")
    archs = sample(space, n, "uniform", seed)
    rng = np.random.default_rng(seed)
    rows = []
    for i, arch in enumerate(archs):
        flops = space.flops(arch)
        art = Artifact(path=f"/m/{i}.onnx", sha256=f"{i:064x}", format="onnx", space="nb201", arch=arch)
        result = {"samples_ms": [flops / 1e7, flops / 1e7 * 1.01], "warmup": 1, "runtime_version": "1",
                  "agent_version": "0.3.5", "inputs": [], "telemetry_before": {}, "telemetry_after": {}}
        if energy and i >= 5:
            runs = 1000
            result.update(energy_method="nvml", energy_j=flops * 2e-9 * runs / 1e3 * rng.normal(1, 0.05),
                          energy_s=1.0, energy_runs=runs, idle_power_w=60.0)
        rows.append(Measurement.from_result(Job(art, "gpu0", Settings(energy=energy and i >= 5)), result).to_row())
    Store(path).append(rows)
    return archs


def test_fit_and_predict_energy_from_the_cli(tmp_path):
    """predictor fit --target energy_mj: the same ESM pipeline on the energy column (rows without it left out),
    held-out figures printed, the target in the model file and in predict's header; no energy: one line."""
    archs = energy_dataset(tmp_path / "d", 45)
    r = latkit("predictor", "fit", "--data", tmp_path / "d", "--space", "nb201", "--device", "gpu0", "--target",
               "energy_mj", "--budget", "20", "--model", "ridge", "-q")
    assert r.returncode == 0, r.stderr
    model = tmp_path / "d" / "models" / "nb201-gpu0-energy_mj.latkit-model"
    assert r.stdout.startswith("nb201 on gpu0 (energy_mj): spearman=") and " n_test=" in r.stdout, r.stdout
    assert float(r.stdout.split("spearman=")[1].split(",")[0]) > 0.8
    with zipfile.ZipFile(model) as z:
        assert json.loads(z.read("meta.json"))["target"] == "energy_mj"
    r = latkit("predictor", "predict", "--model", model, "--space", "nb201", "--arch", archs[0], archs[1], "--std")
    assert r.returncode == 0, r.stderr
    head, *lines = r.stdout.splitlines()
    assert head == "arch\tenergy_mj\tstd_mj" and len(lines) == 2 and float(lines[0].split("\t")[1]) > 0
    energy_dataset(tmp_path / "none", 12, energy=False)
    r = latkit("predictor", "fit", "--data", tmp_path / "none", "--space", "nb201", "--device", "gpu0", "--target",
               "energy_mj")
    assert r.returncode == 2 and r.stdout == "" and len(r.stderr.splitlines()) == 1
    assert f"no nb201 rows in {tmp_path}/none have energy_mj; measure them with --energy" in r.stderr
    assert not (tmp_path / "none" / "models").exists()
