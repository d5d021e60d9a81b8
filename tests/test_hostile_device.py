"""A device that lies: a real agent process (tests/hostile_agent.py: the real agent's loop, framing and lease)
speaking the real protocol with bad content, run through the CLI as a registered local device whose `python`
is a wrapper. Every hostile reply must end, fast, in one `latkit: error:` line on stderr, the right exit code,
the right stored row (a `protocol_error` row for the job in flight, the device dropped), and a host whose peak
memory stays near that of an honest run, whatever the device sends (a never-ending line, 10**7 samples, a
100 MB string...)."""
import json
import os
import subprocess
import sys
import time

import pytest

from latkit.collector import Store
from conftest import ROOT

HOSTILE = ROOT / "tests" / "hostile_agent.py"
GROWTH_KB = 100 * 1024  # the host's peak RSS may exceed an honest run's by this much, at most
FAST_S = 30  # every row ends well within this (the job timeout is 600 s: a wait for it would show)
# Runs the CLI and writes the process's peak RSS (KB) to $PEAK, however main ends.
RUN = ("import os, resource, sys\nfrom latkit.collector.cli import main\ntry:\n    code = main(sys.argv[1:])\n"
       "finally:\n    open(os.environ['PEAK'], 'w').write(str(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss))\n"
       "sys.exit(code)")


def wrapper(tmp, mode: str) -> str:
    """A device `python` that runs the hostile agent in `mode` with the agent path and flags the host gives."""
    path = tmp / f"python-{mode}"
    path.write_text(f'#!/bin/sh\nexec {sys.executable} {HOSTILE} {mode} "$@"\n')
    path.chmod(0o755)
    return str(path)


def registry(tmp, modes: dict) -> str:
    """A registry of local devices, name -> hostile mode, each with its own workdir and lease."""
    lines = []
    for name, mode in modes.items():
        lines += [f"[devices.{name}]", 'transport = "local"', f'python = "{wrapper(tmp, mode)}"',
                  f'workdir = "{tmp / name}"', f'lease = "{tmp / (name + ".lease")}"', ""]
    (tmp / "devices.toml").write_text("\n".join(lines))
    return str(tmp / "devices.toml")


def models(tmp, n: int):
    """n distinct model files (the fake agent times nothing, so any bytes with an .onnx name will do)."""
    (tmp / "models").mkdir(exist_ok=True)
    for i in range(n):
        (tmp / "models" / f"m{i}.onnx").write_bytes(b"not a model %d" % i)
    return tmp / "models"


def latkit(tmp, *args):
    """Run the CLI; (exit code, stdout, stderr lines, seconds, peak RSS KB)."""
    env = dict(os.environ, PEAK=str(tmp / "peak"))
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", RUN, *map(str, args)], capture_output=True, text=True, timeout=300,
                       cwd=ROOT, env=env)
    return r.returncode, r.stdout, r.stderr.splitlines(), time.perf_counter() - t0, int((tmp / "peak").read_text())


def rows(out) -> list:
    if not (out / "data").exists():
        return []
    t = Store(out).read(columns=["arch", "device", "status", "error_kind", "error", "runtime_version", "samples_ms"])
    return sorted(t.to_pylist(), key=lambda r: (r["device"], r["arch"]))


@pytest.fixture(scope="module")
def honest_peak(tmp_path_factory):
    """The host's peak RSS measuring one model on an honest (fake) device: the baseline of every row."""
    tmp = tmp_path_factory.mktemp("honest")
    code, _, err, _, peak = latkit(tmp, "measure", models(tmp, 1) / "m0.onnx", "--device", "dev", "--registry",
                                   registry(tmp, {"dev": "ok"}), "--out", tmp / "out", "-q", "--rounds", "1")
    assert code == 0 and err == [] and [r["status"] for r in rows(tmp / "out")] == ["ok"]
    return peak


