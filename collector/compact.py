"""Keeping a dataset's files few and its layout current: `latkit data compact` and `latkit data migrate`.

Compaction is safe while a collection writes: per partition folder it reads the live files and writes them as
one `compact-<id>.parquet` under a temporary name; then writes `_replaces-<id>.json` naming the files it
replaces, renames the compacted file into place, deletes the replaced files and last the manifest. latkit's
readers skip the files a manifest names once its compacted file exists, so they see each row once at every
moment. A compaction killed at any point leaves temporaries, a void manifest or replaced files: all ignored
by readers and cleaned up by the next compaction. One compaction runs at a time (a lock file on local disks).
Other readers (DuckDB, polars...) see both copies in the moment between the rename and the deletes.
Files an older latkit wrote (fewer columns, other types) are rewritten the same way in the current schema, by
compaction and by `upgrade` (`latkit data migrate`), which first moves the partition folders of an older latkit
(`device=<d>/space=<s>/`) to the current names (`device_=<d>/space_=<s>/`), so that every reader reads all files
as one table.
"""
from __future__ import annotations

import contextlib
import errno
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

from .errors import LatkitError, need
from .reference import SIDE
from .schema import PARTITIONS, SCHEMA, conform, current
from .store import MANIFEST, Store, foreign_columns, no_dataset, partition_folder

