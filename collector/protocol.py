"""The host's side of the agent protocol: every reply a device sends is parsed here, within bounds, before any
of it is used, stored or shown. A device is trusted for its numbers and nothing more (README, "Trust model"),
so a reply that is too long, not UTF-8, not JSON, of the wrong shape or out of range (a NaN, zero or negative
latency, more samples than the settings' cap, a 100 MB version string) is a ProtocolError naming what was
wrong, raised at once, never a value that reaches the store or a wait for the job timeout.

Bounds, and why:
- A reply line may hold REPLY_BYTES plus SAMPLE_BYTES per sample the request allows (repeats_max_count): the
  largest legitimate reply fits (a probe is ~3 KB, a measure reply ~2 KB besides its samples; a sample's JSON
  text is at most 24 characters and its separator 2, twice on a CPU: samples_ms and cpu_samples_ms), and the
  host never holds more than that of one line. A fixed bound of tens of MB would let every device cost the
  host that much per reply at the default cap of 10,000 samples (~1.6 MB).
- Strings: identifiers (versions, dtypes, timestamps) are printable and at most IDENT characters; free text
  (error messages, probe facts, throttle reasons) at most TEXT (MESSAGE for error messages) characters of any
  kind, shown through collector.text.clean wherever it is printed.
- Containers: at most ITEMS entries and DEPTH levels (a probe is 3 deep); numbers finite (ci_rel may be +inf:
  the agent says so below 6 samples).
- Energy: a reading is method, joules, seconds and runs together or none of them, at most MAX_POWER_W over at
  most MAX_ENERGY_S; the idle power at most MAX_POWER_W too.
"""
from __future__ import annotations

import json
import math
import re
from datetime import datetime
from typing import Any

from .errors import ProtocolError
from .measurement import ERROR_KINDS, TELEMETRY
from .text import clean

REPLY_BYTES = 1 << 20
SAMPLE_BYTES = 64  # two lists (samples_ms, cpu_samples_ms) of one number each per sample
DEFAULT_CAP = 10000  # the agent's repeats_max_count where a request sends none
IDENT, TEXT, MESSAGE = 256, 4096, 8192
ITEMS, DEPTH = 4096, 8
STOPS = ("ci_target", "max_count", "max_time")
SAMPLE_LISTS = ("samples_ms", "cpu_samples_ms")  # one entry per timed run: bounded by the cap, not by ITEMS
ENERGY_METHODS = ("rapl", "nvml")
MAX_POWER_W = 1e5     # more than any one device draws (the agent itself refuses a counter step over 5 kW)
MAX_ENERGY_S = 86400  # a request's energy span: its timed runs, at most an hour by the settings, and a little
_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")


class Bad(ValueError):
    """What is wrong with a reply, in words (becomes a ProtocolError naming the device)."""


def sample_cap(fields: dict) -> int:
    """The most samples a measure reply may hold: the repeats cap the request sent."""
    cap = (fields.get("settings") or {}).get("repeats_max_count")
    return cap if isinstance(cap, int) and cap > 0 else DEFAULT_CAP


def reply_limit(op: str, fields: dict) -> int:
    """Bytes one reply line to `op` may take (see the module docstring)."""
    return REPLY_BYTES + (SAMPLE_BYTES * sample_cap(fields) if op == "measure" else 0)


def parse_reply(line: bytes, req_id: int, op: str, fields: dict, describe: str) -> dict:
    """The reply to request `req_id` (`op` with `fields`), checked: strict UTF-8, one JSON object with this id,
    `ok` true with a result of the op's shape, or false with a known error kind and a bounded message."""
    try:
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as e:
            raise Bad(f"it is not UTF-8 (at byte {e.start}: {clean(line[max(0, e.start - 8):e.start + 8], 60)})") from None
        try:
            reply = json.loads(text)
        except RecursionError:
            raise Bad("it is nested too deep to parse") from None
        except ValueError as e:
            raise Bad(f"it is not JSON ({e}: {clean(text, 60)})") from None
        if not isinstance(reply, dict):
            raise Bad(f"it is a JSON {type(reply).__name__}, not an object ({clean(text, 60)})")
        if reply.get("id") != req_id or isinstance(reply.get("id"), bool):
            raise Bad(f"its id is {clean(json.dumps(reply.get('id')), 40)}, not {req_id}")
        if reply.get("ok") is True:
            reply["result"] = check_result(op, reply.get("result"), fields)
        elif reply.get("ok") is False:
            _error(reply.get("error"))
        else:
            raise Bad(f"its ok is {clean(json.dumps(reply.get('ok')), 40)}, not true or false")
        return reply
    except Bad as e:
        raise ProtocolError(f"{describe} broke the agent protocol in its reply to {op}: {e}") from None