LINE = "a line of more than 1,688,576 bytes (the bound of a reply to measure)"  # 1 MiB + 64 B x 10,000 samples
# mode -> (the error_kind of the stored row, or None for no row; what the one stderr line must say)
MEASURE = {
    "endless": ("protocol_error", LINE),
    "noise_endless": ("protocol_error", LINE),
    "samples_1e7": ("protocol_error", LINE),
    "huge_version": ("protocol_error", LINE),
    "over_cap": ("protocol_error", "it holds 10001 samples, more than the cap of 10000 it was sent"),
    "nan": ("protocol_error", "samples_ms[1] = NaN, not a finite latency > 0 ms"),
    "inf": ("protocol_error", "samples_ms[1] = Infinity, not a finite latency > 0 ms"),
    "negative": ("protocol_error", "samples_ms[1] = -1.0, not a finite latency > 0 ms"),
    "zero": ("protocol_error", "samples_ms[0] = 0.0, not a finite latency > 0 ms"),
    "string": ("protocol_error", 'samples_ms[0] = "1.0", not a finite latency > 0 ms'),
    "cpu_short": ("protocol_error", "cpu_samples_ms = [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0,... (55 more "
                                    "characters), not a list of 20 CPU times (one per sample)"),
    "cpu_long": ("protocol_error", "not a list of 20 CPU times (one per sample)"),
    "cpu_nan": ("protocol_error", "cpu_samples_ms[1] = NaN, not a finite CPU time >= 0 ms"),
    "cpu_negative": ("protocol_error", "cpu_samples_ms[1] = -1.0, not a finite CPU time >= 0 ms"),
    "cpu_string": ("protocol_error", 'cpu_samples_ms[0] = "1.0", not a finite CPU time >= 0 ms'),
    "bool": ("protocol_error", "samples_ms[0] = true, not a finite latency > 0 ms"),
    "missing": ("protocol_error", "samples_ms = null, not a list of latencies"),
    "long_version": ("protocol_error", "result.runtime_version has 100000 characters (at most 4096)"),
    "escape_version": ("protocol_error", r"runtime_version = 1.0\x1b[2J, which has control characters"),
    "bad_time": ("protocol_error", 'started_at = "yesterday", not a UTC time'),
    "bad_telemetry": ("protocol_error", "telemetry_before = [1, 2], not an object"),
    "bad_stop": ("protocol_error", 'stopped_by = "whenever", not one of ci_target, max_count, max_time'),
    "warmup_string": ("protocol_error", 'warmup = "five", not a whole number >= 0'),
    "non_utf8": ("protocol_error", r"it is not UTF-8 (at byte"),
    "wrong_id": ("protocol_error", "its id is 1004, not 4"),  # ping, probe, lease, then measure
    "array": ("protocol_error", "it is a JSON list, not an object ([1, 2, 3])"),
    "number": ("protocol_error", "it is a JSON int, not an object (42)"),
    "deep": ("protocol_error", "it is nested too deep to parse"),
    "result_list": ("protocol_error", "its result is [1.0], not an object"),
    "bad_kind": ("protocol_error", 'its error is of unknown kind "rm -rf /"'),
    "forever": ("protocol_error", "broke the agent protocol"),
    "escape_error": ("runtime_error", r"runtime_error: boom\nsecond line\x1b]0;pwned\x07\x1b[2J\x1b[31mred"),
    "deep_probe": (None, "broke the agent protocol in its reply to probe: result.extra.a.a.a.a.a.a.a.a nested "
                         "more than 8 levels deep"),
}


@pytest.mark.parametrize("mode", sorted(MEASURE))
def test_hostile_reply_to_measure(mode, tmp_path, honest_peak):
    """`latkit measure` against a device sending MODE: exit 1 in seconds, one line on stderr saying what the
    device sent wrong (control characters shown escaped), the stored row, and the host's memory bounded."""
    kind, says = MEASURE[mode]
    out = tmp_path / "out"
    code, stdout, err, took, peak = latkit(
        tmp_path, "measure", models(tmp_path, 1) / "m0.onnx", "--device", "dev", "--out", out, "-q",
        "--registry", registry(tmp_path, {"dev": mode}), "--rounds", "2" if mode == "forever" else "1")
    assert code == 1 and len(err) == 1 and err[0].startswith("latkit: error: "), (code, err)
    assert says in err[0], err[0]
    assert "\x1b" not in err[0] + stdout and "\x07" not in err[0]
    if kind == "protocol_error":
        assert err[0].startswith("latkit: error: dev broke the agent protocol") and "dropped from this run" in err[0]
    assert [r["error_kind"] for r in rows(out)] == ([kind] if kind else [])
    assert took < FAST_S, f"{mode}: {took:.1f} s"
    assert peak - honest_peak < GROWTH_KB, f"{mode}: peak RSS {peak} KB, honest run {honest_peak} KB"


def test_model_error_row_fails_on_stderr_and_json_still_prints_the_row(tmp_path):
    """A model error row from `measure` is exit 1 and one `latkit: error:` line on stderr (nothing on stdout);
    with --json the row document is still printed on stdout."""
    reg, model = registry(tmp_path, {"dev": "escape_error"}), models(tmp_path, 1) / "m0.onnx"
    code, stdout, err, _, _ = latkit(tmp_path, "measure", model, "--device", "dev", "--registry", reg, "--out",
                                     tmp_path / "out", "-q", "--rounds", "1")
    assert code == 1 and stdout == "" and len(err) == 1
    assert "m0.onnx on dev/onnxruntime (threads=1): runtime_error: boom" in err[0] and "--force" in err[0]
    code, stdout, err, _, _ = latkit(tmp_path, "measure", model, "--device", "dev", "--registry", reg, "--out",
                                     tmp_path / "out", "-q", "--rounds", "1", "--force", "--json")
    doc = json.loads(stdout)
    assert code == 1 and len(err) == 1 and doc["status"] == "error" and doc["error_kind"] == "runtime_error"
    assert doc["error"].startswith("boom\nsecond line\x1b]0;")  # the data is kept as sent; only display escapes


