"""scripts/bench_models.py and the --bench mode of scripts/replay_protocols.py: their plumbing (A/A twins,
the comparison figures, a whole tiny run on `local` with the peers, the replay of stored rounds), not their
timings."""
import json
import math
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, small_onnx_models

sys.path.insert(0, str(ROOT / "scripts"))
bench = pytest.importorskip("bench_models")
replay = pytest.importorskip("replay_protocols")


def test_twins_are_the_same_network_under_another_hash(artifacts, tmp_path):
    import onnxruntime as ort
    for fmt, art in artifacts.items():
        if fmt == "torchscript":
            continue
        t = bench.twin(art, tmp_path)
        assert t.sha256 != art.sha256 and t.arch == f"{art.arch}~aa" and t.format == fmt and t.inputs == art.inputs
        run_a, _, _ = bench._runner(art, {"onnx": "onnxruntime", "pt2": "torch", "tflite": "tflite"}[fmt])
        run_b, _, _ = bench._runner(t, {"onnx": "onnxruntime", "pt2": "torch", "tflite": "tflite"}[fmt])
        run_a(), run_b()
    s = ort.InferenceSession(str(bench.twin(artifacts["onnx"], tmp_path).path), providers=["CPUExecutionProvider"])
    assert s.get_inputs()[0].name == "input_0"


def test_figures_compare_passes_and_aa_twins():
    pa = {"seconds_per_model": 1.0, "load_1min": [1, 2], "ms": {"a": 1.0, "b": 2.0, "c": 4.0, "a~aa": 1.1}}
    pb = {"seconds_per_model": 3.0, "load_1min": [2, 3], "ms": {"a": 1.0, "b": 2.2, "c": 4.0, "a~aa": 0.9}}
    f = bench.figures(pa, pb, ["a", "b", "c"], ["a"], ("median",))
    c = f["statistics"]["median"]
    assert f["n"] == 3 and f["seconds_per_model"] == 2.0 and f["load_1min"] == [[1, 2], [2, 3]]
    assert c["spearman"] == pytest.approx(1.0) and c["max_rel_diff"] == pytest.approx(0.1)
    assert c["median_rel_diff"] == pytest.approx(0.0)
    assert f["aa"]["median"]["n"] == 2 and f["aa"]["median"]["max_rel_diff"] == pytest.approx(0.1)


def test_settings_parse_over_the_defaults():
    s = bench.parse_settings("rounds=8,repeats_max_s=0.5,ci_target=0.0001")
    assert (s.rounds, s.repeats_max_s, s.ci_target, s.threads) == (8, 0.5, 0.0001, 1)
    assert bench.parse_settings("") == bench.Settings()


def test_a_tiny_run_end_to_end(tmp_path, export_cache, fast):
    """Three small ONNX models (one of them with an A/A twin): two latkit passes on `local`, the peer and
    ONNX Runtime's profiling, figures for each timer and the datasets kept for the replay."""
    from latkit.collector.job import Artifact
    from rich.console import Console
    small_onnx_models(tmp_path, (4, 8, 16), export_cache)
    arts = [Artifact.from_file(tmp_path / f"w{w}.onnx", arch=f"w{w}") for w in (4, 8, 16)]
    r = bench.run_set("zoo", "onnxruntime", arts, ["w8"], fast, 2, tmp_path / "keep", True, Console(quiet=True),
                      reference=True)
    assert r["aa"] == ["w8"] and r["models"] == ["w4", "w8", "w16"]
    assert set(r["timers"]) == {"latkit", "torch.utils.benchmark", "onnxruntime profiling"}
    lk = r["timers"]["latkit"]
    assert lk["n"] == 3 and set(lk["statistics"]) == set(bench.STATS) and lk["aa"]["latency_ms"]["n"] == 2
    assert all(0 < x for x in lk["latency_ms_range"]) and lk["stopped_by"]
    ref = lk["reference"]  # each pass checked the reference first and last
    assert ref["checks"] == [2, 2] and ref["shift"] == pytest.approx(ref["ms"][1] / ref["ms"][0] - 1)
    assert 0 <= ref["aa_floor"] < 0.5 and -0.5 < lk["statistics"]["latency_ms"]["shift"] < 0.5
    for name in ("torch.utils.benchmark", "onnxruntime profiling"):
        assert r["timers"][name]["n"] == 3 and r["timers"][name]["aa"]["median"]["n"] == 2
    for k in (1, 2):
        rows = replay.load(tmp_path / "keep" / f"zoo-onnxruntime-{k}")
        assert set(rows) == {"w4", "w8", "w16", "w8~aa"}
        for row in rows.values():  # the replay recovers every round of every stored row
            assert len(replay.rounds_of(row)) == row["rounds"]
    json.dumps(r)


