"""Measuring on a live device for the predictor pipelines (build, adapt), through the normal collection path.

A pipeline tags every row it measures with its own `sampler` value (e.g. "build(round=2)", "adapt"), so the
dataset is its state: a re-run reads back its own tagged rows for (device, space, settings) and measures only
archs that have none. Rows the pipeline did not measure (other tags, other settings) are never read.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Optional, Sequence

import numpy as np
import pyarrow.compute as pc

from latkit.collector import api
from latkit.collector.devices import Registry
from latkit.collector.errors import LatkitError
from latkit.collector.job import Settings
from latkit.collector.store import Store


def tagged_rows(out, device: str, space: str, settings: Settings, prefix: str) -> dict:
    """arch -> (latency_ms, sampler tag) of the ok rows this pipeline measured (tag starting with `prefix`)."""
    store = Store(out)
    if not store.exists():
        return {}
    want = ((pc.field("device") == device) & (pc.field("space") == space) & (pc.field("status") == "ok")
            & (pc.field("settings") == settings.canonical()))
    t = store.read(["arch", "latency_ms", "sampler"], filter=want).to_pylist()
    return {r["arch"]: (r["latency_ms"], r["sampler"]) for r in t if (r["sampler"] or "").startswith(prefix)}


def measure_archs(space: str, archs: Sequence[str], device: str, settings: Settings, out, tag: str,
                  registry: Optional[Registry] = None) -> tuple:
    """Export and time `archs` on `device` (rows tagged `tag`); (arch -> latency_ms of those measured ok,
    seconds spent). Archs already stored under the same key are not timed again."""
    t0 = time.perf_counter()
    if not archs:
        return {}, 0.0
    arts = api.space_artifacts(space, list(archs), settings.runtime)
    rows = api.measure_many(arts, device, settings.runtime, settings, out, registry=registry, sampler=tag)
    got = {a: m.latency_ms for a, m in zip(archs, rows) if m.status == "ok"}
    return got, time.perf_counter() - t0


def job_settings(settings: Optional[Settings]) -> Settings:
    """The settings as stored in rows (the runtime filled in, batch size fixed by the export)."""
    s = settings or Settings()
    if s.runtime not in api.EXPORT_FORMAT:
        raise LatkitError(f"unknown runtime {s.runtime!r}; choose one of {', '.join(api.EXPORT_FORMAT)}")
    return dataclasses.replace(s, batch_size=None)


def latencies(rows: dict, archs: Sequence[str]) -> np.ndarray:
    return np.array([rows[a][0] for a in archs], dtype=np.float64)