def test_collect_keeps_what_was_measured_and_goes_on_with_other_devices(tmp_path, honest_peak):
    """Three models on two devices: `liar` answers two measure requests well and then sends a NaN, `honest`
    answers all. liar's two rows are kept, the third job is a protocol_error row, liar is dropped with a
    message naming it and what it sent; honest's three rows are all stored; exit 1, one stderr line."""
    out = tmp_path / "out"
    code, stdout, err, took, peak = latkit(
        tmp_path, "collect", "--models", models(tmp_path, 3), "--devices", "liar,honest", "--out", out, "-q",
        "--registry", registry(tmp_path, {"liar": "good_then_nan", "honest": "ok"}), "--rounds", "1",
        "--retries", "0", "--no-reference")  # liar counts measure replies: the reference's would come first
    assert code == 1 and len(err) == 1 and err[0].startswith("latkit: error: 1 device(s) failed (liar) and 1 "
                                                             "model(s) failed"), err
    got = [(r["device"], r["status"], r["error_kind"]) for r in rows(out)]
    assert sorted(got) == [("honest", "ok", "")] * 3 + [("liar", "error", "protocol_error")] + [("liar", "ok", "")] * 2
    assert "liar broke the agent protocol in its reply to measure: samples_ms[1] = NaN" in " ".join(stdout.split())
    assert took < FAST_S and peak - honest_peak < GROWTH_KB


def test_agent_exiting_mid_reply_is_a_broken_link_not_a_row(tmp_path):
    """A reply cut short by the agent's exit is a transport failure (retried, here --retries 0): no row."""
    code, stdout, err, took, _ = latkit(
        tmp_path, "collect", "--models", models(tmp_path, 1), "--devices", "dev", "--out", tmp_path / "out", "-q",
        "--registry", registry(tmp_path, {"dev": "exit_mid_reply"}), "--rounds", "1", "--retries", "0")
    assert code == 1 and len(err) == 1 and "1 device(s) failed (dev)" in err[0]
    assert "agent on dev exited during 'measure'" in " ".join(stdout.split())
    assert rows(tmp_path / "out") == [] and took < FAST_S


def test_a_link_that_breaks_after_every_round_still_finishes(tmp_path):
    """--retries counts failures in a row: an agent that answers one round and dies on the next makes progress
    between its deaths, so 2 models x 2 rounds (4 restarts) finish with --retries 1 (gave up after 2 before)."""
    code, stdout, err, took, _ = latkit(
        tmp_path, "collect", "--models", models(tmp_path, 2), "--devices", "dev", "--out", tmp_path / "out", "-q",
        "--registry", registry(tmp_path, {"dev": "exit_every_second"}), "--rounds", "2", "--retries", "1",
        "--no-reference")
    assert code == 0 and err == [], (err, stdout)
    got = Store(tmp_path / "out").read(columns=["status", "rounds"]).to_pylist()
    assert got == [{"status": "ok", "rounds": 2}] * 2


def test_escape_sequences_in_probe_fields_are_shown_escaped(tmp_path):
    """A cpu_model with a line break, a terminal retitle, a screen clear and a colour: `device add` (over
    loopback ssh) prints it escaped on one line; `device show` and `device list` print nothing raw either."""
    from latkit.collector.loopback import new_fleet_dir, start_fleet, stop_fleet
    base = new_fleet_dir()
    try:
        dev, = start_fleet(base, [wrapper(tmp_path, "escape_probe")])
        reg = tmp_path / "devices.toml"
        code, stdout, err, _, _ = latkit(tmp_path, "device", "add", "evil", "--host", dev.host, "--port", dev.port,
                                         "--user", dev.user, "--key", dev.key, "--python", dev.python,
                                         "--workdir", dev.workdir, "--trust-host-key", "--registry", reg)
        assert code == 0 and err == [], err
        for args in (["device", "show", "evil"], ["device", "list", "--no-check"]):
            code, shown, err, _, _ = latkit(tmp_path, *args, "--registry", reg)
            stdout += shown
            assert code == 0 and err == []
        assert stdout.count(r"Evil\nCPU \x1b]0;pwned\x07\x1b[2J") == 1 and "\x1b" not in stdout and "\x07" not in stdout
    finally:
        stop_fleet(base, remove=True)


def test_an_honest_reply_without_a_ci_yet_is_kept():
    """Under 6 samples the agent reports ci_rel = +inf ("no CI yet"): an honest reply, not a protocol breach;
    -inf, NaN and +inf anywhere else still are."""
    import copy
    from latkit.collector import protocol
    fields = {"settings": {"repeats_max_count": 10}}
    ok = {"samples_ms": [1.0, 1.1, 0.9], "warmup": 1, "runtime_version": "1.0", "agent_version": "0.3.3",
          "inputs": [], "telemetry_before": {}, "telemetry_after": {}, "ci_rel": float("inf")}
    protocol.check_result("measure", copy.deepcopy(ok), fields)
    for key, value in (("ci_rel", float("-inf")), ("ci_rel", float("nan")), ("peak_rss_mb", float("inf"))):
        with pytest.raises(protocol.Bad):
            protocol.check_result("measure", {**ok, key: value}, fields)