ROW_GROUP = 65536  # rows per row group of a compacted file
CHUNK_BYTES = 128 * 2 ** 20  # files read at once, by size on disk (a single-row file is ~25 KB, mostly footer)
_IO_THREADS = 32  # deletes and remote reads wait on the disk or network: a local unlink takes ~2 ms here


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
    path = os.path.join(store.root, ".compact.lock")
    try:  # never truncated, never through a symlink: a shared dataset may hold one pointing anywhere
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0), 0o644)
    except OSError as e:
        why = "it is a symlink" if e.errno == errno.ELOOP else e.strerror
        raise LatkitError(f"cannot open the compaction lock {path}: {why}; remove it and run again") from None
    with os.fdopen(fd, "r+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LatkitError(f"another `latkit data compact` is running on {store.uri}; wait for it") from None
        yield


def compact(path) -> CompactReport:
    """Merge each partition's files into one file of large row groups in the current schema (a folder's only
    file too, if an older latkit wrote it). See the module docstring."""
    return _rewrite(path, merge=True)


def upgrade(path) -> CompactReport:
    """Rewrite the files of `data/` that an older latkit wrote (fewer columns, dictionary-encoded device and space)
    in the current schema, each folder's old files as one, with compaction's safety; current files stay."""
    return _rewrite(path, merge=False)


def _rewrite(path, merge: bool) -> CompactReport:
    store = Store(path)
    if not store.exists():
        raise no_dataset(path, "collect into it first")
    with _compaction_lock(store), ThreadPoolExecutor(_IO_THREADS) as pool:
        infos = store.listing()
        before = len(infos)
        folders: dict = {}
        for i in infos:
            folders.setdefault(i.path.rsplit("/", 1)[0], []).append(i)
        removed, deleting = 0, []
        for folder, files in sorted(folders.items()):
            gone = _repair(store, folder, [i.path for i in files], pool)
            removed += len(gone)
            live = [i for i in files if i.path not in gone]
            if not merge or len(live) < 2:  # only files of an older schema; read with pyarrow (no polars needed)
                live, read = _outdated(store, live, pool), _read_arrow
            else:
                read = _read
            if not live:
                continue
            uid = uuid.uuid4().hex
            manifest = f"{folder}/{MANIFEST}{uid}.json"
            store.write_file(folder, _row_groups(store, live, pool, read), prefix="compact", uid=uid,
                             before_rename=lambda: store.write_json(manifest, [i.base_name for i in live]))
            # the replaced files go while the next folder is read; its manifest once they are gone
            deleting.append((manifest, [pool.submit(store.fs.delete_file, i.path) for i in live]))
        for manifest, deletes in deleting:
            for d in deletes:
                d.result()
            store.fs.delete_file(manifest)
    return CompactReport(before, len(store.files()), store.read(columns=["key"]).num_rows, removed)


def _outdated(store: Store, files: list, pool: ThreadPoolExecutor) -> list:
    """The files among `files` (FileInfo) whose footer holds another schema than the current one."""
    try:
        schemas = list(pool.map(lambda i: _schema(store, i.path), files))
    except (pa.ArrowException, OSError):
        raise store.foreign_file() from None
    return [i for i, s in zip(files, schemas) if not current(s)]


def _chunks(files: list):
    """`files` in runs of at most CHUNK_BYTES (bounded memory), in order."""
    run, size = [], 0
    for i in files:
        if run and size + i.size > CHUNK_BYTES:
            yield run
            run, size = [], 0
        run.append(i)
        size += i.size
    if run:
        yield run


def _row_groups(store: Store, files: list, pool: ThreadPoolExecutor, read):
    """The rows of `files` (FileInfo), about ROW_GROUP rows at a time, conformed to the file schema."""
    buf, n = [], 0
    for run in _chunks(files):
        for t in read(store, [i.path for i in run], pool):
            buf.append(t)
            n += t.num_rows
            if n >= ROW_GROUP:
                yield pa.concat_tables(buf)
                buf, n = [], 0
    if buf:
        yield pa.concat_tables(buf)


def _read(store: Store, paths: list, pool: ThreadPoolExecutor) -> list:
    """The rows of `paths` as tables in the file schema. Polars reads many files in one multi-threaded scan: a
    single-row file costs it ~0.3 ms against ~3 ms in pyarrow, which builds a zstd context per column chunk.
    Files of one schema are read together and conformed once; the scan fails on files whose columns differ
    from the first's (written by an older latkit), and then each file's footer says which run it belongs to.
    A file that is not latkit data fails the compaction, naming it (conform would make it rows of nulls).
    Polars is the `compact` extra: a measure-only install stays small."""
    pl = need("polars", "compact", "latkit data compact")  # 0.2 s to import: not on every CLI start
    sources = paths if store.local else list(pool.map(lambda p: _bytes(store, p), paths))
    try:
        return [_conform(store, paths, sources)]
    except pl.exceptions.PolarsError:
        pass
    try:
        schemas = list(pool.map(lambda p: _schema(store, p), paths))
    except (pa.ArrowException, OSError):
        raise store.foreign_file() from None
    runs: dict = {}
    for path, source, schema in zip(paths, sources, schemas):
        runs.setdefault(schema, ([], []))
        runs[schema][0].append(path)
        runs[schema][1].append(source)
    try:
        return [_conform(store, *run) for run in runs.values()]
    except pl.exceptions.PolarsError as e:
        raise LatkitError(f"cannot read {paths[0].rsplit('/', 1)[0]}: {str(e).splitlines()[0]}") from None


def _read_arrow(store: Store, paths: list, pool: ThreadPoolExecutor) -> list:
    """The rows of `paths`, file by file with pyarrow, conformed to the file schema: for the few files an
    upgrade rewrites, without polars."""
    def one(path):
        try:
            with store.fs.open_input_file(path) as f:
                t = pq.read_table(f)
        except (pa.ArrowException, OSError) as e:
            raise store.not_latkit(path, f"not a Parquet file ({str(e).splitlines()[0]})") from None
        why = foreign_columns(t.schema)
        if why:
            raise store.not_latkit(path, why)
        return conform(t)
    return list(pool.map(one, paths))


def _conform(store: Store, paths: list, sources: list) -> pa.Table:
    """`sources` (the files at `paths`, all of one schema) read in one scan and conformed to the file schema."""
    import polars as pl
    t = pl.scan_parquet(sources, hive_partitioning=False, glob=False).collect().rechunk().to_arrow()
    why = foreign_columns(t.schema)
    if why:
        raise store.not_latkit(paths[0], why)
    return conform(t)


def _bytes(store: Store, path: str) -> bytes:
    with store.fs.open_input_stream(path) as f:
        return f.read()


def _schema(store: Store, path: str) -> pa.Schema:
    with store.fs.open_input_file(path) as f:
        return pq.read_schema(f).remove_metadata()


def _repair(store: Store, folder: str, paths: list, pool: ThreadPoolExecutor) -> set:
    """Finish what a killed compaction left in `folder` (we hold the lock, so no other one is running): delete
    the files a present compacted file replaces, then every manifest and half-written compacted file.
    Returns the replaced files deleted."""
    infos = store.fs.get_file_info(pafs.FileSelector(folder))
    manifests = [i.path for i in infos if i.base_name.startswith(MANIFEST) and i.base_name.endswith(".json")]
    gone = store.replaced(paths, manifests)
    list(pool.map(store.fs.delete_file, sorted(gone)))
    for i in infos:
        if i.path in manifests or (i.base_name.startswith((".compact-", f".{MANIFEST}")) and
                                   i.base_name.endswith(".tmp")):
            store.fs.delete_file(i.path)
    return gone


def migrate(path) -> dict:
    """Move a dataset of an older layout to the current one, retest and reference side tables too: rows beside
    the card (Hive folders, `_devices.json`) go under `data/` with every column in every file, probes under
    `devices/`;
    partition folders named like the columns (`data/device=<d>/space=<s>/`) move to `device_=<d>/space_=<s>/`;
    then files of an older schema (fewer columns, dictionary-encoded device and space) are rewritten in the
    current one (`upgrade`), so every reader reads old and new rows as one table. Rows keep every value; raw
    samples become float32 (the schema's type). Returns {folder: rows}. Running it again finishes a migration
    that was killed."""
    if not Store(path).local:  # older latkits wrote local folders; a move is many renames, which object stores lack
        raise LatkitError(f"latkit data migrate works on a local folder, and {path} is not one; copy the dataset to "
                          "a local folder, migrate it there, and copy it back")
    root = Path(path)
    if not root.is_dir():
        raise no_dataset(path, "give a dataset folder")
    done = {}
    sides = sorted(p for p in root.glob("_retest/*") if p.is_dir()) + [p for p in [root / SIDE] if p.is_dir()]
    for folder in [root] + sides:
        _migrate_one(folder)
        _move_folders(Store(folder))
        done[str(folder)] = upgrade(folder).rows
    return done


def _move_folders(store: Store) -> None:
    """Move each `data/device=<d>/space=<s>/` folder to `data/device_=<d>/space_=<s>/`: one rename, or one per
    file into a folder a collection has already made there. Every step is a rename, so a killed move leaves each
    file whole in one folder or the other (latkit reads both) and running it again finishes it. Under the
    compaction lock, after finishing a killed compaction in the folder, so a manifest never moves apart from its
    files."""
    data = Path(store.data)
    with _compaction_lock(store), ThreadPoolExecutor(_IO_THREADS) as pool:
        for old in sorted(data.glob(f"{PARTITIONS[0]}=*/{PARTITIONS[1]}=*")):
            if not old.is_dir():
                continue
            _repair(store, str(old), [str(f) for f in old.glob("*.parquet")], pool)
            new = Path(partition_folder(store.data, tuple(p.split("=", 1)[1] for p in old.relative_to(data).parts)))
            new.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.rename(old, new)  # onto no folder or an empty one
                continue
            except OSError as e:
                if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise LatkitError(f"cannot move {old} to {new}: {e.strerror}; fix its permissions") from None
            for f in sorted(old.iterdir()):
                if (new / f.name).exists():
                    raise LatkitError(f"{f} and {new / f.name} have one name; move one of them out of the dataset, "
                                      f"then run `latkit data migrate {store.uri}` again")
                os.rename(f, new / f.name)
            old.rmdir()
        for d in data.glob(f"{PARTITIONS[0]}=*"):
            if d.is_dir() and not any(d.iterdir()):
                d.rmdir()


def _legacy_files(root: Path) -> list:
    return sorted(p for p in root.glob("device=*/**/*.parquet")
                  if not any(part.startswith((".", "_")) for part in p.relative_to(root).parts))


def _migrate_one(root: Path) -> None:
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
            for part, idx in sorted(groups.items()):
                store.write_file(partition_folder(str(staging), part), t.take(idx))
            os.rename(staging, root / "data")  # the switch: from here on readers see the rows under data/
    for f in old:
        f.unlink()
    for d in sorted(root.glob("device=*")):
        shutil.rmtree(d)
    probes = root / "_devices.json"
    if probes.exists():
        store.record_devices(json.loads(probes.read_text()))
        probes.unlink()


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
