"""Keeping a dataset's files few and its layout current: `latkit data compact` and `latkit data migrate`.

Compaction is safe while a collection writes: per partition folder it reads the live files and writes them as
one `compact-<id>.parquet` under a temporary name; then writes `_replaces-<id>.json` naming the files it
replaces, renames the compacted file into place, deletes the replaced files and last the manifest. latkit's
readers skip the files a manifest names once its compacted file exists, so they see each row once at every
moment. A compaction killed at any point leaves temporaries, a void manifest or replaced files: all ignored
by readers and cleaned up by the next compaction. One compaction runs at a time (a lock file on local disks).
Other readers (DuckDB, polars...) see both copies in the moment between the rename and the deletes.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from .errors import LatkitError
from .schema import FILE_SCHEMA, PARTITIONS, SCHEMA
from .store import MANIFEST, Store

ROW_GROUP = 65536  # rows per row group of a compacted file


@dataclass(frozen=True)
class CompactReport:
    files_before: int
    files_after: int
    rows: int
    leftovers_removed: int


@contextlib.contextmanager
def _compaction_lock(store: Store):
    """Exclusive while held (local disks): two compactions of one dataset would each keep every row."""
    if not store.local:
        yield
        return
    os.makedirs(store.root, exist_ok=True)
    with open(os.path.join(store.root, ".compact.lock"), "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LatkitError(f"another `latkit data compact` is running on {store.uri}; wait for it") from None
        yield


def compact(path) -> CompactReport:
    """Merge each partition's files into one file of large row groups (see the module docstring)."""
    store = Store(path)
    if not store.exists():
        raise LatkitError(f"no dataset at {path}; collect into it first")
    with _compaction_lock(store):
        infos = store.listing()
        before = len(infos)
        folders: dict = {}
        for i in infos:
            folders.setdefault(i.path.rsplit("/", 1)[0], []).append(i.path)
        removed = 0
        for folder, paths in sorted(folders.items()):
            gone = _repair(store, folder, paths)
            removed += len(gone)
            live = [p for p in paths if p not in gone]
            if len(live) < 2:
                continue
            uid = uuid.uuid4().hex
            manifest = f"{folder}/{MANIFEST}{uid}.json"
            store.write_file(folder, _row_groups(store, live), prefix="compact", uid=uid,
                             before_rename=lambda: store.write_json(manifest, [p.rsplit("/", 1)[1] for p in live]))
            for p in live:
                store.fs.delete_file(p)
            store.fs.delete_file(manifest)
    return CompactReport(before, len(store.files()), store.read(columns=["key"]).num_rows, removed)


def _row_groups(store: Store, paths: list):
    """The rows of `paths` in order, ROW_GROUP rows at a time; files are read by a few threads (a small file
    costs its footer, not its rows)."""
    def read(path):
        with store.fs.open_input_file(path) as f:
            t = pq.ParquetFile(f).read(use_threads=False)
        return t if t.schema.equals(FILE_SCHEMA) else t.cast(FILE_SCHEMA)

    buf, n = [], 0
    with ThreadPoolExecutor(min(16, os.cpu_count() or 1)) as pool:
        for start in range(0, len(paths), 4096):  # bounded memory: one chunk of files in flight
            for t in pool.map(read, paths[start:start + 4096]):
                buf.append(t)
                n += t.num_rows
                if n >= ROW_GROUP:
                    yield pa.concat_tables(buf)
                    buf, n = [], 0
    if buf:
        yield pa.concat_tables(buf)


def _repair(store: Store, folder: str, paths: list) -> set:
    """Finish what a killed compaction left in `folder` (we hold the lock, so no other one is running): delete
    the files a present compacted file replaces, then every manifest and half-written compacted file.
    Returns the replaced files deleted."""
    infos = store.fs.get_file_info(pafs.FileSelector(folder))
    manifests = [i.path for i in infos if i.base_name.startswith(MANIFEST) and i.base_name.endswith(".json")]
    gone = store.replaced(paths, manifests)
    for p in sorted(gone):
        store.fs.delete_file(p)
    for i in infos:
        if i.path in manifests or (i.base_name.startswith((".compact-", f".{MANIFEST}")) and
                                   i.base_name.endswith(".tmp")):
            store.fs.delete_file(i.path)
    return gone


def migrate(path) -> dict:
    """Move a dataset of the older layout (Hive folders beside the card, `_devices.json`) to the current one:
    rows under `data/` with every column in every file, one file per partition, probes under `devices/`;
    retest side tables too. Rows keep every value; raw samples become float32 (the schema's type).
    Returns {folder: rows}. Running it again finishes a migration that was killed."""
    root = Path(path)
    if not root.is_dir():
        raise LatkitError(f"no dataset at {path}; give a dataset folder")
    done = {str(root): _migrate_one(root)}
    for side in sorted(root.glob("_retest/*")):
        if side.is_dir():
            done[str(side)] = _migrate_one(side)
    return done


def _legacy_files(root: Path) -> list:
    return sorted(p for p in root.glob("device=*/**/*.parquet")
                  if not any(part.startswith((".", "_")) for part in p.relative_to(root).parts))


def _migrate_one(root: Path) -> int:
    store = Store(root)
    old = _legacy_files(root)
    staging = root / ".data-migrating"
    if not (root / "data").exists():
        if staging.exists():
            shutil.rmtree(staging)
        tables = [_legacy_table(root, f) for f in old]
        if tables:
            t = pa.concat_tables(tables)
            groups: dict = {}
            for i, part in enumerate(zip(*(t[p].to_pylist() for p in PARTITIONS))):
                groups.setdefault(part, []).append(i)
            for (dev, space), idx in sorted(groups.items()):
                store.write_file(f"{staging}/device={dev}/space={space}", t.take(idx))
            os.rename(staging, root / "data")  # the switch: from here on readers see the rows under data/
    for f in old:
        f.unlink()
    for d in sorted(root.glob("device=*")):
        shutil.rmtree(d)
    probes = root / "_devices.json"
    if probes.exists():
        store.record_devices(json.loads(probes.read_text()))
        probes.unlink()
    return Store(root).read(columns=["key"]).num_rows


def _legacy_table(root: Path, f: Path) -> pa.Table:
    """One file of the older layout in the current schema: partition values from its folders, missing columns
    as nulls, nothing else changed (samples cast to float32)."""
    t = pq.read_table(f)
    parts = dict(p.split("=", 1) for p in f.relative_to(root).parent.parts)
    cols = []
    for field in SCHEMA:
        if field.name in PARTITIONS:
            cols.append(pa.array([parts[field.name]] * t.num_rows, pa.string()))
        elif field.name in t.column_names:
            cols.append(t[field.name].cast(field.type))
        else:
            cols.append(pa.nulls(t.num_rows, field.type))
    return pa.Table.from_arrays(cols, schema=SCHEMA)
