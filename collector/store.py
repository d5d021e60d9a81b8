"""The Parquet store: a dataset folder with its rows under `data/` and everything else beside it.

    <dataset>/data/device_=<d>/space_=<s>/part-<uuid>.parquet   rows, the full schema in every file
    <dataset>/devices/<device>-<fingerprint>.json                the probe behind each fingerprint
    <dataset>/README.md, plots/, _retest/<stamp>/                card, figures, retest side tables
    <dataset>/_reference/                                        the reference's A/A checks (collector/reference.py)
    <dataset>/_rounds/                                           rounds of models not yet stored (collector/rounds.py)

So pyarrow, pandas, DuckDB, polars and Hugging Face `datasets` read `<dataset>/data` as it is, with no options:
`device` and `space` are plain-string columns of every file, and the folder keys (`device_`, `space_`) are other
names, so a Hive reader's own columns for them never clash with the files' (collector/schema.py FOLDER_KEYS).
A partition value never looks like a number or a date (validate.partition), so no reader types a folder key as
one. latkit reads every file under `data/` whatever its folder, so rows in the `device=<d>/space=<s>/` folders of
an older latkit read with the rest until `latkit data migrate` moves them. Rows are never rewritten in place: each
write is a batch of rows to a dot-prefixed temporary file (readers ignore it) renamed into place, so a crash
leaves the whole file or none of it. Compaction (collector/compact.py) writes `compact-<id>.parquet` files and,
while it runs, a manifest naming the files each replaces; latkit's readers skip replaced files, so they see old
or new rows, never both. Any pyarrow filesystem URI works (a local path, file://, s3://, gs://, hdfs://); on
object stores the final move is the store's copy-then-delete, still never visible half-written. The columns:
collector/schema.py.
"""
from __future__ import annotations

import json
import os
import shutil
import threading
import time
import uuid
from pathlib import Path
from typing import Callable, Iterable, Optional

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from . import validate
from .errors import LatkitError
from .measurement import PERMANENT_ERRORS
from .schema import FILE_SCHEMA, FOLDER_KEYS, PARTITIONS, SCHEMA

MANIFEST = "_replaces-"  # `_replaces-<id>.json`: the file names `compact-<id>.parquet` replaces (collector/compact.py)
_READ_TRIES = 20  # a concurrent compaction may remove files between listing and reading: list again
_READ_CHUNK = 1000  # files per scan: bounds a read's memory on datasets of many small files


def _castable(have: pa.DataType, want: pa.DataType) -> bool:
    """Whether a column read as `have` can stand for latkit's `want` (a null column always can)."""
    if have == want or pa.types.is_null(have):
        return True
    try:
        pa.array([], type=have).cast(want)
        return True
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return False


def foreign_columns(schema: pa.Schema) -> Optional[str]:
    """Why rows of `schema` are not latkit's (no key or status column, a column of another type); None if
    they are."""
    missing = {"status", "key"} - set(schema.names)
    if missing:
        return f"no {' and no '.join(sorted(missing))} column"
    clash = [n for n in schema.names if n in FILE_SCHEMA.names
             and not _castable(schema.field(n).type, FILE_SCHEMA.field(n).type)]
    return f"column {clash[0]} is {schema.field(clash[0]).type}, not {FILE_SCHEMA.field(clash[0]).type}" \
        if clash else None


def partition_folder(base: str, values: tuple) -> str:
    """`<base>/device_=<d>/space_=<s>`, the folder of the rows whose PARTITIONS hold `values`."""
    return "/".join([base, *(f"{k}={v}" for k, v in zip(FOLDER_KEYS, values))])


def no_dataset(uri, hint: str) -> LatkitError:
    """The error for a dataset path that holds none: `no dataset at URI; HINT`, or, for a file there, what the file
    is (a predictor file or a Parquet table given to `data show` must not be told to measure into it)."""
    if "://" not in str(uri) and Path(uri).is_file():
        return LatkitError(f"{uri} is {validate.file_kind(uri)}, not a latkit dataset; give the dataset's folder (the "
                           "--out of collect or measure, which holds data/)")
    return LatkitError(f"no dataset at {uri}; {hint}")


