"""Measuring on a live device for the predictor pipelines (build, adapt), through the normal collection path.

A pipeline writes each row it measures with its `role` (collector/schema.py: "heldout", "round" with its
round number, "adapt") and its `sampler` (how the arch was chosen), so the dataset is its state: a re-run
reads back its own rows for (device, space, settings) and measures only archs that have none. Rows of other
roles (data, another pipeline's, other settings) are never read. Rows of latkit before the role column carry
the role in `sampler` ("build(round=2)"); collector/schema.py's `role_of` reads them the same way.
"""
from __future__ import annotations

import dataclasses
import time
from typing import NamedTuple, Optional, Sequence

import numpy as np
import pyarrow.compute as pc

from latkit.collector import api
from latkit.collector.devices import Registry
from latkit.collector.errors import LatkitError
from latkit.collector.job import Settings
from latkit.collector.schema import role_of
from latkit.collector.store import Store


class Row(NamedTuple):
    """What a pipeline reads back of one of its rows."""
    latency_ms: float
    role: str
    round: Optional[int] = None


def own_rows(out, device: str, space: str, settings: Settings, roles: Sequence[str]) -> dict:
    """arch -> Row of the ok rows of `roles` measured on (device, space, settings)."""
    store = Store(out)
    if not store.exists():
        return {}
    want = ((pc.field("device") == device) & (pc.field("space") == space) & (pc.field("status") == "ok")
            & (pc.field("settings") == settings.canonical()))
    t = store.read(["arch", "latency_ms", "sampler", "role", "role_round"], filter=want).to_pylist()
    found = ((r["arch"], Row(r["latency_ms"], *role_of(r))) for r in t)
    return {a: row for a, row in found if row.role in roles}


def measure_archs(space: str, archs: Sequence[str], device: str, settings: Settings, out, sampler: str, role: str,
                  role_round: Optional[int] = None, registry: Optional[Registry] = None) -> tuple:
    """Export and time `archs` on `device` into rows of `role`; (arch -> Row of those measured ok, seconds
    spent). Archs already stored under the same key are not timed again."""
    t0 = time.perf_counter()
    if not archs:
        return {}, 0.0
    arts = api.space_artifacts(space, list(archs), settings.runtime)
    rows = api.measure_many(arts, device, settings.runtime, settings, out, registry=registry, sampler=sampler,
                            role=role, role_round=role_round)
    got = {a: Row(m.latency_ms, role, role_round) for a, m in zip(archs, rows) if m.status == "ok"}
    return got, time.perf_counter() - t0


def job_settings(settings: Optional[Settings]) -> Settings:
    """The settings as stored in rows (the runtime filled in, batch size fixed by the export)."""
    s = settings or Settings()
    if s.runtime not in api.EXPORT_FORMAT:
        raise LatkitError(f"unknown runtime {s.runtime!r}; choose one of {', '.join(api.EXPORT_FORMAT)}")
    return dataclasses.replace(s, batch_size=None)


def latencies(rows: dict, archs: Sequence[str]) -> np.ndarray:
    return np.array([rows[a][0] for a in archs], dtype=np.float64)
