"""The rounds a device has timed of models not yet stored, kept so that a stop loses none of them.

A model becomes a row once its last round is timed, and rounds shuffle windows of up to 64 models, so a stop
(Ctrl-C, a crash, a lost link, a SIGKILLed orchestrator) always falls between the rounds of many models. Each round
of a model with rounds still to come is written, as its one-round row, to the side table `<dataset>/_rounds/`
(never among the data); the next run of the same job (the key: same file, device and settings) on the same
hardware and runtime (the device fingerprint) takes those rounds back and times only the missing ones. Saved
rounds are dead weight once their model's row is stored: a device's folder there goes when a run of that device
ends with every model of it stored.
"""
from __future__ import annotations

import math

import pyarrow.compute as pc

from .job import Job
from .measurement import Measurement
from .store import Store, partition_folder

SIDE = "_rounds"  # the side table's folder in a dataset


def rounds_store(store: Store) -> Store:
    """The saved-rounds side table of the dataset `store`."""
    return Store(f"{store.uri.rstrip('/')}/{SIDE}")


def saved(store: Store, device: str, fingerprint: str) -> dict:
    """key -> the rows of the rounds `device` saved in `store`'s side table with an agent of `fingerprint`, oldest
    first: read once, as the device's loop first looks (before it saves any of its own)."""
    side = rounds_store(store)
    if not side.exists():
        return {}
    out: dict = {}
    t = side.read(filter=(pc.field("device") == device) & (pc.field("device_fingerprint") == fingerprint)
                  & (pc.field("status") == "ok"))
    for row in sorted(t.to_pylist(), key=lambda r: r["measured_at"]):
        out.setdefault(row["key"], []).append(row)
    return out


def taken(job: Job, rows: list) -> list:
    """The saved rounds of `job` as Measurements, at most rounds - 1 of them (its last is timed now). A dataset may
    come from elsewhere: a row that is not one round of finite, positive samples is passed over (timed again)."""
    out = []
    for row in rows:
        try:
            if _one_round(row):
                out.append(Measurement.from_row(job, row))
        except (ValueError, TypeError, KeyError):
            continue
    return out[:job.settings.rounds - 1]


def _one_round(row: dict) -> bool:
    samples, rounds = row["samples_ms"] or [], row["round_ms"] or []
    return (row["rounds"] == 1 and len(rounds) == 1 and len(row["round_started_at"] or []) == 1 and len(samples) > 0
            and all(math.isfinite(x) and x > 0 for x in [*samples, *rounds]))


def prune(store: Store, device: str) -> bool:
    """Remove `device`'s saved rounds if every one of them belongs to a model stored in `store`; whether it did."""
    side = rounds_store(store)
    if not side.exists():
        return False
    keys = set(side.read(columns=["key"], filter=pc.field("device") == device)["key"].to_pylist())
    if not keys or keys - store.done_keys():
        return False
    side.fs.delete_dir(partition_folder(side.data, (device,)))
    return True