def test_replay_ci_and_take_follow_the_agent():
    from latkit.agents.agent import quantile_ci_rel
    rng = np.random.default_rng(0)
    x = rng.gamma(4, 1, 200) + 10
    for n in (5, 6, 40, 200):
        for q in (0.1, 0.5):
            want = quantile_ci_rel(list(x[:n]), q)
            got = replay.ci_rel(np.sort(x[:n]), q)
            assert (math.isinf(want) and math.isinf(got)) or got == pytest.approx(want)
    x = np.full(100, 10.0)  # 10 ms runs: a 0.1 s round is 10 runs, a min count of 20 wins
    cs = np.cumsum(x)
    P = replay.Protocol
    assert replay._take(x, cs, P("p10", 1, 3, 0.1, 0.1), 0.1) == 10
    assert replay._take(x, cs, P("p10", 1, 20, 0.1, 0.1), 0.1) == 20
    assert replay._take(x, cs, P("p10", 1, 3, 0.05, 0.5, ci=0.01), 0.1) == 6  # constant: the CI is 0 at once
    assert replay._take(x, cs, P("p10", 1, 3, 2.0, 2.0), 0.1) == 101  # the recording ended first


def test_replay_rounds_statistics_and_adaptive_rounds():
    P = replay.Protocol
    steady = [(np.full(20, 10.0), np.cumsum(np.full(20, 10.0))) for _ in range(8)]
    moved = [(np.full(20, v), np.cumsum(np.full(20, v))) for v in (10.0, 13.0, 10.0, 10.0, 10.0, 10.0, 10.0, 10.0)]
    base = P("median", 2, 3, 0.05, 0.05, max_rounds=6, spread=0.05)
    assert replay.replay_row(steady, base)["rounds"] == 2
    r = replay.replay_row(moved, base)
    assert r["rounds"] == 6 and r["value"] == 10.0  # rounds added while the host moved; the median ignores one
    assert replay.replay_row(moved, P("mean_round_median", 2, 3, 0.05, 0.05))["value"] == pytest.approx(11.5)
    assert replay.replay_row(moved, P("min_round_median", 2, 3, 0.05, 0.05))["value"] == 10.0
    assert replay.replay_row(steady, P("iqm", 4, 3, 0.05, 0.05))["timed_s"] == pytest.approx(0.2)
    assert all(s in replay.STATISTICS_R for s in ("p10", "median", "iqm", "trim10"))


def test_thread_cpu_timer_gives_both_clocks_for_every_file_and_twin(tmp_path, export_cache):
    from latkit.collector.job import Artifact
    from rich.console import Console
    small_onnx_models(tmp_path, (4, 8), export_cache)
    arts = [Artifact.from_file(tmp_path / f"w{w}.onnx", arch=f"w{w}") for w in (4, 8)]
    f = bench.cpu_set("zoo", "onnxruntime", arts, ["w4"], 0.04, tmp_path / "keep", Console(quiet=True))
    assert set(f["statistics"]) == {"cpu median", "cpu p10", "wall median", "wall p10"} and f["n"] == 2
    assert f["aa"]["cpu median"]["n"] == 2
    p = bench.cpu_pass(arts, "onnxruntime", 0.02, rounds=2)
    for a in ("w4", "w8"):  # CPU time of the calling thread never exceeds the wall clock by much
        assert 0 < p["stats"]["cpu median"][a] <= p["stats"]["wall median"][a] * 1.05 + 0.01