def check_row(row: dict) -> None:
    """Reject a row that would be stored wrong: from_pylist drops unknown keys silently (a typo would become a
    null column), and the partition values become folder names."""
    extra = set(row) - set(SCHEMA.names)
    if extra:
        raise ValueError(f"row keys not in the schema: {sorted(extra)}")
    for part in PARTITIONS:
        validate.partition(row.get(part), part)


def _check_tree(folder: str, uri: str) -> None:
    """A local dataset's `data/` holds folders and regular files only: a symlink could loop (every file read
    dozens of times) or lead out of the dataset, a FIFO would hang a reader. Each is named in one line."""
    def refuse(path: str, why: str):
        raise LatkitError(f"{path} {why}; a dataset's data/ holds only folders and regular files: remove it from "
                          f"{uri}")
    if os.path.isfile(folder):
        refuse(folder, "is a file, not the folder of rows")
    stack = [folder]
    while stack:
        top = stack.pop()
        try:
            entries = list(os.scandir(top))
        except FileNotFoundError:
            continue
        except OSError as e:
            raise LatkitError(f"cannot read {top}: {e.strerror or e}; fix its permissions") from None
        for e in entries:
            if e.is_symlink():
                refuse(e.path, "is a symbolic link")
            if e.is_dir(follow_symlinks=False):
                stack.append(e.path)
            elif not e.is_file(follow_symlinks=False):
                refuse(e.path, "is not a regular file (a FIFO, socket or device)")


