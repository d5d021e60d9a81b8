"""One place that checks what users give latkit: names that become paths, numbers, and outputs.

The Python API (Settings, Device, Store, collect_space) and the CLI (through the argparse types `arg_whole`,
`arg_number` and `arg_cores`) call the same checks, so a bad value gets the same one-line answer either way,
and gets it before any exporting, timing or training starts.
"""
from __future__ import annotations

import argparse
import errno
import math
import os
import re
import stat
import tempfile
from pathlib import Path
from typing import Optional

from .errors import LatkitError

# One path component, never "." or ".." or hidden: device, space and dataset names become folder and file
# names (device_=<name>/space_=<name>/, <space>-<device>.latkit-model).
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


def name(value, what: str) -> str:
    """`value` if it is safe as one path component, else a LatkitError naming `what`."""
    if not isinstance(value, str) or not NAME.fullmatch(value):
        raise LatkitError(f"{what} {value!r} is not a valid name; use up to 128 letters, digits, '.', '_' or '-', "
                          "starting with a letter or digit")
    return value


# Folder values a Hive reader would type as a number or date (pyarrow: 007 and 0x1f as int32; DuckDB: 2024-01-01
# and inf as DATE, 12345678901 as BIGINT): the folder key's column (device_) would then hold another type than the
# file's string column (device), and differ in type from one dataset, or one reader, to the next.
_TYPED = re.compile(r"[0-9]+|0[xX][0-9A-Fa-f]+|[0-9]{4}-[0-9]{2}-[0-9]{2}.*|inf(inity)?", re.IGNORECASE)


def partition(value, what: str) -> str:
    """`value` if it can name a partition folder (device_=<value>, space_=<value>): a name that no Hive reader
    reads as a number or a date."""
    name(value, what)
    if _TYPED.fullmatch(value):
        raise LatkitError(f"{what} {value!r} is not a valid name: Hive readers of datasets would read it as a number "
                          "or a date; rename it (e.g. dev-" + value + ")")
    return value


def _bounds(lo=None, hi=None, lo_open=False, hi_open=False) -> str:
    text = lambda x: f"{x:g}" if isinstance(x, float) else str(x)  # noqa: E731
    parts = ([f"{'>' if lo_open else '>='} {text(lo)}"] if lo is not None else []) + \
            ([f"{'<' if hi_open else '<='} {text(hi)}"] if hi is not None else [])
    return " and ".join(parts)


def whole(value, what: str, lo: Optional[int] = None, hi: Optional[int] = None) -> int:
    """`value` if it is an int (not a bool) within [lo, hi]."""
    if isinstance(value, bool) or not isinstance(value, int) or (lo is not None and value < lo) \
            or (hi is not None and value > hi):
        raise LatkitError(f"{what} must be a whole number {_bounds(lo, hi)}, got {value!r}".strip())
    return value