def test_bench_drift_levels_correlations_and_pairs():
    """scripts/bench_drift.py's figures on made-up passes: a network that moves with the host (+2 % in pass 2)
    correlates +1 with the passes' levels, one that does not correlates ~0; pairs divide out their shift."""
    drift = pytest.importorskip("bench_drift")
    ms = {"fast": [1.0, 1.02, 1.0], "slow": [10.0, 10.2, 10.0], "still": [5.0, 5.0, 5.01], "fast~aa": [1.001, 1.02, 1.0]}
    passes = [{"ms": {m: v[k] for m, v in ms.items()}, "checks": [[2.0, 2.0], [2.0, 2.002]], "seconds": 1.0,
               "reference_drift": 0.0, "warned": False} for k in range(3)]
    f = drift.figures(passes, ["fast", "slow", "still"], ["fast~aa"])
    assert f["pass_level"][1] > f["pass_level"][0] and f["models"]["fast"]["corr"] == pytest.approx(1.0)
    assert abs(f["models"]["still"]["corr"]) < 0.6 and f["reference_ms"] == pytest.approx([2.0005] * 3)
    pair = f["pairs"]["0-1"]
    assert pair["shift"] == pytest.approx(0.02) and pair["median_rel_diff_less_shift"] == pytest.approx(0.0, abs=1e-9)
    assert pair["aa_median"] == pytest.approx(0.0005, rel=0.01) and pair["reference_shift"] == 0.0
    sp = f["spread"]["all"]["models"]["fast"]  # moves 2 % with its twin: between passes, not within
    assert sp["between_sd"] > 0.01 > 0.001 > sp["within_sd"] and f["spread"]["all"]["passes"] == 3
    for k, p in enumerate(passes):
        p["aslr"] = "on" if k % 2 == 0 else "off"
    assert drift.figures(passes, ["fast"], ["fast~aa"])["spread"]["on"]["passes"] == 2


def test_bench_drift_aslr_reaches_the_processes_it_starts():
    """`--aslr alternate` turns randomisation off for the agent through the personality an exec'd child inherits."""
    drift = pytest.importorskip("bench_drift")
    read = ["cat", "/proc/self/personality"]
    before = subprocess.run(read, capture_output=True, text=True, check=True).stdout
    with drift.aslr(False):
        off = subprocess.run(read, capture_output=True, text=True, check=True).stdout
        with drift.aslr(True):
            on = subprocess.run(read, capture_output=True, text=True, check=True).stdout
        assert subprocess.run(read, capture_output=True, text=True, check=True).stdout == off  # restored
    assert int(off, 16) & drift.ADDR_NO_RANDOMIZE and not int(on, 16) & drift.ADDR_NO_RANDOMIZE
    assert subprocess.run(read, capture_output=True, text=True, check=True).stdout == before


def test_bench_drift_one_pass_on_local(tmp_path, export_cache):
    """One pass of three small files with the reference every half second: their latencies and >= 2 checks."""
    drift = pytest.importorskip("bench_drift")
    from latkit.collector import Settings
    from latkit.collector.job import Artifact
    small_onnx_models(tmp_path, (4, 8, 16), export_cache)
    files = [Artifact.from_file(tmp_path / f"w{w}.onnx", arch=f"w{w}") for w in (4, 8, 16)]
    p = drift.one_pass(files, tmp_path / "p0", 0.5, Settings(rounds=2, repeats_min_s=0.05, repeats_max_s=0.1))
    assert set(p["ms"]) == {"w4", "w8", "w16"} and all(v > 0 for v in p["ms"].values())
    assert len(p["checks"]) >= 2 and p["reference_drift"] is not None and p["seconds"] > 0
