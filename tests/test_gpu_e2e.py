"""scripts/gpu_e2e.py, the one-shot GPU study, end to end on the CPU (--smoke): the plumbing the lent GPU
run depends on (tests phase, parallel exports streamed to one agent, two batch sizes from one trace,
retest side table, fits in child processes, few output files), and its time plan."""
import importlib.util
import json
import subprocess
import sys
import tarfile
import time
from argparse import Namespace

import pyarrow.parquet as pq

from conftest import ROOT

SCRIPT = ROOT / "scripts" / "gpu_e2e.py"


def script_module():
    spec = importlib.util.spec_from_file_location("gpu_e2e", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_plan_keeps_time_for_what_comes_after():
    """One more arch only while the retest, the fits and the outputs still fit behind it."""
    args = Namespace(budget_s=100, retest=10, energy_n=0, fit_reserve_s=30, pack_reserve_s=10, accelerator="cuda")
    plan = script_module().Plan(args, time.monotonic())
    plan.cost["big"], plan.cost["small"] = [2.0] * 5, [1.0]
    # an arch costs 2 + 0.3 x 1 s; behind it: 10 retest archs x 2 s + 30 s + 10 s
    plan.deadline = time.monotonic() + 63.0
    assert plan.room_for_arch(0.3)
    plan.deadline = time.monotonic() + 62.0
    assert not plan.room_for_arch(0.3)
    # and 2 energy archs twice: until one is seen, a batch-1 measurement (no export) + NVML's 1.5 s each (4 x 2.5 s)
    args.energy_n = 2
    plan.deadline = time.monotonic() + 73.0
    assert plan.room_for_arch(0.3)
    plan.deadline = time.monotonic() + 72.0
    assert not plan.room_for_arch(0.3)


def test_smoke_run_end_to_end(tmp_path):
    out = tmp_path / "out"
    run = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--out", str(out), "--work", str(tmp_path / "work"),
                          "--lease", str(tmp_path / "lease")], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["log.txt", "nb201-bs1.parquet", "nb201-bs2-energy.parquet",
                                                      "nb201-bs2-retest.parquet", "nb201-bs2.parquet", "reports.tar.gz",
                                                      "summary.json"]
    assert all(p.stat().st_size <= 16 * 2 ** 20 for p in out.iterdir())  # what a lent machine brings back
    s = json.loads((out / "summary.json").read_text())
    assert s["wall_s"] <= s["budget_s"]
    assert (s["tests"]["tests"], s["tests"]["failures"], s["tests"]["errors"]) == (2, 0, 0)
    c = s["collect"]
    assert c["stop"] == "every sampled arch measured" and c["counts"]["errors"] == 0

    big = pq.read_table(out / "nb201-bs2.parquet").to_pylist()
    small = pq.read_table(out / "nb201-bs1.parquet").to_pylist()
    again = pq.read_table(out / "nb201-bs2-retest.parquet").to_pylist()
    assert len(big) == c["counts"]["big"] == 21 and {r["input_shape"] for r in big} == {"2x3x32x32"}
    assert len(small) == c["counts"]["small"] >= 1 and {r["input_shape"] for r in small} == {"1x3x32x32"}
    by_arch = {r["arch"]: r for r in big}
    assert all(by_arch[r["arch"]]["model_sha256"] == r["model_sha256"] for r in small)  # one trace, both batches
    assert len(again) == c["retest"]["n"] == 3 and {r["key"] for r in again} <= {r["key"] for r in big}
    assert {r["sampler"] for r in big} == {r["sampler"] for r in again} == {"balanced(seed=0)"}
    assert {r["role"] for r in big} == {""} and {r["role"] for r in again} == {"retest"}

    # energy: 3 of the retest archs twice with energy on; where the machine has no readable RAPL (this VM) the rows
    # say why and the figures are skipped with that reason
    energy = pq.read_table(out / "nb201-bs2-energy.parquet").to_pylist()
    assert c["counts"]["energy"] == len(energy) == 6 and sorted(r["role"] for r in energy) == [""] * 3 + ["retest"] * 3
    assert {r["arch"] for r in energy} <= {r["arch"] for r in big} and all(json.loads(r["settings"])["energy"]
                                                                             for r in energy)
    e = c["energy"]
    if e["read"]:
        assert e["method"] == "rapl" and e["retest"]["n"] == 3 and all(r["energy_mj"] > 0 for r in energy)
    else:
        assert e["skipped"].startswith("energy: ") and all(r["energy_mj"] is None for r in energy)
        assert "needs at least 20" in s["fits"]["energy"]["skipped"]

    assert s["fits"]["big"]["n_train"] == 10 and s["fits"]["big"]["n_test"] == 11
    assert "needs at least 20" in s["fits"]["small"]["skipped"]
    assert s["goals"]["batch 2 archs >= 14"] == {"value": 21, "reached": True}
    with tarfile.open(out / "reports.tar.gz") as tar:
        names = set(tar.getnames())
        card = tar.extractfile("nb201-bs2/README.md").read().decode()
    assert any(n.startswith("nb201-bs2/") and n.endswith(".json") and n != "nb201-bs2/retest.json" for n in names)
    assert {"nb201-bs2/retest.json", "nb201-bs1/README.md", "fits/nb201-bs2-fit.json",
            "fits/nb201-bs2-fit-pred.csv", "gpu-tests.xml"} <= names
    assert "## Test-retest" in card and "balanced sampler (seed 0)" in card
