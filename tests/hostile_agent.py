"""A hostile device agent for tests: the real agent (agents/agent.py, loaded from the path the host runs) with
its real request loop, framing, lease and die-with-parent, whose `measure` (and, in probe modes, `probe`)
replies carry bad content: endless or huge lines, NaN latencies, bytes that are not UTF-8, wrong ids, escape
sequences... Run as `python hostile_agent.py MODE AGENT.py --workdir ... [--parent-pid ...] [--lease ...]`,
through a device whose `python` is a wrapper script that inserts MODE (tests/test_hostile_device.py).

Large replies are written in chunks, so this process stays small while the host reads gigabytes: the host's
memory, not the fake's, is what the tests measure. Nothing is timed: the ok reply is made up, well formed."""
import importlib.util
import json
import os
import sys
import time

MODE = sys.argv[1]
_spec = importlib.util.spec_from_file_location("real_agent", sys.argv[2])
agent = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(agent)
FRAME = agent.FRAME.encode()
MB = b"1.0, " * (1 << 18)  # 1.25 MiB of samples text
MEASURES = [0]  # measure requests answered so far
# the probe's runtimes are made up: importing torch in every fake agent would cost seconds, and nothing is timed
agent.runtime_versions = lambda: {"onnxruntime": {"version": "1.0", "providers": ["CPUExecutionProvider"]}}


def ok_result(req):
    """A well-formed measure result echoing the request's settings (so the host's read-back check passes)."""
    s = dict(agent.DEFAULT_SETTINGS, **(req.get("settings") or {}))
    now = agent._utc(time.time())
    tel = {"freq_mhz": 2000.0, "temp_c": 40.0, "load1": 0.1}
    return {"samples_ms": [1.0 + i / 100 for i in range(20)], "cpu_samples_ms": [0.99 + i / 100 for i in range(20)],
            "warmup": 5, "warmup_s": 0.01, "first_ms": 2.0,
            "stopped_by": "ci_target", "ci_rel": 0.001, "runtime_version": "1.0", "inputs": req.get("inputs") or [],
            "load_s": 0.01, "applied": {"threads": s["threads"], "cores": s["cores"]},
            "telemetry_before": tel, "telemetry_after": tel, "settings": s, "agent_version": agent.AGENT_VERSION,
            "started_at": now, "finished_at": now, "cooldown_s": 0.0, "cooled": None, "throttle": "",
            "peak_rss_mb": 10.0, "launch_ms": None, "gpu_peak_mb": None, "session_reused": False}


def frame(out, body: bytes) -> None:
    out.write(FRAME + body + b"\n")
    out.flush()


def reply(out, req_id, result) -> None:
    frame(out, json.dumps({"id": req_id, "ok": True, "result": result}).encode())


def opened(rid, result, key: str) -> bytes:
    """The reply line up to where `key`'s value starts (the key last in the result), to be streamed after."""
    rest = json.dumps({k: v for k, v in result.items() if k != key})[1:-1]
    return ('{"id": %s, "ok": true, "result": {%s, "%s": ' % (json.dumps(rid), rest, key)).encode()


def stream(out, head: bytes, chunk: bytes, total: int, tail: bytes) -> None:
    """One line written in pieces: head, chunk repeated `total` bytes' worth (forever if total < 0), tail."""
    out.write(FRAME + head)
    sent = 0
    while total < 0 or sent < total:
        out.write(chunk)
        sent += len(chunk)
    out.write(tail + b"\n")
    out.flush()


# measure modes that change one field of the ok result: mode -> (field, value)
FIELD = {"nan": ("samples_ms", [1.0, float("nan"), 1.0]), "inf": ("samples_ms", [1.0, float("inf")]),
         "negative": ("samples_ms", [1.0, -1.0]), "zero": ("samples_ms", [0.0, 1.0]),
         "string": ("samples_ms", ["1.0", 1.0]), "bool": ("samples_ms", [True, 1.0]),
         "over_cap": ("samples_ms", [1.0] * 10001), "long_version": ("runtime_version", "x" * 100_000),
         "escape_version": ("runtime_version", "1.0\x1b[2J"), "missing": ("samples_ms", None),
         "bad_time": ("started_at", "yesterday"), "bad_telemetry": ("telemetry_before", [1, 2]),
         "bad_stop": ("stopped_by", "whenever"), "warmup_string": ("warmup", "five"),
         "cpu_short": ("cpu_samples_ms", [1.0] * 19), "cpu_long": ("cpu_samples_ms", [1.0] * 10001),
         "cpu_nan": ("cpu_samples_ms", [1.0, float("nan")] + [1.0] * 18),
         "cpu_negative": ("cpu_samples_ms", [1.0, -1.0] + [1.0] * 18),
         "cpu_string": ("cpu_samples_ms", ["1.0"] + [1.0] * 19)}