def _error(err) -> None:
    if not isinstance(err, dict):
        raise Bad("it has ok false and no error object")
    if not isinstance(err.get("kind"), str) or err["kind"] not in ERROR_KINDS:
        raise Bad(f"its error is of unknown kind {clean(json.dumps(err.get('kind')), 40)}")
    _text(err.get("message"), "error.message", MESSAGE)


# -- shapes ---------------------------------------------------------------------------------------------


def _number(v, path: str, lo: float = -math.inf, positive: bool = False, inf: bool = False, none: bool = False):
    if v is None and none:
        return
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise Bad(f"{path} = {clean(json.dumps(v), 40)}, not a number")
    if math.isinf(v) and inf and v > 0:
        return
    if math.isnan(v) or math.isinf(v) or v < lo or (positive and v <= 0) or abs(v) > 1e300:
        raise Bad(f"{path} = {v!r}, not a finite number{' > 0' if positive else f' >= {lo:g}' if lo > -math.inf else ''}")


def _whole(v, path: str, lo: int = 0, none: bool = False):
    if v is None and none:
        return
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v < 2 ** 63:
        raise Bad(f"{path} = {clean(json.dumps(v), 40)}, not a whole number >= {lo}")


def _text(v, path: str, limit: int = TEXT, ident: bool = False, none: bool = False):
    if v is None and none:
        return
    if not isinstance(v, str):
        raise Bad(f"{path} = {clean(json.dumps(v), 40)}, not a string")
    if len(v) > limit:
        raise Bad(f"{path} has {len(v)} characters (at most {limit})")
    if ident and not v.isprintable():
        raise Bad(f"{path} = {clean(v, 60)}, which has control characters")


def _bool(v, path: str, none: bool = True):
    if not (isinstance(v, bool) or (v is None and none)):
        raise Bad(f"{path} = {clean(json.dumps(v), 40)}, not true or false")


def bounded(v, path: str = "result", depth: int = 0) -> None:
    """Any JSON value within the generic bounds: DEPTH levels, ITEMS entries, TEXT-character strings, finite
    numbers."""
    if depth > DEPTH:
        raise Bad(f"{path} nested more than {DEPTH} levels deep")
    if isinstance(v, (list, dict)) and len(v) > ITEMS:
        raise Bad(f"{path} has {len(v)} entries (at most {ITEMS})")
    if isinstance(v, list):
        for i, x in enumerate(v):
            bounded(x, f"{path}[{i}]", depth + 1)
    elif isinstance(v, dict):
        for k, x in v.items():
            _text(k, f"a key of {path}", IDENT)
            bounded(x, f"{path}.{clean(k, 40)}", depth + 1)
    elif isinstance(v, str):
        _text(v, path)
    elif isinstance(v, (int, float)) and not isinstance(v, bool):
        _number(v, path, inf=path == "result.ci_rel")  # the agent's "no CI yet" (under 6 samples) is +inf


def _object(v, path: str) -> dict:
    if not isinstance(v, dict):
        raise Bad(f"{path} = {clean(json.dumps(v), 40)}, not an object")
    bounded(v, path)
    return v


def check_result(op: str, result, fields: dict) -> Any:
    """`result` if it has the shape of a successful `op` reply (raises Bad otherwise). A measure reply's
    samples (SAMPLE_LISTS) are bounded by the cap, not by ITEMS."""
    if not isinstance(result, dict):
        raise Bad(f"its result is {clean(json.dumps(result), 40)}, not an object")
    bounded({k: v for k, v in result.items() if not (op == "measure" and k in SAMPLE_LISTS)}, "result")
    CHECKS.get(op, lambda r, f: None)(result, fields)
    return result


