"""`latkit doctor`: whether each device is fit for a long collection, checked in seconds before it starts.

The agent's `health` op reports the facts (governors, thermal sensors, load, busy processes, free disk) and
`probe` the runtimes; this module judges them. A *problem* spoils timing or stops the collection (the device
is unreachable, has no runtime, another process is busy on the cores it is pinned to, its disk is nearly full)
and makes doctor exit 1; a *warning* is worth fixing but its numbers are still usable (a governor other than
`performance`, no thermal sensor, a hot or throttled CPU, a machine loaded beyond its cores).
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Optional, Sequence

from .devices import Device, Registry
from .errors import LatkitError
from .runner import DeviceRunner

DISK_PROBLEM_MB = 1024   # below this the models and sessions of a collection do not fit
DISK_WARN_MB = 5 * 1024
HOT_C = 85.0             # most CPUs throttle near here
BUSY_SHARE = 0.1         # a process using this share of a CPU competes with the timed runs


def cpu_list(cpus: Sequence[int]) -> str:
    """CPU ids as ranges: [0, 1, 2, 5] -> 0-2,5."""
    out, ids = [], sorted(cpus)
    for c in ids:
        if out and c == out[-1][1] + 1:
            out[-1][1] = c
        else:
            out.append([c, c])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in out)


def _runtimes(probe: dict, problems: list) -> str:
    found = probe.get("runtimes") or {}
    if not found:
        problems.append("no runtime imports there; install onnxruntime, ai-edge-litert or torch in its Python")
    return ", ".join(f"{k} {v.get('version')}" for k, v in found.items()) or "none"


def _governor(h: dict, warnings: list) -> str:
    govs = h.get("governors") or {}
    slow = {g: c for g, c in govs.items() if g != "performance"}
    if slow:
        warnings.append("governor " + ", ".join(f"{g} on cpu {cpu_list(c)}" for g, c in slow.items())
                        + "; set performance (sudo cpupower frequency-set -g performance) for steady clocks")
    return "/".join(govs) or "n/a"


def _thermal(h: dict, warnings: list) -> str:
    sensors = h.get("sensors") or []
    if h.get("throttle"):
        warnings.append(f"throttled now: {h['throttle']}")
    if not sensors:
        warnings.append("no thermal sensor readable; heat cannot be watched (--cooldown-temp has no effect)")
        return "no sensors"
    hottest = max(sensors, key=lambda s: s["temp_c"])
    if hottest["temp_c"] >= HOT_C:
        warnings.append(f"{hottest['name']} reads {hottest['temp_c']:.0f} °C; let it cool or use --cooldown-temp")
    return f"{len(sensors)} sensor(s), hottest {hottest['temp_c']:.0f} °C"


def _load(h: dict, warnings: list) -> str:
    load, n = h.get("loadavg"), h.get("cpu_count") or 1
    if not load:
        return "load n/a"
    if load[0] > n:
        warnings.append(f"load {load[0]:g} on {n} CPUs: other work shares the machine")
    return f"load {load[0]:g}/{n} CPUs"


def _busy(h: dict, problems: list, warnings: list, cores: Optional[Sequence[int]] = None) -> str:
    """Pinned (fewer CPUs than the machine's, or the `cores` a collection will pin to with --cores): a busy
    process on those cores is a problem. Unpinned: the top CPU users are a warning, as the OS may put them
    beside the timed runs."""
    cpus, busy = set(cores or h.get("cpus") or ()), h.get("busy")
    pinned = bool(cpus) and (bool(cores) or len(cpus) < (h.get("cpu_count") or 0))
    if busy is None:
        return "busy n/a"
    name = lambda p: f"{p['name']} (pid {p['pid']}, {p['cpu_share'] * 100:.0f} %)"  # noqa: E731
    if pinned:
        there = [p for p in busy if set(p["cpus"]) & cpus]
        if there:
            problems.append(f"busy on its pinned cpu {cpu_list(cpus)}: " + ", ".join(map(name, there[:3]))
                            + "; stop them or pin the device to other cores")
        return f"pinned to cpu {cpu_list(cpus)}, {len(there)} other busy process(es) there"
    if busy:
        warnings.append("busy: " + ", ".join(map(name, busy[:3])) + " (the device is not pinned, so they may share "
                        "its CPUs)")
    return f"{len(busy)} busy process(es)"


def _disk(h: dict, problems: list, warnings: list) -> str:
    free = h.get("disk_free_mb")
    if free is None:
        return "disk n/a"
    where = f"{free / 1024:.1f} GB free in {h.get('workdir')}"
    if free < DISK_PROBLEM_MB:
        problems.append(f"only {where}; free space there or give the device another --workdir")
    elif free < DISK_WARN_MB:
        warnings.append(f"only {where}")
    return where


def _energy(h: dict) -> str:
    """Which counter `--energy` would read: a fact, not a verdict (energy is opt-in); the reasons are in --json."""
    ok = [k for k, v in (h.get("energy") or {}).items() if v == "ok"]
    return "energy " + ("+".join(ok) if ok else "n/a" if h.get("energy") else "unknown (agent < 0.3.5)")


def judge(name: str, probe: dict, h: dict, cores: Optional[Sequence[int]] = None) -> dict:
    """One device's facts and verdicts from its probe and health replies."""
    problems, warnings = [], []
    facts = [_runtimes(probe, problems), _governor(h, warnings), _thermal(h, warnings), _load(h, warnings),
             _busy(h, problems, warnings, cores), _disk(h, problems, warnings), _energy(h)]
    facts[0], facts[1] = f"runtimes {facts[0]}", f"governor {facts[1]}"
    return {"device": name, "reachable": True, "status": "problem" if problems else "warn" if warnings else "ok",
            "problems": problems, "warnings": warnings, "summary": "; ".join(facts),
            "runtimes": {k: v.get("version") for k, v in (probe.get("runtimes") or {}).items()}, **h}


def check(device: Device, cores: Optional[Sequence[int]] = None) -> dict:
    """Start the device's agent, ask for its probe and health, judge them; an unreachable device is a problem."""
    runner = DeviceRunner(device, timeout=120)
    try:
        probe = runner.start()
        h = runner.transport.call("health", timeout=120)
    except LatkitError as e:
        return {"device": device.name, "reachable": False, "status": "problem", "problems": [str(e)],
                "warnings": [], "summary": "unreachable"}
    finally:
        runner.close()
    return judge(device.name, probe, h, cores)


def doctor(names: Optional[Sequence[str]] = None, registry: Optional[Registry] = None,
           cores: Optional[Sequence[int]] = None) -> list:
    """Every named device (default: all registered, `local` first) checked at once; names are checked first.
    `cores`: the CPU ids a collection will pin to (collect --cores), judged as the devices' pinned cores."""
    reg = registry or Registry()
    devices = [reg.get(n) for n in names] if names else reg.devices()
    with ThreadPoolExecutor(max_workers=min(32, len(devices))) as pool:
        return list(pool.map(lambda d: check(d, cores), devices))


def line(r: dict) -> str:
    """One device as one line: name, verdict, facts, then what is wrong."""
    text = f"{r['device']}: {r['status']}: {r['summary']}"
    if r["problems"]:
        text += " | problem: " + " | problem: ".join(r["problems"])
    if r["warnings"]:
        text += " | warning: " + " | warning: ".join(r["warnings"])
    return text