def hostile_measure(out, req) -> bool:
    """Answer a measure request as MODE says; False where the ok reply applies (MODE is not about measure)."""
    rid, result = req.get("id"), ok_result(req)
    MEASURES[0] += 1
    if MODE in FIELD:
        key, value = FIELD[MODE]
        reply(out, rid, {k: v for k, v in dict(result, **{key: value}).items() if v is not None or k != key})
    elif MODE == "good_then_nan":
        reply(out, rid, dict(result, samples_ms=[1.0, float("nan")]) if MEASURES[0] > 2 else result)
    elif MODE == "endless":  # a line that never ends
        stream(out, opened(rid, result, "samples_ms") + b"[", MB, -1, b"")
    elif MODE == "noise_endless":  # device noise (no frame) that never ends
        out.write(b"login banner ")
        while True:
            out.write(b"banner " * 100_000)
    elif MODE == "samples_1e7":  # 10**7 samples where the cap sent was 10,000: a 50 MB line
        stream(out, opened(rid, result, "samples_ms") + b"[", MB, 5 * 10 ** 7, b"1.0]}}")
    elif MODE == "huge_version":  # a 100 MB runtime_version in an otherwise fine reply
        stream(out, opened(rid, result, "runtime_version") + b'"', b"v" * (1 << 20), 100 << 20, b'"}}')
    elif MODE == "non_utf8":
        frame(out, json.dumps({"id": rid, "ok": True, "result": result}).encode().replace(b'"1.0"', b'"1.0\xff\xfe"'))
    elif MODE == "wrong_id":
        reply(out, (rid or 0) + 1000, result)
    elif MODE in ("array", "number"):
        frame(out, b"[1, 2, 3]" if MODE == "array" else b"42")
    elif MODE == "deep":  # 50,000 levels: deeper than any JSON parser's recursion
        frame(out, b'{"a": ' * 50_000 + b"1" + b"}" * 50_000)
    elif MODE == "result_list":
        frame(out, json.dumps({"id": rid, "ok": True, "result": [1.0]}).encode())
    elif MODE == "bad_kind":
        frame(out, json.dumps({"id": rid, "ok": False, "error": {"kind": "rm -rf /", "message": "x"}}).encode())
    elif MODE == "escape_error":  # a model error whose message would retitle and clear a terminal
        frame(out, json.dumps({"id": rid, "ok": False, "error": {
            "kind": "runtime_error", "message": "boom\nsecond line\x1b]0;pwned\x07\x1b[2J\x1b[31mred"}}).encode())
    elif MODE == "exit_mid_reply":
        out.write(FRAME + opened(rid, result, "samples_ms")[:40])
        out.flush()
        os._exit(3)
    elif MODE == "exit_every_second":  # each agent process answers one measure, then dies on the next
        if MEASURES[0] % 2 == 0:
            os._exit(3)
        reply(out, rid, result)
    elif MODE == "forever":  # the right reply, then copies of it for ever
        while True:
            reply(out, rid, result)
    else:
        return False
    return True


def hostile_probe(out, req) -> bool:
    if MODE == "escape_probe":
        reply(out, req.get("id"), dict(agent.probe(), cpu_model="Evil\nCPU \x1b]0;pwned\x07\x1b[2J\x1b[31mred"))
    elif MODE == "deep_probe":
        nested = 1
        for _ in range(20):
            nested = {"a": nested}
        reply(out, req.get("id"), dict(agent.probe(), extra=nested))
    else:
        return False
    return True


def main():
    args = agent.argparse.Namespace(workdir=".", lease=None)
    argv = sys.argv[3:]
    for flag in ("--workdir", "--lease"):
        if flag in argv:
            setattr(args, flag[2:], argv[argv.index(flag) + 1])
    if "--parent-pid" in argv:
        agent._die_with_parent(int(argv[argv.index("--parent-pid") + 1]))
    lease = agent.Lease(args.lease or agent.default_lease_path())
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    for line in sys.stdin.buffer:
        req = json.loads(line)
        if req.get("op") == "shutdown":
            reply(out, req.get("id"), {})
            return
        if (req.get("op") == "measure" and hostile_measure(out, req)) or \
                (req.get("op") == "probe" and hostile_probe(out, req)):
            continue
        if req.get("op") == "measure":
            reply(out, req.get("id"), ok_result(req))
            continue
        try:  # the real agent answers everything else
            reply(out, req.get("id"), agent.handle(req, args.workdir, lease))
        except agent.AgentError as e:
            frame(out, json.dumps({"id": req.get("id"), "ok": False,
                                   "error": {"kind": e.kind, "message": e.message}}).encode())


if __name__ == "__main__":
    try:
        main()
    except BrokenPipeError:  # the host stopped reading (it refused what it got) and killed us
        pass
    os._exit(0)
