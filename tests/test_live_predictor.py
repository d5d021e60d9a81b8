"""predictor build and adapt on the real `local` device (nb201, short timing settings), through the CLI."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pyarrow.parquet as pq
import pytest

from latkit.collector.store import Store

FAST = ["--min-time", "0.01", "--max-time", "0.02", "--repeats", "3", "--rounds", "1"]


def latkit(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "latkit.collector.cli", "predictor", *args], capture_output=True,
                          text=True, timeout=timeout)


def build_args(data, out, target):
    return ["build", "--space", "nb201", "--device", "local", "--target-acc", str(target), "--max-archs", "40",
            "--heldout", "8", "--batch", "8", "--data", str(data), "--out", str(out), *FAST]


def rows(data):
    t = Store(data).read(["key", "arch", "sampler", "role", "role_round"]).to_pylist()
    return t


def test_build_stops_at_target_and_reports(tmp_path):
    out = tmp_path / "m.latkit-model"
    r = latkit(*build_args(tmp_path / "d", out, 0.05))
    assert r.returncode == 0, r.stderr
    report = json.loads((tmp_path / "m-report" / "build.json").read_text())
    assert report["reached"] and report["acc10"] >= 0.05
    accs = [h["acc10"] for h in report["rounds"]]
    assert accs[-1] >= 0.05 and all(a < 0.05 for a in accs[:-1])  # stopped at the first round that met it
    got = rows(tmp_path / "d")
    assert len(got) == report["rounds"][-1]["n_measured"] < 40
    assert {(g["role"], g["sampler"]) for g in got} <= {("heldout", "uniform(seed=0)"), ("round", "balanced(seed=0)"),
                                                        ("round", "weak-spots(seed=0)")}
    assert sum(g["role"] == "heldout" for g in got) == 8 and {g["role_round"] for g in got if g["role"] == "round"} \
        == set(range(len(report["rounds"])))
    assert (tmp_path / "m-report" / "learning_curve.png").stat().st_size > 1000
    arch = got[0]["arch"]
    p = latkit("predict", "--model", str(out), "--space", "nb201", "--arch", arch, "--std")
    assert p.returncode == 0, p.stderr
    mean, std = map(float, p.stdout.splitlines()[1].split("\t")[1:])
    assert mean > 0 and std > 0


def test_build_resumes_after_sigkill_without_measuring_again(tmp_path):
    data, out = tmp_path / "d", tmp_path / "m.latkit-model"
    p = subprocess.Popen([sys.executable, "-m", "latkit.collector.cli", "predictor", *build_args(data, out, 0.999)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and (not Store(data).exists() or len(rows(data)) < 12):
            time.sleep(0.5)
    finally:
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
    before = rows(data)
    assert len(before) >= 12
    r = latkit(*build_args(data, out, 0.999))
    assert r.returncode == 0, r.stderr
    after = rows(data)
    keys = [g["key"] for g in after]
    assert len(keys) == len(set(keys))  # nothing measured twice
    assert {g["key"] for g in before} <= set(keys)
    assert len(after) == 40  # the budget, held-out included, not reached target: every arch measured once
    report = json.loads((tmp_path / "m-report" / "build.json").read_text())
    assert report["n_train"] + report["n_heldout"] == 40 and not report["reached"]


def test_build_reads_only_its_own_rows(tmp_path):
    """Rows of the same archs measured by someone else (another tag) are never used: build measures its own."""
    data = tmp_path / "d"
    r = latkit(*build_args(data, tmp_path / "a.latkit-model", 0.05))
    assert r.returncode == 0, r.stderr
    files = sorted((data / "data").rglob("*.parquet"))
    for f in files:  # the same rows re-tagged as another collection's, with absurd latencies
        t = pq.read_table(f).to_pandas()
        t["sampler"], t["role"], t["latency_ms"] = "uniform(seed=0)", "", 1e6
        t.to_parquet(f.with_name("x" + f.name), index=False)
        f.unlink()
    r = latkit(*build_args(data, tmp_path / "b.latkit-model", 0.05))
    assert r.returncode == 0, r.stderr
    report = json.loads((tmp_path / "b-report" / "build.json").read_text())
    assert report["mape"] < 1000  # the absurd latencies were not read


def test_role_of_reads_rows_of_older_latkit():
    """A row's role is its role column; rows written before it (role null) kept it in sampler."""
    from latkit.collector.schema import ROLES, role_of
    assert role_of({"role": "round", "role_round": 3, "sampler": "weak-spots(seed=0)"}) == ("round", 3)
    assert role_of({"role": "", "role_round": None, "sampler": "adapt"}) == ("", None)  # a data row named so
    assert role_of({"role": None, "sampler": "build(round=12)"}) == ("round", 12)
    assert role_of({"role": None, "sampler": "build(heldout)"}) == ("heldout", None)
    assert role_of({"sampler": "adapt"}) == ("adapt", None) and role_of({"sampler": "retest"}) == ("retest", None)
    for sampler in ("balanced(seed=0)", "build(round=x)", "help", "", None):
        assert role_of({"role": None, "sampler": sampler}) == ("", None)
    assert {role_of({"sampler": s})[0] for s in ("build(heldout)", "build(round=1)", "adapt", "retest", "")} \
        == set(ROLES) - {"reference"}  # reference rows came after the role column: no older sampler names them