def _ping(r: dict, fields: dict) -> None:
    _text(r.get("agent_version"), "agent_version", IDENT, ident=True)
    _whole(r.get("pid"), "pid", 1)


def _probe(r: dict, fields: dict) -> None:
    for k in ("agent_version", "machine", "python", "kernel"):
        _text(r.get(k), k, IDENT, ident=True, none=True)
    _whole(r.get("cpu_count"), "cpu_count", 1, none=True)
    _whole(r.get("memory_mb"), "memory_mb", 0, none=True)
    runtimes = _object(r.get("runtimes", {}), "runtimes")
    for name, info in runtimes.items():
        _text(_object(info, f"runtimes.{clean(name, 40)}").get("version"), f"runtimes.{clean(name, 40)}.version",
              IDENT, ident=True)
    gpus = r.get("gpus", [])
    if not isinstance(gpus, list):
        raise Bad("gpus is not a list")
    for i, g in enumerate(gpus):
        _text(_object(g, f"gpus[{i}]").get("name"), f"gpus[{i}].name")
    affinity = r.get("cpu_affinity")
    if affinity is not None and not isinstance(affinity, list):
        raise Bad("cpu_affinity is not a list")
    for i, c in enumerate(affinity or ()):
        _whole(c, f"cpu_affinity[{i}]")


def _has(r: dict, fields: dict) -> None:
    present = r.get("present")
    if not isinstance(present, list) or not all(isinstance(m, str) for m in present):
        raise Bad("has: present is not a list of file names")


def _lease(r: dict, fields: dict) -> None:
    _bool(r.get("acquired"), "acquired", none=False)
    if r.get("holder") is not None:
        _object(r["holder"], "holder")


def _samples(v, cap: int) -> None:
    """samples_ms: 1 to `cap` latencies, each a finite number of milliseconds > 0."""
    if not isinstance(v, list) or not v:
        raise Bad(f"samples_ms = {clean(json.dumps(v), 40)}, not a list of latencies")
    if len(v) > cap:
        raise Bad(f"it holds {len(v)} samples, more than the cap of {cap} it was sent (repeats_max_count)")
    for i, x in enumerate(v):
        if isinstance(x, bool) or not isinstance(x, (int, float)) or not 0 < x < math.inf:  # NaN fails too
            raise Bad(f"samples_ms[{i}] = {clean(json.dumps(x), 40)}, not a finite latency > 0 ms")


def _cpu_samples(v, samples: list) -> None:
    """cpu_samples_ms (agent >= 0.3.6 on a CPU; older agents and GPUs send none): the calling thread's CPU time
    of each run, one per sample in the same order, each a finite number of milliseconds >= 0."""
    if v is None:
        return
    if not isinstance(v, list) or len(v) != len(samples):
        raise Bad(f"cpu_samples_ms = {clean(json.dumps(v), 40)}, not a list of {len(samples)} CPU times (one per "
                  "sample)")
    for i, x in enumerate(v):
        if isinstance(x, bool) or not isinstance(x, (int, float)) or not 0 <= x < math.inf:  # NaN fails too
            raise Bad(f"cpu_samples_ms[{i}] = {clean(json.dumps(x), 40)}, not a finite CPU time >= 0 ms")


def _inputs(v) -> None:
    if not isinstance(v, list) or len(v) > 64:
        raise Bad("inputs is not a list of at most 64 input descriptions")
    for i, spec in enumerate(v):
        spec = _object(spec, f"inputs[{i}]")
        _text(spec.get("name"), f"inputs[{i}].name", IDENT)
        _text(spec.get("dtype"), f"inputs[{i}].dtype", 32, ident=True)
        shape = spec.get("shape")
        if not isinstance(shape, list) or len(shape) > 16:
            raise Bad(f"inputs[{i}].shape is not a list of at most 16 dimensions")
        for j, d in enumerate(shape):
            _whole(d, f"inputs[{i}].shape[{j}]")


def _telemetry(v, path: str) -> None:
    for k, x in _object(v, path).items():
        if k == "gpu_clocks_locked":
            _bool(x, f"{path}.{k}")
        elif k in TELEMETRY:
            _number(x, f"{path}.{k}", none=True)
        else:
            raise Bad(f"{path} has the unknown field {clean(k, 40)}")


