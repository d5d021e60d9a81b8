"""The rounds a device has timed of models not yet stored, kept so that a stop loses none of them.

A model becomes a row once its last round is timed, and rounds shuffle windows of up to 64 models, so a stop
(Ctrl-C, a crash, a lost link, a SIGKILLed orchestrator) always falls between the rounds of many models. Each round
of a model with rounds still to come is written, as its one-round row, to the side table `<dataset>/_rounds/`
(never among the data, batched like the rows); the next run of the same job (the key: same file, device and
settings) on the same hardware and runtime (the device fingerprint) and agent version takes those rounds back and
times only the missing ones. A saved round older than a stored row of its model (the model's row, or an error
in a later round) is dead weight: a device's files there are removed when its run ends with all of them so.
Saved rounds are a convenience: a side table that cannot be read is passed over, and the rounds timed again.
"""
from __future__ import annotations

import logging
import math
import os

import pyarrow as pa
import pyarrow.compute as pc

from .errors import LatkitError
from .job import Job
from .measurement import Measurement, fingerprint
from .store import Store, partition_folder

log = logging.getLogger("latkit")

SIDE = "_rounds"  # the side table's folder in a dataset


def rounds_store(store: Store) -> Store:
    """The saved-rounds side table of the dataset `store`."""
    return store.side(SIDE)


def read_saved(store: Store, device: str, probe: dict) -> dict:
    """key -> the rows of the rounds `device` saved in `store`'s side table with an agent of the same fingerprint
    and version as `probe`'s, that no stored row of their model has superseded, oldest first. Read once, as the
    device's loop first looks (before it saves any of its own)."""
    side = rounds_store(store)
    try:
        files = _files_of(side, device)
        if not files:
            return {}
        rows = [r for r in side.dataset(files).to_table().to_pylist()
                if r["device_fingerprint"] == fingerprint(probe) and r["agent_version"] == probe.get("agent_version")
                and r["status"] == "ok"]
        newest = _newest(store, {r["key"] for r in rows})
    except (LatkitError, OSError, pa.ArrowException) as e:
        log.info("%s: saved rounds in %s passed over (they are timed again): %s", device, side.uri, e)
        return {}
    out: dict = {}
    for row in sorted(rows, key=lambda r: r["measured_at"]):
        if row["key"] not in newest or row["measured_at"] > newest[row["key"]]:
            out.setdefault(row["key"], []).append(row)
    return out


def take_back(job: Job, rows: list) -> list:
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
    """Whether a saved row is what a loop saves: one round, its samples and median finite and positive."""
    samples, rounds = row["samples_ms"] or [], row["round_ms"] or []
    return (row["rounds"] == 1 and len(rounds) == 1 and len(row["round_started_at"] or []) == 1 and len(samples) > 0
            and all(math.isfinite(x) and x > 0 for x in [*samples, *rounds]))


def prune(store: Store, device: str) -> bool:
    """Remove `device`'s saved rounds if a stored row of its model, measured later, supersedes every one of them
    (the files read, not the folder: only the lease holder writes there, but a file is never removed unread);
    whether it did."""
    side = rounds_store(store)
    files = _files_of(side, device)
    if not files:
        return False
    t = side.dataset(files).to_table(columns=["key", "measured_at"])
    newest = _newest(store, set(t["key"].to_pylist()))
    if any(k not in newest or at > newest[k] for k, at in zip(t["key"].to_pylist(), t["measured_at"].to_pylist())):
        return False
    for f in files:
        side.fs.delete_file(f)
    if side.local:  # the folders left empty, up to the side table's own (rmdir removes only an empty one)
        folders = set()
        for f in files:
            while (f := os.path.dirname(f)).startswith(side.root):
                folders.add(f)
        for folder in sorted(folders, key=len, reverse=True):
            try:
                os.rmdir(folder)
            except OSError:
                pass
    return True


def _files_of(side: Store, device: str) -> list:
    """The side table's live files of `device` (its folder only: other devices' rounds are never read)."""
    if not side.exists():
        return []
    folder = partition_folder(side.data, (device,)) + "/"
    return [f for f in side.files() if f.startswith(folder)]


def _newest(store: Store, keys: set) -> dict:
    """key -> when its newest stored row was measured, for those of `keys` that have one."""
    if not keys:
        return {}
    t = store.read(columns=["key", "measured_at"], filter=pc.field("key").isin(sorted(keys)))
    out: dict = {}
    for k, at in zip(t["key"].to_pylist(), t["measured_at"].to_pylist()):
        out[k] = max(out.get(k, at), at)
    return out