def test_build_resumes_from_rows_of_an_older_latkit(tmp_path):
    """Datasets written before the role column kept a row's role in `sampler` ("build(heldout)",
    "build(round=N)") and have no role columns: build reads those rows back as its own and measures nothing
    again."""
    import pyarrow as pa
    data = tmp_path / "d"
    r = latkit(*build_args(data, tmp_path / "a.latkit-model", 0.05))
    assert r.returncode == 0, r.stderr
    first = json.loads((tmp_path / "a-report" / "build.json").read_text())
    for f in sorted((data / "data").rglob("*.parquet")):
        t = pq.read_table(f, partitioning=None)
        old = ["build(heldout)" if role == "heldout" else f"build(round={n})"
               for role, n in zip(t["role"].to_pylist(), t["role_round"].to_pylist())]
        t = t.drop_columns(["role", "role_round"]).set_column(t.schema.get_field_index("sampler"), "sampler",
                                                              pa.array(old, pa.string()))
        pq.write_table(t, f.with_name("x" + f.name))
        f.unlink()
    before = rows(data)
    assert {g["role"] for g in before} == {None} and all(g["sampler"].startswith("build(") for g in before)
    r = latkit(*build_args(data, tmp_path / "b.latkit-model", 0.05))
    assert r.returncode == 0, r.stderr
    assert sorted(g["key"] for g in rows(data)) == sorted(g["key"] for g in before)  # nothing measured again
    second = json.loads((tmp_path / "b-report" / "build.json").read_text())
    assert [h["n_train"] for h in second["rounds"]] == [h["n_train"] for h in first["rounds"]]
    assert second["measure_s"] == 0


def test_adapt_on_local_scored_on_further_archs(tmp_path):
    from latkit.collector.api import measure_many, space_artifacts
    from latkit.collector.job import Settings
    from latkit.collector.samplers import sample
    from latkit.collector.spaces import get_space
    from latkit.predictor.models import load
    from scipy.stats import spearmanr
    out, data = tmp_path / "a.latkit-model", tmp_path / "d"
    args = ["adapt", "--device", "local", "--space", "nb201", "--n", "12", "--data", str(data), "--out", str(out),
            *FAST]
    r = latkit(*args)
    assert r.returncode == 0, r.stderr
    assert "expected spearman" in r.stdout
    first = rows(data)
    r = latkit(*args[:6], "16", *args[7:])
    assert r.returncode == 0, r.stderr
    second = rows(data)
    assert len(second) == 16 and {g["key"] for g in first} <= {g["key"] for g in second}, (first, second)
    assert {(g["role"], g["sampler"]) for g in second} == {("adapt", "diverse-bank(seed=0)")}
    seen = {g["arch"] for g in rows(data)}
    held = [a for a in sample(get_space("nb201"), 120, "uniform", 7) if a not in seen][:50]  # measured for the test
    s = Settings(repeats_min_count=3, repeats_min_s=0.01, repeats_max_s=0.02, rounds=1)
    ms = measure_many(space_artifacts("nb201", held), "local", "onnxruntime", s, tmp_path / "test-only")
    y = np.array([m.latency_ms for m in ms])
    pred = load(out).predict(held)
    assert spearmanr(pred, y).statistic > 0.5


@pytest.mark.parametrize("args, message", [
    (["build", "--space", "nb999", "--device", "local"], "nb999"),
    (["build", "--space", "nb201", "--device", "nowhere"], "nowhere"),
    (["build", "--space", "nb201", "--device", "local", "--target-acc", "1.5"], "--target-acc"),
    (["build", "--space", "nb201", "--device", "local", "--max-archs", "20", "--heldout", "10"], "--max-archs"),
    (["adapt", "--device", "local", "--space", "nb999"], "nb999"),
    (["adapt", "--device", "local", "--n", "2"], "--n"),
])
def test_live_commands_bad_inputs_one_line(tmp_path, args, message):
    r = latkit(*args, "--data", str(tmp_path / "d"), "--out", str(tmp_path / "m.latkit-model"))
    assert r.returncode == 2, r.stderr
    assert r.stderr.count("\n") == 1 and message in r.stderr and r.stderr.startswith("latkit: error:")
