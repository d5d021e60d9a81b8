"""The agent's protocol under random input (hypothesis): random bytes, random JSON and request-shaped JSON
with random fields, all sent to one real agent subprocess. Every line gets exactly one framed reply, in
time; only ping, probe, has and lease can succeed; every failure is a classified kind (never agent_error,
which would mean an exception the agent did not foresee); and the agent answers a ping after each input."""
import json
import os
import queue
import subprocess
import sys
import threading

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from latkit.collector.measurement import ERROR_KINDS
from conftest import AGENT
from test_agent import load_agent_module

FRAME = b"@@latkit "
SUCCEEDABLE = ("ping", "probe", "has", "lease")  # measure cannot succeed: the only model file is corrupt
FUZZ = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])


class Agent:
    """One long-lived agent. Its stdin stays open (the agent leaves ~3 s after its host is gone) and its
    replies are read by a thread, so a hang is a failed assertion, not a stuck test."""

    def __init__(self, tmp):
        (tmp / "wd" / "models").mkdir(parents=True)
        (tmp / "wd" / "models" / "corrupt.onnx").write_bytes(b"\x00not a model" * 8)
        # strict text streams, as on a device whose locale is not C: undecodable bytes must not end the agent
        env = dict(os.environ, PYTHONIOENCODING="utf-8:strict")
        self.proc = subprocess.Popen([sys.executable, str(AGENT), "--workdir", str(tmp / "wd"),
                                      "--lease", str(tmp / "lease")], env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self.replies = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.pings = 0

    def _read(self):
        for line in self.proc.stdout:
            self.replies.put(line)
        self.replies.put(None)

    def send(self, line: bytes, timeout: float = 60) -> dict:
        self.proc.stdin.write(line + b"\n")
        self.proc.stdin.flush()
        try:
            out = self.replies.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no reply within {timeout} s to {line[:80]!r}") from None
        assert out is not None, f"the agent exited (code {self.proc.wait()}) on {line[:80]!r}"
        assert out.startswith(FRAME), out
        reply = json.loads(out[len(FRAME):])
        assert set(reply) == {"id", "ok", "result" if reply["ok"] else "error"}, reply
        return reply

    def still_answers(self):
        self.pings += 1
        r = self.send(json.dumps({"id": f"ping-{self.pings}", "op": "ping"}).encode())
        assert r["ok"] and r["id"] == f"ping-{self.pings}" and r["result"]["pid"] == self.proc.pid
        assert self.replies.empty()  # exactly one reply per line: nothing left over


@pytest.fixture(scope="module")
def agent(tmp_path_factory):
    a = Agent(tmp_path_factory.mktemp("fuzz"))
    assert a.send(b'{"op": "lease", "holder": {"who": "fuzz"}}')["result"]["acquired"]  # so measure gets further
    yield a
    a.proc.stdin.close()  # the host is gone: the agent leaves on its own
    assert a.proc.wait(timeout=30) == 0


def check(agent, line: bytes, request=None):
    """Send one line; its reply is well formed and classified; a ping still works afterwards."""
    reply = agent.send(line)
    if reply["ok"]:
        assert isinstance(request, dict) and request.get("op") in SUCCEEDABLE, (line[:120], reply)
    else:
        err = reply["error"]
        assert err["kind"] in ERROR_KINDS and err["kind"] != "agent_error", (line[:120], err)
        assert isinstance(err["message"], str) and err["message"]
    if isinstance(request, dict):
        assert reply["id"] == request.get("id")
    agent.still_answers()


def no_shutdown(request) -> bool:
    return not (isinstance(request, dict) and request.get("op") == "shutdown")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=10)

# Settings keys the agent knows and some it does not; values of any type. cooldown_temp_c is left out: a
# valid one may rightly wait minutes for the device to cool, which is not a hang.
_KEYS = sorted(k for k in load_agent_module().DEFAULT_SETTINGS if k != "cooldown_temp_c") + ["bogus"]
requests = st.fixed_dictionaries(
    {"id": json_values, "op": st.sampled_from(SUCCEEDABLE + ("measure", "nope")) | json_values},
    optional={"models": json_values | st.lists(st.text(max_size=12), max_size=3),
              "holder": json_values,
              "model": st.sampled_from(["corrupt.onnx", "missing.onnx", "../lease", ""]) | json_values,
              "runtime": st.sampled_from(["onnxruntime", "tflite", "torch"]) | json_values,
              "settings": st.dictionaries(st.sampled_from(_KEYS), json_values, max_size=3) | json_values,
              "inputs": json_values})
# measure requests whose fields have the right types, with settings near the valid ones: they get past the
# request checks into check_settings, the format check and the runtimes' loaders
plausible = (st.integers(-2, 3) | st.floats(-1, 0.01) | st.booleans() | st.none()
             | st.lists(st.integers(-1, 3), max_size=2) | st.sampled_from(["cpu", "cuda", "float32", "float16"]))
specs = st.fixed_dictionaries({"name": st.text(max_size=4), "dtype": st.sampled_from(["float32", "int64", "nope"]),
                               "shape": st.lists(st.integers(-1, 4), max_size=4)})
measures = st.fixed_dictionaries(
    {"id": st.integers(), "op": st.just("measure"),
     "model": st.sampled_from(["corrupt.onnx", "missing.onnx", "models", "../lease"]),
     "runtime": st.sampled_from(["onnxruntime", "tflite", "torch"]),
     "settings": st.none() | st.dictionaries(st.sampled_from(_KEYS), plausible, max_size=4),
     "inputs": st.none() | st.lists(specs, max_size=2)})


@settings(FUZZ, max_examples=150)
@given(line=st.binary(min_size=1, max_size=300))
@example(line=b"[" * 100_000)          # nesting deeper than the JSON parser's recursion limit
@example(line=b"\xff\xfe\x00{\"op\": ")  # not UTF-8, and cut short
@example(line=b'{"id": 1' + b"1" * 5000 + b"}")  # an integer too long to convert
def test_random_bytes(agent, line):
    assume(b"\n" not in line and line.decode("utf-8", "replace").strip())
    try:
        request = json.loads(line)
    except (ValueError, RecursionError):
        request = None
    assume(no_shutdown(request))
    check(agent, line, request)


@settings(FUZZ, max_examples=150)
@given(request=json_values)
def test_random_json(agent, request):
    assume(no_shutdown(request))
    check(agent, json.dumps(request).encode(), request)


@settings(FUZZ, max_examples=250)
@given(request=requests | measures)
def test_random_requests(agent, request):
    assume(no_shutdown(request))
    check(agent, json.dumps(request).encode(), request)