class Store:
    """Append rows, read them back, and tell which job keys are already measured."""

    def __init__(self, uri: str | os.PathLike = "latkit-data"):
        self.uri = str(uri)
        if not self.uri.strip():  # '' would be the current folder: never a dataset by accident
            raise LatkitError("the dataset path is empty; give a folder or URI (--out DIR)")
        try:
            self.fs, self.root = pafs.FileSystem.from_uri(self.uri)
        except (pa.ArrowInvalid, ValueError):  # a plain relative path
            self.fs, self.root = pafs.LocalFileSystem(), str(Path(self.uri).absolute())
        except OSError as e:  # s3://no-such-bucket, an unreachable endpoint, missing credentials
            raise LatkitError(f"cannot open dataset {self.uri}: {str(e).splitlines()[0]}; check the URI, the "
                              "network and the credentials") from None
        self.root = self.root.rstrip("/")
        self.data = f"{self.root}/data"
        self._layout_ok = False

    @property
    def local(self) -> bool:
        return isinstance(self.fs, pafs.LocalFileSystem)

    def side(self, name: str) -> "Store":
        """The side table `<dataset>/<name>/` (the reference's checks, saved rounds, a retest): a dataset of its own
        on this one's filesystem, below its root; its URI opens it again (`Store(side.uri)`, as a Ray worker does)."""
        side = object.__new__(Store)
        side.fs, side.root, side.uri = self.fs, f"{self.root}/{name}", self.uri_of(name)
        side.data, side._layout_ok = f"{side.root}/data", False
        return side

    def uri_of(self, rel: str) -> str:
        """`<dataset>/<rel>` as a path or URI a user can give latkit: a URI's query string (`?endpoint_override=`)
        stays at its end."""
        if self.local:
            return f"{self.root}/{rel}"
        base, _, query = self.uri.partition("?")
        return f"{base.rstrip('/')}/{rel}" + (f"?{query}" if query else "")

    def read_bytes(self, rel: str, what: str, limit: int) -> Optional[bytes]:
        """`<dataset>/<rel>` (a card, a retest's figures: files of a dataset that may come from elsewhere), None if
        there is none; refused in one line past `limit` bytes, or where a local one is a link or no regular file."""
        if self.local:
            p = Path(self.root, rel)
            return validate.read_bytes(p, what, limit) if p.exists() or p.is_symlink() else None
        try:
            with self.fs.open_input_stream(f"{self.root}/{rel}") as f:
                data = f.read(limit + 1)
        except FileNotFoundError:
            return None
        except OSError as e:  # a folder of that name, an object store that refuses
            raise LatkitError(f"cannot read {what} {self.uri_of(rel)}: {str(e).splitlines()[0]}") from None
        if len(data) > limit:
            raise LatkitError(f"{what} {self.uri_of(rel)} is larger than {limit / 2 ** 20:g} MB; that is no file "
                              "latkit wrote")
        return data

    def write_bytes(self, rel: str, data, advice: str) -> Path | str:
        """Write `<dataset>/<rel>` whole or not at all (a local link there is replaced, never followed; a local
        `rel` never leads out of the dataset); its Path, or its URI on a remote filesystem. `advice`: what to do
        when it cannot be written."""
        if self.local:
            p = Path(self.root, rel)
            if p.parent != Path(self.root):  # plots/: a link there out of the dataset is refused
                validate.own_folder(self.root, p.parent, advice)
            return validate.write_atomic(validate.writable_file(p, advice), data)
        try:
            self._put(f"{self.root}/{rel}", data.encode() if isinstance(data, str) else data)
        except OSError as e:
            raise LatkitError(f"cannot write {self.uri_of(rel)}: {str(e).splitlines()[0]}; {advice}") from None
        return self.uri_of(rel)

    def folders(self, rel: str) -> list:
        """The names of the folders in `<dataset>/<rel>`, sorted ([] where there is none)."""
        try:
            infos = self.fs.get_file_info(pafs.FileSelector(f"{self.root}/{rel}".rstrip("/"), allow_not_found=True))
        except OSError:  # a file of that name
            return []
        return sorted(i.base_name for i in infos if i.type == pafs.FileType.Directory)

    def legacy(self) -> bool:
        """Whether the folder holds rows in the layout before `data/` (Hive folders beside the card)."""
        try:
            infos = self.fs.get_file_info(pafs.FileSelector(self.root))
        except (FileNotFoundError, OSError):
            return False
        return any(i.base_name.startswith("device=") or i.base_name == "_devices.json" for i in infos)

    def _check_layout(self) -> None:
        if not self._layout_ok:
            if self.legacy():
                raise LatkitError(f"{self.uri} has the layout of an older latkit (rows beside the card); run "
                                  f"`latkit data migrate {self.uri}` once")
            self._layout_ok = True

    def check_writable(self, min_free_mb: int = 64, advice: str = "choose another --out") -> None:
        """Fail before any device time is spent if rows could not be kept (unwritable, or a full local disk). A
        local dataset that does not exist yet is not made here (its first write makes it), so a refusal after
        this check leaves no folder behind. `advice`: what to do instead."""
        if self.local and not os.path.isdir(self.root):
            why = validate.cannot_create(Path(self.root))
            if why:
                raise LatkitError(f"cannot write to {self.uri}: {why}; {advice}")
        else:
            probe = f"{self.root}/.latkit-write-test-{uuid.uuid4().hex}"
            try:
                self.fs.create_dir(self.root, recursive=True)
                with self.fs.open_output_stream(probe) as f:
                    f.write(b"ok")
                self.fs.delete_file(probe)
            except OSError as e:
                reason = e.strerror if getattr(e, "strerror", None) else str(e).splitlines()[0]
                raise LatkitError(f"cannot write to {self.uri}: {reason}; {advice}") from None
            self._check_layout()
        if self.local:
            usage = shutil.disk_usage(validate.existing(Path(self.root)))
            if usage.total == 0:  # /proc, /sys: no storage at all
                raise LatkitError(f"cannot write to {self.uri}: it is on a filesystem without storage; {advice}")
            if usage.free // 2 ** 20 < min_free_mb:
                raise LatkitError(f"only {usage.free // 2 ** 20} MiB free at {self.uri}; free some space or {advice}")

    def append(self, rows: Iterable[dict]) -> int:
        """Write rows now, one new file per partition; returns the number written."""
        rows = list(rows)
        for row in rows:
            check_row(row)
        if not rows:
            return 0
        self._check_layout()
        table = pa.Table.from_pylist(rows, schema=SCHEMA)
        groups: dict = {}
        for i, part in enumerate(zip(*(table[p].to_pylist() for p in PARTITIONS))):
            groups.setdefault(part, []).append(i)
        for part, idx in groups.items():
            self.write_file(partition_folder(self.data, part), table.take(idx))
        return table.num_rows

    def write_file(self, folder: str, tables, prefix: str = "part", uid: Optional[str] = None,
                   before_rename: Optional[Callable[[], None]] = None) -> str:
        """A table (or an iterable of tables, one row group each) as one new file `<prefix>-<uid>.parquet` in
        `folder`, written under a temporary name and renamed into place (`before_rename` runs just before)."""
        name = f"{prefix}-{uid or uuid.uuid4().hex}.parquet"
        tmp, final = f"{folder}/.{name}.tmp", f"{folder}/{name}"
        self.fs.create_dir(folder, recursive=True)
        with self.fs.open_output_stream(tmp) as out, pq.ParquetWriter(out, FILE_SCHEMA, compression="zstd") as w:
            for t in [tables] if isinstance(tables, pa.Table) else tables:
                w.write_table(t.cast(FILE_SCHEMA), row_group_size=max(1, t.num_rows))
        if before_rename:
            before_rename()
        self.fs.move(tmp, final)
        return final

    def write_json(self, path: str, doc) -> None:
        """`doc` as JSON at `path`, whole or not at all (temporary file, then rename)."""
        self._put(path, json.dumps(doc, indent=1, sort_keys=True).encode())

    def _put(self, path: str, data: bytes) -> None:
        """`data` at `path` on the dataset's filesystem through a temporary file beside it and a move."""
        tmp = f"{path.rsplit('/', 1)[0]}/.{path.rsplit('/', 1)[1]}.{uuid.uuid4().hex}.tmp"
        try:
            with self.fs.open_output_stream(tmp) as f:
                f.write(data)
            self.fs.move(tmp, path)
        except OSError:
            try:  # no temporary file left behind
                self.fs.delete_file(tmp)
            except OSError:
                pass
            raise

    def writer(self, max_rows: int = 256, max_seconds: float = 2.0) -> "BatchWriter":
        return BatchWriter(self, max_rows, max_seconds)

    def exists(self) -> bool:
        return self.fs.get_file_info(self.root).type == pafs.FileType.Directory

    def _scan(self) -> tuple:
        """(data files, compaction manifests) under `data/`: FileInfo of each Parquet file (temporaries and
        names starting with '.' or '_' excluded) and paths of `_replaces-<id>.json` manifests."""
        self._check_layout()
        if self.local:
            _check_tree(self.data, self.uri)
        try:
            infos = self.fs.get_file_info(pafs.FileSelector(self.data, recursive=True, allow_not_found=True))
        except FileNotFoundError:
            return [], []
        base, files, manifests = self.data + "/", [], []
        for i in infos:
            if i.type != pafs.FileType.File:
                continue
            if i.base_name.startswith(MANIFEST) and i.base_name.endswith(".json"):
                manifests.append(i.path)
            elif i.base_name.endswith(".parquet") and not any(
                    p.startswith((".", "_")) for p in i.path[len(base):].split("/")):
                files.append(i)
        return sorted(files, key=lambda i: i.path), sorted(manifests)

    def listing(self) -> list:
        """FileInfo of every data file under `data/`, replaced ones included."""
        return self._scan()[0]

    def replaced(self, paths: Iterable[str], manifests: Iterable[str]) -> set:
        """The paths among `paths` that a compacted file replaces (its manifest is written before the compacted
        file appears and removed after the replaced files are; one whose compacted file is absent is void)."""
        paths, out = set(paths), set()
        for m in manifests:
            folder, name = m.rsplit("/", 1)
            if f"{folder}/compact-{name[len(MANIFEST):-len('.json')]}.parquet" in paths:
                with self.fs.open_input_stream(m) as f:
                    out.update(f"{folder}/{n}" for n in json.loads(f.read()))
        return out & paths

    def files(self) -> list:
        """The dataset's live Parquet files (without those a compacted file replaces)."""
        infos, manifests = self._scan()
        paths = [i.path for i in infos]
        gone = self.replaced(paths, manifests) if manifests else set()
        return [p for p in paths if p not in gone]

    def dataset(self, files: Optional[list] = None) -> ds.Dataset:
        return ds.dataset(self.files() if files is None else files, filesystem=self.fs, format="parquet",
                          schema=FILE_SCHEMA)

    def read(self, columns=None, filter=None) -> pa.Table:
        """The rows (optionally some columns, filtered). A file in the folder that latkit did not write (not
        Parquet, other columns or types, no status) is named in a LatkitError instead of read as nonsense."""
        if not self.exists():
            return SCHEMA.empty_table() if columns is None else SCHEMA.empty_table().select(columns)
        cols = None if columns is None else list(dict.fromkeys([*columns, "status"]))
        # rows with no status (a foreign file) are read whatever the filter, to be caught below
        wanted = None if filter is None else filter | pc.field("status").is_null()
        # A listing is a consistent snapshot: a compacted file is listed only once its manifest says which files
        # it replaces (those are then left out), and a replaced file vanishes only after its compacted file is
        # in place. So a read of the listed files sees old or new rows, never both; the one race is a replaced
        # file deleted before we read it, and then we list again.
        for attempt in range(_READ_TRIES):
            files = self.files()
            try:  # in chunks of files: a scan holds ~230 KB per file it reads until it ends (23 GB at 100k files)
                t = pa.concat_tables([self.dataset(files[i:i + _READ_CHUNK]).to_table(columns=cols, filter=wanted)
                                      for i in range(0, max(1, len(files)), _READ_CHUNK)])
            except FileNotFoundError:  # compacted away meanwhile
                continue
            except (pa.ArrowException, OSError):
                if attempt + 1 < _READ_TRIES and set(files) != set(self.files()):
                    continue
                raise self.foreign_file() from None
            break
        else:
            raise LatkitError(f"dataset {self.uri} kept changing while it was read; try again")
        if t["status"].null_count:
            raise self.foreign_file()
        t = t.cast(pa.schema([SCHEMA.field(n) for n in t.column_names]))
        return t if columns is None else t.select(columns)

    def foreign_file(self) -> LatkitError:
        """An error naming the first data file latkit did not write (the slow path, after a read failed)."""
        for path in self.files():
            try:
                with self.fs.open_input_file(path) as f:
                    schema = pq.read_schema(f)
            except (pa.ArrowException, OSError) as e:
                why = f"not a Parquet file ({str(e).splitlines()[0]})"
            else:
                why = foreign_columns(schema)
                if why is None:
                    continue
            return self.not_latkit(path, why)
        return LatkitError(f"dataset {self.uri} cannot be read; check that its files were written by latkit")

    def not_latkit(self, path: str, why: str) -> LatkitError:
        return LatkitError(f"{path} is not latkit data ({why}); move it out of the dataset {self.uri}")

    def record_devices(self, probes: dict) -> None:
        """Keep each device's probe beside the rows, one file per fingerprint (`devices/<device>-<fp>.json`,
        written whole and renamed: concurrent collections never rewrite each other's), so dataset cards can
        name the hardware behind a fingerprint."""
        folder = f"{self.root}/devices"
        self.fs.create_dir(folder, recursive=True)
        for fp, probe in probes.items():
            name = f"{validate.name(probe.get('device', 'unknown'), 'device')}-{validate.name(fp, 'fingerprint')}"
            self.write_json(f"{folder}/{name}.json", {"fingerprint": fp, "probe": probe})

    def devices(self) -> dict:
        """fingerprint -> probe, merged from `devices/*.json`."""
        self._check_layout()
        try:
            infos = self.fs.get_file_info(pafs.FileSelector(f"{self.root}/devices", allow_not_found=True))
        except (FileNotFoundError, OSError):
            return {}
        known = {}
        for i in sorted(infos, key=lambda i: i.path):
            if i.type != pafs.FileType.File or not i.base_name.endswith(".json") or i.base_name.startswith("."):
                continue
            try:
                with self.fs.open_input_stream(i.path) as f:
                    doc = json.loads(f.read())
                known[doc["fingerprint"]] = dict(doc["probe"])
            except (ValueError, KeyError, TypeError) as e:
                raise LatkitError(f"{i.path} is not a device probe ({type(e).__name__}: {e}); remove it (it only "
                                  "names the hardware behind a fingerprint; the next collection writes it again)"
                                  ) from None
        return known

    def done_keys(self, include_errors: bool = True) -> set:
        """Keys a re-run skips: measured ok, and (by default) failed for a reason that would only fail
        again under the same key (corrupt file, unsupported op, bad model: PERMANENT_ERRORS)."""
        return self.skip_keys(include_errors)[0]

    def skip_keys(self, include_errors: bool = True) -> tuple:
        """(done_keys, the permanent errors among them: what a re-run skips but should still name), from one read
        of the key and status columns."""
        done = pc.field("status") == "ok"
        if include_errors:
            done = done | pc.field("error_kind").isin(sorted(PERMANENT_ERRORS))
        t = self.read(columns=["key", "status"], filter=done)
        keys, status = t["key"].to_pylist(), t["status"].to_pylist()
        ok = {k for k, s in zip(keys, status) if s == "ok"}
        return set(keys), set(keys) - ok


