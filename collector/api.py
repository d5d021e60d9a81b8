"""The Python API behind the CLI: every `latkit` command is one of these functions."""
from __future__ import annotations

import dataclasses
from typing import Iterable, Optional

import pyarrow.compute as pc

from .devices import get_device
from .errors import LatkitError
from .job import RUNTIME_FOR_FORMAT, Artifact, Job, Settings
from .measurement import Measurement
from .runner import DeviceRunner
from .store import Store


def probe(device: str = "local") -> dict:
    """What the device reports about itself: OS, CPU, memory, GPUs, Python and runtimes."""
    with DeviceRunner(get_device(device)) as runner:
        return runner.probe


def measure(model, device: str = "local", runtime: Optional[str] = None, settings: Optional[Settings] = None,
            out="latkit-data", force: bool = False) -> Measurement:
    """Time one model file on one device and append the row to the store at `out`.

    A model already measured under the same key is not timed again (unless `force`): the stored
    row is returned instead.
    """
    artifact = model if isinstance(model, Artifact) else Artifact.from_file(model)
    return measure_many([artifact], device, runtime, settings, out, force)[0]


def measure_many(artifacts: Iterable[Artifact], device: str = "local", runtime: Optional[str] = None,
                 settings: Optional[Settings] = None, out="latkit-data", force: bool = False) -> list:
    """Time several artifacts on one device with one agent, each row appended as soon as it is measured."""
    dev = get_device(device)
    store = Store(out)
    store.check_writable()
    base = settings or Settings()
    jobs = [Job(a, dev.name, dataclasses.replace(base, runtime=runtime or RUNTIME_FOR_FORMAT[a.format]))
            for a in artifacts]
    done = set() if force else store.done_keys()
    results: list = [None] * len(jobs)
    todo = [i for i, j in enumerate(jobs) if j.key not in done]
    for i in set(range(len(jobs))) - set(todo):
        results[i] = stored_measurement(store, jobs[i])
    if todo:
        with DeviceRunner(dev) as runner:
            for i in todo:
                results[i] = runner.measure(jobs[i])
                store.append([results[i].to_row()])
    return results


def stored_measurement(store: Store, job: Job) -> Measurement:
    """The newest ok row of `job` in the store, as a Measurement."""
    t = store.read(filter=(pc.field("key") == job.key) & (pc.field("status") == "ok"))
    row = t.sort_by([("measured_at", "descending")]).slice(0, 1).to_pylist()[0]
    m = Measurement.from_result(job, {
        "samples_ms": row["samples_ms"], "warmup": row["warmup"], "runtime_version": row["runtime_version"],
        "agent_version": row["agent_version"],
        "inputs": [{"shape": [int(d) for d in s.split("x")]} for s in row["input_shape"].split(";") if s],
        "telemetry_before": {k: row[f"telemetry_before_{k}"] for k in ("freq_mhz", "temp_c", "load1")},
        "telemetry_after": {k: row[f"telemetry_after_{k}"] for k in ("freq_mhz", "temp_c", "load1")},
    }, row["device_fingerprint"])
    m.measured_at = row["measured_at"]
    return m


def data_summary(path="latkit-data"):
    """One row per (device, runtime, space): counts, median latency range and the newest measurement."""
    store = Store(path)
    if not store.exists():
        raise LatkitError(f"no dataset at {path}; measure something first (latkit measure MODEL --out {path})")
    t = store.read(columns=["device", "runtime", "space", "status", "latency_ms", "measured_at"])
    t = t.append_column("ok", pc.cast(pc.equal(t["status"], "ok"), "int64"))
    g = t.group_by(["device", "runtime", "space"]).aggregate(
        [("status", "count"), ("ok", "sum"), ("latency_ms", "min"), ("latency_ms", "approximate_median"),
         ("latency_ms", "max"), ("measured_at", "max")])
    return g.sort_by([("device", "ascending"), ("runtime", "ascending"), ("space", "ascending")])