def _applied(v) -> None:
    a = _object(v if v is not None else {}, "applied")
    _whole(a.get("threads"), "applied.threads", 1, none=True)
    cores = a.get("cores")
    if cores is not None and not isinstance(cores, list):
        raise Bad("applied.cores is not a list")
    for i, c in enumerate(cores or ()):
        _whole(c, f"applied.cores[{i}]")
    _text(a.get("dtype"), "applied.dtype", 32, ident=True, none=True)
    _text(a.get("graph_fallback"), "applied.graph_fallback", none=True)
    for k in ("cuda_graphs", "cudnn_benchmark", "tf32"):
        _bool(a.get(k), f"applied.{k}")


def _measure(r: dict, fields: dict) -> None:
    _samples(r.get("samples_ms"), sample_cap(fields))
    _cpu_samples(r.get("cpu_samples_ms"), r["samples_ms"])
    _whole(r.get("warmup"), "warmup")
    _text(r.get("runtime_version"), "runtime_version", IDENT, ident=True)
    _text(r.get("agent_version"), "agent_version", IDENT, ident=True)
    _inputs(r.get("inputs"))
    _telemetry(r.get("telemetry_before"), "telemetry_before")
    _telemetry(r.get("telemetry_after"), "telemetry_after")
    _applied(r.get("applied"))
    for k in ("warmup_s", "load_s"):  # summed by the host: a number when present
        if k in r:
            _number(r[k], k, lo=0)
    _number(r.get("cooldown_s"), "cooldown_s", lo=0, none=True)
    for k in ("first_ms", "launch_ms"):
        _number(r.get(k), k, positive=True, none=True)
    for k in ("peak_rss_mb", "gpu_peak_mb"):
        _number(r.get(k), k, none=True)
    _number(r.get("ci_rel"), "ci_rel", lo=0, inf=True, none=True)
    if "stopped_by" in r and r["stopped_by"] not in STOPS:
        raise Bad(f"stopped_by = {clean(json.dumps(r['stopped_by']), 40)}, not one of {', '.join(STOPS)}")
    for k in ("started_at", "finished_at"):
        if r.get(k) is not None and not (isinstance(r[k], str) and _utc(r[k])):
            raise Bad(f"{k} = {clean(json.dumps(r[k]), 40)}, not a UTC time like 2026-01-31T12:00:00.000000Z")
    _text(r.get("throttle"), "throttle", none=True)
    _bool(r.get("cooled"), "cooled")
    _bool(r.get("session_reused"), "session_reused")
    _energy(r)


def _energy(r: dict) -> None:
    """A reading (method, joules, seconds, runs: all or none) within bounds, the idle power and the reason."""
    given = [r.get(k) is not None for k in ("energy_method", "energy_j", "energy_s", "energy_runs")]
    if any(given) and not all(given):
        raise Bad("energy_method, energy_j, energy_s and energy_runs are neither all given nor all null")
    if all(given):
        if r["energy_method"] not in ENERGY_METHODS:
            raise Bad(f"energy_method = {clean(json.dumps(r['energy_method']), 40)}, not one of "
                      f"{', '.join(ENERGY_METHODS)}")
        _number(r["energy_j"], "energy_j", positive=True)
        _number(r["energy_s"], "energy_s", positive=True)
        _whole(r["energy_runs"], "energy_runs", 1)
        if r["energy_s"] > MAX_ENERGY_S or r["energy_j"] / r["energy_s"] > MAX_POWER_W:
            raise Bad(f"energy_j = {r['energy_j']!r} over energy_s = {r['energy_s']!r}: more than {MAX_POWER_W:g} W "
                      f"or {MAX_ENERGY_S} s")
    _number(r.get("idle_power_w"), "idle_power_w", lo=0, none=True)
    if (r.get("idle_power_w") or 0) > MAX_POWER_W:
        raise Bad(f"idle_power_w = {r['idle_power_w']!r}, more than {MAX_POWER_W:g} W")
    _text(r.get("energy_warning"), "energy_warning", none=True)


def _utc(text: str) -> bool:
    try:
        return bool(_UTC.fullmatch(text)) and bool(datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ"))
    except ValueError:
        return False


CHECKS: dict = {"ping": _ping, "probe": _probe, "has": _has, "lease": _lease, "measure": _measure}