class BatchWriter:
    """Rows buffered and written as one file per partition every `max_rows` rows or `max_seconds` after the
    first buffered row, whichever comes first (a timer thread), and on close. A crash loses at most the
    unwritten batch; resume measures exactly those again. Flush before releasing a device's lease, so
    another collection that takes it sees every row this one measured."""

    def __init__(self, store: Store, max_rows: int = 256, max_seconds: float = 2.0):
        self.store, self.max_rows, self.max_seconds = store, max_rows, max_seconds
        self._rows: list = []
        self._since = 0.0
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._error: Optional[BaseException] = None
        self._timer: Optional[threading.Thread] = None

    def add(self, row: dict) -> None:
        check_row(row)
        with self._lock:
            if self._error is not None:  # the timer's flush failed: try again now, raising if it still fails
                self._error = None
                self._flush()
            if not self._rows:
                self._since = time.monotonic()
            self._rows.append(row)
            if len(self._rows) >= self.max_rows:
                self._flush()
        if self._timer is None:
            self._timer = threading.Thread(target=self._tick, name="latkit-store-flush", daemon=True)
            self._timer.start()

    def _flush(self) -> None:
        if self._rows:
            self.store.append(self._rows)  # on OSError the rows stay buffered: close() tries again
            self._rows = []

    def _tick(self) -> None:
        while not self._closed.wait(min(0.25, self.max_seconds)):
            with self._lock:
                if self._rows and time.monotonic() - self._since >= self.max_seconds:
                    try:
                        self._flush()
                    except Exception as e:  # the owner's next add or close tries again and raises
                        self._error = e

    def flush(self) -> None:
        with self._lock:
            self._error = None
            self._flush()

    def close(self) -> None:
        self._closed.set()
        if self._timer is not None:
            self._timer.join()
        self.flush()

    def __enter__(self) -> "BatchWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
