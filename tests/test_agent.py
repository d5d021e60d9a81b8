"""The agent as devices run it: a subprocess speaking JSON lines, stdlib-only, Python >= 3.8."""
import ast
import dataclasses
import glob
import importlib.util
import itertools
import json
import os
import shutil
import subprocess
import time

import pytest

from latkit.collector import Settings
from conftest import AGENT


def load_agent_module():
    spec = importlib.util.spec_from_file_location("latkit_agent", AGENT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


FRAME = "@@latkit "


def reply(line):
    assert line.startswith(FRAME), line
    return json.loads(line[len(FRAME):])


def ask(proc, req):
    proc.stdin.write(json.dumps(req) + "\n")
    proc.stdin.flush()
    return reply(proc.stdout.readline())


def test_protocol_round_trip(agent_proc, artifacts, tmp_path):
    r = ask(agent_proc, {"id": 1, "op": "ping"})
    assert r["ok"] and r["id"] == 1 and r["result"]["pid"] == agent_proc.pid

    probe = ask(agent_proc, {"id": 2, "op": "probe"})["result"]
    assert probe["cpu_count"] >= 1 and probe["memory_mb"] > 0 and probe["kernel"]
    assert {"onnxruntime", "tflite", "torch"} <= set(probe["runtimes"])
    assert probe["runtimes"]["tflite"]["module"] == "ai_edge_litert"

    shutil.copy(artifacts["onnx"].path, tmp_path / "wd" / "models" / artifacts["onnx"].name)
    has = ask(agent_proc, {"id": 3, "op": "has", "models": [artifacts["onnx"].name, "nope.onnx"]})
    assert has["result"]["present"] == [artifacts["onnx"].name]

    settings = dict(Settings().agent_settings(), repeats_min_s=0.05, repeats_max_s=0.2, warmup_min_s=0.01)
    r = ask(agent_proc, {"id": 4, "op": "measure", "model": artifacts["onnx"].name, "runtime": "onnxruntime",
                         "settings": settings})
    assert r["error"]["kind"] == "bad_request" and "lease" in r["error"]["message"]  # no timing without the lease
    assert ask(agent_proc, {"id": 4, "op": "lease", "holder": {"pid": 1}})["result"]["acquired"]
    r = ask(agent_proc, {"id": 4, "op": "measure", "model": artifacts["onnx"].name, "runtime": "onnxruntime",
                         "settings": settings})
    assert r["ok"], r
    res = r["result"]
    assert len(res["samples_ms"]) >= settings["repeats_min_count"] and all(s > 0 for s in res["samples_ms"])
    assert sum(res["samples_ms"]) >= 50.0  # the minimum total time (0.05 s) was honoured
    assert res["inputs"] == [{"name": "input_0", "shape": [1, 3, 32, 32], "dtype": "float32"}]
    assert res["warmup"] >= 2 and set(res["telemetry_before"]) == {"freq_mhz", "temp_c", "load1"}
    assert res["stopped_by"] in ("ci_target", "max_time", "max_count") and res["ci_rel"] > 0
    assert res["applied"]["threads"] == 1 and res["applied"]["cores"] == sorted(os.sched_getaffinity(0))
    assert res["started_at"] < res["finished_at"] and res["load_s"] > 0 and res["first_ms"] > 0

    assert ask(agent_proc, {"id": 5, "op": "nope"})["error"]["kind"] == "bad_request"
    agent_proc.stdin.write("this is not json\n")
    agent_proc.stdin.flush()
    assert reply(agent_proc.stdout.readline())["error"]["kind"] == "bad_request"
    r = ask(agent_proc, {"id": 6, "op": "measure", "model": "missing.onnx", "runtime": "onnxruntime"})
    assert r["error"]["kind"] == "model_not_found"
    r = ask(agent_proc, {"id": 7, "op": "measure", "model": artifacts["onnx"].name, "runtime": "onnxruntime",
                         "settings": {"thread": 2}})
    assert r["error"]["kind"] == "bad_request" and "thread" in r["error"]["message"]

    assert ask(agent_proc, {"id": 8, "op": "shutdown"})["ok"]
    assert agent_proc.wait(timeout=10) == 0


def test_agent_parses_as_python_38():
    ast.parse(AGENT.read_text(), feature_version=(3, 8))
    tree = ast.parse(AGENT.read_text())
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert not {"collector", "predictor", "numpy", "psutil", "torch"} & imported  # stdlib only at import time


def python38():
    """A working Python 3.8 (pyenv's shims exist even where that version is not selected)."""
    for cand in [shutil.which("python3.8")] + sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.8*/bin/python3.8"))):
        if cand and subprocess.run([cand, "-c", "pass"], capture_output=True).returncode == 0:
            return cand
    return None


@pytest.mark.skipif(python38() is None, reason="no python3.8 on this machine")
def test_agent_runs_on_bare_python_38(tmp_path):
    """A device with nothing but Python 3.8: ping and probe work, measure says what to install."""
    out = subprocess.run([python38(), str(AGENT), "--workdir", str(tmp_path)], text=True, capture_output=True,
                     input='{"id":1,"op":"probe"}\n{"id":2,"op":"lease"}\n{"id":3,"op":"measure",'
                               '"model":"/etc/hostname","runtime":"onnxruntime"}\n', timeout=60)
    probe, lease, measure = [reply(line) for line in out.stdout.splitlines()]
    assert lease["result"]["acquired"] or lease["result"]["holder"]
    assert probe["ok"] and probe["result"]["python"].startswith("3.8")
    assert measure["error"]["kind"] == "runtime_missing" and "pip install" in measure["error"]["message"]


def test_settings_defaults_match_agent():
    agent = load_agent_module()
    host = Settings().agent_settings()
    assert host == agent.DEFAULT_SETTINGS
    assert {f.name for f in dataclasses.fields(Settings)} == set(agent.DEFAULT_SETTINGS) | {"runtime", "rounds",
                                                                                            "input_shapes"}


def test_protocol_minimums_and_caps():
    """Timing a real 1 ms sleep: minimums hold, the caps stop a run that never reaches the CI target."""
    agent = load_agent_module()
    s = dict(agent.DEFAULT_SETTINGS, warmup_min_count=3, warmup_min_s=0.0, repeats_min_count=15,
             repeats_min_s=0.0, repeats_max_count=40, ci_target=1e-9)
    t = agent.time_callable(agent.cpu_timer(lambda: time.sleep(0.001)), s)
    assert t["warmup"] == 3 and len(t["samples_ms"]) == 40 and min(t["samples_ms"]) >= 1.0
    assert t["stopped_by"] == "max_count" and t["first_ms"] >= 1.0

    # min time beats the time cap: it stops at the first run that has both 5 runs and 50 ms (a loaded host may
    # reach 50 ms in fewer runs, so the count is checked against the samples themselves)
    s.update(repeats_min_count=5, repeats_min_s=0.05, repeats_max_count=10000, repeats_max_s=0.01, ci_target=1e-9)
    t = agent.time_callable(agent.cpu_timer(lambda: time.sleep(0.001)), s)
    reached = next(n for n, total in enumerate(itertools.accumulate(t["samples_ms"]), 1) if total >= 50.0)
    assert len(t["samples_ms"]) == max(5, reached) and t["stopped_by"] == "max_time"
    # ... but not the count cap, which bounds every reply (the host refuses more samples than it sent as the cap)
    s.update(repeats_max_count=10, repeats_max_s=60.0)
    t = agent.time_callable(agent.cpu_timer(lambda: time.sleep(0.001)), s)
    assert len(t["samples_ms"]) == 10 and sum(t["samples_ms"]) < 50.0 and t["stopped_by"] == "max_count"

    s.update(repeats_min_count=20, repeats_min_s=0.0, repeats_max_count=10000, repeats_max_s=0.1, ci_target=1.0)
    t = agent.time_callable(agent.cpu_timer(lambda: time.sleep(0.001)), s)
    assert len(t["samples_ms"]) < 40 and t["stopped_by"] == "ci_target"  # a loose target stops soon

    s.update(repeats_max_s=0.05, ci_target=1e-9)
    t = agent.time_callable(agent.cpu_timer(lambda: time.sleep(0.001)), s)
    assert t["stopped_by"] == "max_time" and t["ci_rel"] > 1e-9


@pytest.mark.parametrize("q", [0.5, 0.1])
def test_quantile_ci_shrinks_with_repeats_and_ignores_outliers(q):
    """The stopping statistic (the CI of latency_ms's quantile) narrows as samples are added, whatever the
    spread of the samples: that is what lets a noisy host stop before the cap (a CV target never would)."""
    import random
    agent = load_agent_module()
    rng = random.Random(0)
    noisy = [1.0 + abs(rng.gauss(0, 0.2)) for _ in range(4000)]
    widths = [agent.quantile_ci_rel(noisy[:n], q) for n in (50, 200, 800, 3200)]
    assert widths == sorted(widths, reverse=True) and widths[-1] < widths[0] / 4
    steady = [1.0 + 0.001 * (i % 5) for i in range(200)]
    assert agent.quantile_ci_rel(steady + [50.0, 80.0], q) < 0.01  # two preempted runs do not inflate it
    assert agent.quantile_ci_rel([1.0, 2.0], q) == float("inf")
    xs = sorted(noisy[:101])
    assert agent.quantile(xs, q) == pytest.approx(float(__import__("numpy").quantile(xs, q)))


def test_timing_stops_on_the_precision_of_the_statistic_the_host_stores():
    """The agent's CI quantile per accelerator is the statistic the host makes latency_ms (they cannot share
    code: the agent imports nothing of latkit). A right-skewed host (slow spells) pins the p10 down sooner
    than the median."""
    import random
    from latkit.collector.measurement import LATENCY_STATISTIC
    agent = load_agent_module()
    assert {a: {"p10": 0.1, "median": 0.5}[st] for a, st in LATENCY_STATISTIC.items()} == agent.CI_QUANTILE
    rng = random.Random(1)
    skewed = [1.0 + rng.expovariate(1 / 0.05) for _ in range(400)]
    assert agent.quantile_ci_rel(skewed, 0.1) < agent.quantile_ci_rel(skewed, 0.5)


def test_sessions_are_kept_across_requests_and_evicted_least_recently_used(tmp_path, artifacts):
    """A second request on the same file and settings reuses the loaded session (and says so, carrying the
    fresh load's load time and first inference); other settings, or a file replaced in place, load afresh;
    with --max-sessions 1 the least recently used session goes. torch's process-wide thread count is set
    again for a reused session."""
    import sys
    wd = tmp_path / "wd"
    proc = subprocess.Popen([sys.executable, str(AGENT), "--workdir", str(wd), "--lease", str(tmp_path / "lease"),
                             "--max-sessions", "2"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    try:
        assert ask(proc, {"id": 0, "op": "lease"})["result"]["acquired"]
        onnx, pt2 = wd / "models" / "m.onnx", wd / "models" / "m.pt2"
        shutil.copy(artifacts["onnx"].path, onnx)
        shutil.copy(artifacts["pt2"].path, pt2)
        base = dict(Settings().agent_settings(), repeats_min_s=0.02, repeats_max_s=0.05, warmup_min_s=0.01)

        def run(model, runtime, **s):
            r = ask(proc, {"id": 1, "op": "measure", "model": model.name, "runtime": runtime,
                           "settings": dict(base, **s)})
            assert r["ok"], r
            return r["result"]
        first = run(onnx, "onnxruntime")
        again = run(onnx, "onnxruntime")
        assert not first["session_reused"] and again["session_reused"]
        assert (again["load_s"], again["first_ms"]) == (first["load_s"], first["first_ms"]) and first["load_s"] > 0
        assert not run(onnx, "onnxruntime", threads=2)["session_reused"]  # another session: cache holds 2 now
        assert run(onnx, "onnxruntime", seed=1, cores=[0])["session_reused"] is False  # evicts threads=1
        assert run(onnx, "onnxruntime", seed=1)["session_reused"]  # cores are not part of a session
        assert not run(onnx, "onnxruntime")["session_reused"]  # was evicted (least recently used)
        t1 = run(pt2, "torch")
        t2 = run(pt2, "torch", threads=2)
        t1b = run(pt2, "torch")
        assert t1b["session_reused"] and (t1["applied"]["threads"], t2["applied"]["threads"],
                                          t1b["applied"]["threads"]) == (1, 2, 1)
        time.sleep(0.01)
        shutil.copy(artifacts["onnx"].path, tmp_path / "copy.onnx")
        os.replace(tmp_path / "copy.onnx", onnx)  # the same name, another file: never the old session
        assert not run(onnx, "onnxruntime")["session_reused"]
    finally:
        proc.stdin.close()
        proc.wait(timeout=30)


def test_session_memory_bound_evicts(tmp_path):
    """The memory bound: sessions whose load grew the RSS past the bound are evicted, oldest first, never the
    one just loaded."""
    agent = load_agent_module()
    cache = agent.Sessions(max_count=10, memory_fraction=0.25)
    cache.max_mb = 100.0
    for i, mb in enumerate((40, 40, 40)):
        e = agent.Session({}, 0.1)
        e.rss_mb = mb
        cache.put(i, e)
    assert list(cache.entries) == [1, 2]
    big = agent.Session({}, 0.1)
    big.rss_mb = 500
    cache.put("big", big)
    assert list(cache.entries) == ["big"]
    off = agent.Sessions(max_count=0)  # --max-sessions 0: every request loads afresh
    off.put("x", agent.Session({}, 0.1))
    assert not off.entries