def number(value, what: str, lo: Optional[float] = None, hi: Optional[float] = None, lo_open: bool = False,
           hi_open: bool = False) -> float:
    """`value` as a float if it is a finite real number within the bounds (open bounds exclude the ends)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok and lo is not None:
        ok = value > lo if lo_open else value >= lo
    if ok and hi is not None:
        ok = value < hi if hi_open else value <= hi
    if not ok:
        raise LatkitError(f"{what} must be a finite number {_bounds(lo, hi, lo_open, hi_open)}, got {value!r}".strip())
    return float(value)


def arg_whole(lo: Optional[int] = None, hi: Optional[int] = None):
    """An argparse type for whole numbers in [lo, hi]; argparse names the option in the error."""
    def whole_number(text: str) -> int:
        try:
            return whole(int(text), "", lo, hi)
        except (ValueError, LatkitError):
            raise argparse.ArgumentTypeError(f"must be a whole number {_bounds(lo, hi)}, got {text!r}") from None
    return whole_number


MAX_INPUT_ELEMENTS = 2 ** 28  # 1 GB of float32: an input beyond it is a typo, not a model to time


SHAPE = f"a shape such as 1x3x224x224 (1-8 whole dimensions >= 1, at most {MAX_INPUT_ELEMENTS} elements)"


def shape(dims) -> tuple:
    """An input shape as a tuple of whole dimensions, else a LatkitError."""
    ok = (isinstance(dims, (list, tuple)) and 1 <= len(dims) <= 8
          and all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in dims))
    if not ok or math.prod(dims) > MAX_INPUT_ELEMENTS:
        raise LatkitError(f"an input shape must be {SHAPE}; got {dims!r}")
    return tuple(dims)


def arg_shape(text: str) -> tuple:
    """An argparse type for an input shape, `1x3x224x224`."""
    try:
        return shape(tuple(int(d) for d in text.lower().split("x")))
    except (ValueError, LatkitError):
        raise argparse.ArgumentTypeError(f"must be {SHAPE}, got {text!r}") from None


def arg_number(lo: Optional[float] = None, hi: Optional[float] = None, lo_open: bool = False, hi_open: bool = False):
    """An argparse type for finite numbers within the bounds."""
    def finite_number(text: str) -> float:
        try:
            return number(float(text), "", lo, hi, lo_open, hi_open)
        except (ValueError, LatkitError):
            raise argparse.ArgumentTypeError(f"must be a finite number {_bounds(lo, hi, lo_open, hi_open)}, "
                                             f"got {text!r}") from None
    return finite_number


MAX_CPU_ID = 8191  # Linux builds for at most 8192 CPUs


def arg_cores(text: str) -> tuple:
    """An argparse type for CPU ids separated by commas ("0", "2,3")."""
    try:
        return tuple(whole(int(c), "", 0, MAX_CPU_ID) for c in text.split(","))
    except (ValueError, LatkitError):
        raise argparse.ArgumentTypeError(f"takes CPU ids (0 to {MAX_CPU_ID}) separated by commas, e.g. 0 or 2,3; "
                                         f"got {text!r}") from None


def existing(p: Path) -> Path:
    """`p` or its nearest ancestor that exists."""
    p = p.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def cannot_create(folder: Path) -> Optional[str]:
    """Why files cannot be made in `folder`, or None. An existing folder is tried with a temporary file; a
    missing one is not created (a refusal later must leave nothing behind): its nearest existing ancestor must
    be a folder this process may write."""
    base = existing(folder)
    if base != folder.absolute():
        if not base.is_dir():
            return os.strerror(errno.ENOTDIR)
        return None if os.access(base, os.W_OK | os.X_OK) else os.strerror(errno.EACCES)
    if not base.is_dir():
        return "it is a file"
    try:
        tempfile.TemporaryFile(dir=folder).close()
    except OSError as e:
        return e.strerror or str(e)
    return None


def _create_in(folder: Path, target: Path, advice: str, blocker: str) -> None:
    """A LatkitError about `target` unless files can be made in `folder`; `blocker` names what is in the way
    when a file stands where the folder should be."""
    why = cannot_create(folder)
    if why == "it is a file":
        raise LatkitError(f"cannot write {target}: {blocker} is a file; {advice}")
    if why:
        raise LatkitError(f"cannot write {target}: {why}; {advice}")


def writable_dir(path, advice: str) -> Path:
    """`path` as a folder that accepts new files (made by whoever writes there first), else a LatkitError ending
    in `advice` (what to do, e.g. "give --out a writable folder")."""
    p = Path(path)
    _create_in(p, p, advice, "it")
    return p


def writable_file(path, advice: str) -> Path:
    """`path` as a file that can be written (its folder made by the writer), else a LatkitError."""
    p = Path(path)
    if p.is_dir():
        raise LatkitError(f"cannot write {p}: it is a folder; {advice}")
    _create_in(p.parent, p, advice, str(p.parent))
    return p


SPECIAL = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
           (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def special(mode: int) -> str:
    """What a file of `mode` is when it is no regular file ("a FIFO", "a folder", ...), else ""."""
    return next((what for test, what in SPECIAL if test(mode)), "" if stat.S_ISREG(mode) else "no regular file")


def open_regular(path, what: str) -> int:
    """A read-only descriptor of `path` if it is a regular file, else a LatkitError naming `what`. Opened
    non-blocking and checked on the descriptor: a FIFO would otherwise hang the reader, /dev/zero never ends,
    and a check before opening could be raced."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        why = "a symlink loop" if e.errno == errno.ELOOP else e.strerror or str(e)
        raise LatkitError(f"cannot read {what} {path}: {why}; check the path") from None
    kind = special(os.fstat(fd).st_mode)
    if kind:
        os.close(fd)
        raise LatkitError(f"{what} {path} is {kind}, not a regular file; give a file")
    return fd


# First bytes of the files latkit's commands take, so a file given to the wrong command is named for what it is.
MAGIC = ((b"PAR1", "a Parquet table"), (b"PARE", "a Parquet table"), (b"\x08", "an ONNX model"),
         (b"PK\x03\x04", "a zip archive"))


def file_kind(path) -> str:
    """What a regular file's first bytes say it is ("a Parquet table", "a text file", ...), "a file" when they
    say nothing: the error for a dataset given as a predictor, or the reverse, names what was given."""
    try:
        with os.fdopen(open_regular(path, "file"), "rb") as f:
            head = f.read(512)
    except (LatkitError, OSError):
        return "a file"
    if head.startswith(b"PK\x03\x04") and str(path).endswith(".latkit-model"):
        return "a latkit predictor file (give it to latkit predictor predict --model)"
    kind = next((what for magic, what in MAGIC if head.startswith(magic)), None)
    if kind or not head:
        return kind or "an empty file"
    text = b"\0" not in head and head.decode(errors="replace").count("\ufffd") <= 3  # 512 bytes may cut a character
    return "a text file" if text else "a file"


def readable_file(path, what: str) -> Path:
    """`path` if it is a regular file this process can read, else a LatkitError naming `what`."""
    p = Path(path)
    os.close(open_regular(p, what))
    return p


def read_bytes(path, what: str, limit: int) -> bytes:
    """The contents of the regular file `path`, refused in one line past `limit` bytes (checked on what is
    read, not only on the size the file system reports)."""
    p = Path(path)
    with os.fdopen(open_regular(p, what), "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise LatkitError(f"{what} {p} is larger than {limit / 2 ** 20:g} MB; that is no file latkit wrote")
    return data


def write_atomic(path, data) -> Path:
    """Write `data` (bytes or text) to `path` (its folder made if missing) through a temporary file in its folder
    and a rename: a symlink standing at `path` is replaced, never followed, and no reader sees half a file."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return p


def own_folder(root, folder, advice: str) -> Path:
    """`folder` (inside the dataset `root`) as a writable folder that stays inside `root`: a symlink there that
    leads elsewhere is refused, so nothing generated from a shared dataset lands outside it."""
    root, p = Path(root), Path(folder)
    if p.is_symlink() or not p.resolve().is_relative_to(root.resolve()):
        raise LatkitError(f"{p} is a symbolic link out of the dataset {root}; remove it or {advice}")
    return writable_dir(p, advice)
