"""The `.latkit-model` file: a model as data only, read with bounds, so that loading one runs no code from it
and no native parser on it, and a crafted file costs bounded time and memory and ends in one error line.

A zip archive (stored or deflated) of:
- `meta.json`: {"format": "latkit-model", "version": 3, "latkit": "<version that wrote it>",
  "model": "ridge" | "gbdt" | "rf" | "mlp" | "gnn" | "ensemble" | "fewshot", "params": {hyperparameters},
  "target": "latency_ms" | "energy_mj" (the column it predicts; files without it predict latency_ms)};
- `<attr>.npy`: a learned array (a number as a 0-d array), numpy's .npy format;
- `<attr>.<key>.npy`: entry <key> of a learned dict of arrays (MLP layers, the GNN's state_dict, the node
  arrays of LightGBM's trees: predictor/trees.py);
- models made of models (an ensemble, a transfer model) flatten their members' state into such keys,
  `<attr>.<member>.<member's attr>[.<key>]`.

What reading bounds and checks (tests/test_model_files.py crafts a file breaking each):
- the path: a regular file (a FIFO, a device, a socket or a folder is refused on the open descriptor, so
  nothing hangs), at most MAX_FILE bytes; a pickle (latkit's models before format 1) is refused;
- the zip: its end record read before zipfile parses the directory (at most MAX_MEMBERS members and
  MAX_DIRECTORY bytes of directory, no zip64), only the member names above (no paths, no duplicates), only
  stored or deflated members, not encrypted, each at most MAX_MEMBER bytes declared and read with that cap
  (a size header that lies ends in zipfile's CRC check), MAX_TOTAL bytes inflated in all;
- meta.json: at most MAX_META bytes, nested at most MAX_JSON_DEPTH deep, the types above;
- .npy members: the header parsed by numpy's header reader only; numbers and booleans only (no object,
  structured or string dtypes), at most 4 dimensions, MAX_ELEMENTS elements, the data exactly as long as
  the shape says;
- format 1 and versions newer than this code are refused; format 2 files (latkit 0.1 before trees were
  arrays) are read like format 3, except LightGBM's text model (`booster_.txt`), which latkit no longer
  parses: those gbdt models must be re-fitted;
- then `build(kind, params, state)` (predictor/models.py's `load`) checks hyperparameters against ranges before
  anything is allocated from them, and the arrays against each other (tree structure, shapes).
A file written by another latkit version loads with a one-line warning (as scikit-learn warns).
"""
from __future__ import annotations

import io
import json
import logging
import os
import re
import struct
import zipfile
import zlib
from importlib import metadata
from pathlib import Path

import numpy as np

from latkit.collector import validate
from latkit.collector.dataset import TARGETS
from latkit.collector.errors import LatkitError

FORMAT_VERSION = 3
MAX_FILE = 512 << 20
MAX_MEMBERS = 4096
MAX_DIRECTORY = 1 << 20
MAX_MEMBER = 256 << 20
MAX_TOTAL = 512 << 20
MAX_META = 1 << 20
MAX_JSON_DEPTH = 16
MAX_ELEMENTS = 1 << 25
_MEMBER = re.compile(r"([a-z][a-z0-9_]*_)(?:\.([A-Za-z0-9_.]+))?\.npy")  # attr[.key].npy, no path
_END = struct.Struct("<4s4H2LH")  # the zip's end-of-central-directory record
log = logging.getLogger("latkit")


def latkit_version() -> str:
    try:
        return metadata.version("latkit")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def write(path, kind: str, params: dict, state: dict, target: str = "latency_ms") -> None:
    """`state`: attribute -> array, number or dict of arrays; `target`: the column the model predicts."""
    meta = {"format": "latkit-model", "version": FORMAT_VERSION, "latkit": latkit_version(), "model": kind,
            "params": params, "target": target}
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("meta.json", json.dumps(meta, indent=1))
        for attr, value in state.items():
            if isinstance(value, dict):
                for key, v in value.items():
                    z.writestr(f"{attr}.{key}.npy", _npy(v))
            else:
                z.writestr(f"{attr}.npy", _npy(value))
    validate.write_atomic(path, buf.getvalue())  # a reader never sees half a model; a link at `path` is replaced


def _npy(arr) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.asarray(arr), allow_pickle=False)
    return buf.getvalue()


def read(path, build) -> object:
    """The model in `path`: `build(kind, params, state)` makes it from the file's data (and raises ValueError,
    TypeError or KeyError on data that does not fit); anything else is refused in one line. The model's
    `target_` is the column it predicts."""
    found = sorted(str(p) for p in Path(path).glob("models/*.latkit-model"))[:3] if Path(path).is_dir() else []
    if found:  # a dataset folder given for its model
        raise LatkitError(f"predictor file {path} is a folder, not a regular file; give one of its models: "
                          f"{', '.join(found)}")
    with os.fdopen(validate.open_regular(path, "predictor file"), "rb") as f:
        size = os.fstat(f.fileno()).st_size
        head = f.read(4)
        if head[:1] == b"\x80":  # a pickle (protocol >= 2), as latkit wrote before format 1
            raise LatkitError(f"{path} is an old pickle-based model file, which latkit no longer reads (it could "
                              "run code); re-fit with latkit predictor fit")
        if head in (b"PAR1", b"PARE"):  # the data where its model was meant
            raise LatkitError(f"{path} is not a valid latkit model but a Parquet table (rows to fit on); give the "
                              ".latkit-model file that latkit predictor fit saved")
        try:
            if size > MAX_FILE:
                raise ValueError(f"it is {size} bytes, more than a model file's {MAX_FILE}")
            _check_end(f, size)
            with zipfile.ZipFile(f) as z:
                meta, state = _read(z, path)
            try:
                model = build(meta["model"], meta["params"], state)
                model.target_ = meta.get("target", "latency_ms")
            except LatkitError as e:  # e.g. an unknown space: still this file's fault
                raise ValueError(str(e)) from None
        except KeyError as e:
            raise _invalid(path, f"it lacks learned state {e.args[0]!r}") from None
        except (OSError, EOFError, zipfile.BadZipFile, zlib.error, NotImplementedError, ValueError, TypeError,
                IndexError, RuntimeError, RecursionError, MemoryError, OverflowError) as e:
            raise _invalid(path, str(e) or type(e).__name__) from None
    if meta["latkit"] != latkit_version() and "unknown" not in (meta["latkit"], latkit_version()):
        log.warning(f"warning: {path} was written by latkit {meta['latkit']}, this is latkit {latkit_version()}; "
                    "if its predictions look wrong, re-fit it with this version")
    return model


def _invalid(path, why: str) -> LatkitError:
    return LatkitError(f"{path} is not a valid latkit model: {why}; re-fit it or get the file from its author")


def _check_end(f, size: int) -> None:
    """Bound the zip directory before zipfile parses it (it makes an object per entry it finds there): find
    the end record as zipfile does and refuse too many members, a large directory, or zip64."""
    tail_len = min(size, _END.size + 65535)
    f.seek(size - tail_len)
    tail = f.read(tail_len)
    at = len(tail) - _END.size if tail[-_END.size:-_END.size + 4] == b"PK\x05\x06" and tail[-2:] == b"\0\0" \
        else tail.rfind(b"PK\x05\x06")
    if at < 0 or at + _END.size > len(tail):
        raise ValueError("it is not a zip archive")
    _, _, _, _, members, directory, offset, _ = _END.unpack_from(tail, at)
    if b"PK\x06\x07" in tail[max(0, at - 20):at] or 0xFFFF == members or 0xFFFFFFFF in (directory, offset):
        raise ValueError("it is a zip64 archive, larger than any model file")
    if members > MAX_MEMBERS or directory > MAX_DIRECTORY:
        raise ValueError(f"its zip directory lists {members} members in {directory} bytes, more than a model "
                         f"file's {MAX_MEMBERS} members in {MAX_DIRECTORY} bytes")
    f.seek(0)


def _members(z: zipfile.ZipFile) -> list:
    """The zip's entries, checked before any is inflated: names, methods, sizes."""
    infos = z.infolist()
    names = [i.filename for i in infos]
    if len(infos) > MAX_MEMBERS or len(set(names)) != len(names):
        raise ValueError("it lists too many members or one member twice")
    total = 0
    for info in infos:
        name = info.filename
        if name.endswith(".txt") and _MEMBER.fullmatch(name[:-4] + ".npy"):
            raise ValueError(f"{name} is LightGBM's text model (model format 2), which latkit no longer parses")
        if name != "meta.json" and not _MEMBER.fullmatch(name) or len(name) > 256:
            raise ValueError(f"it holds {name[:80]!r}, which is no member of a model file")
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED) or info.flag_bits & 1:
            raise ValueError(f"{name}: compressed with method {info.compress_type} or encrypted; model files "
                             "are stored or deflated")
        cap = MAX_META if name == "meta.json" else MAX_MEMBER
        total += info.file_size
        if info.file_size > cap or total > MAX_TOTAL:
            raise ValueError(f"{name}: inflates to {info.file_size} bytes ({total} so far), more than a model "
                             f"file's {cap} per member and {MAX_TOTAL} in all")
    if "meta.json" not in names:
        raise ValueError("it has no meta.json")
    return infos


def _inflate(z: zipfile.ZipFile, info) -> bytes:
    """A member's bytes, never more than its checked size: zipfile stops there and checks the CRC."""
    with z.open(info) as m:
        data = m.read(info.file_size + 1)
    if len(data) != info.file_size:
        raise ValueError(f"{info.filename}: holds {len(data)} bytes, not the {info.file_size} its header says")
    return data


def _read(z: zipfile.ZipFile, path) -> tuple:
    infos = _members(z)
    meta = _meta(_inflate(z, next(i for i in infos if i.filename == "meta.json")), path)
    state = {}
    for info in infos:
        if info.filename == "meta.json":
            continue
        attr, key = _MEMBER.fullmatch(info.filename).groups()
        arr = _array(info.filename, _inflate(z, info))
        value = arr.item() if arr.ndim == 0 else arr
        if key:
            if not isinstance(state.setdefault(attr, {}), dict):
                raise ValueError(f"{info.filename}: {attr} is both an array and a dict of arrays")
            state[attr][key] = value
        elif attr in state:
            raise ValueError(f"{info.filename}: {attr} is both an array and a dict of arrays")
        else:
            state[attr] = value
    return meta, state


def _depth(obj) -> int:
    """How deep JSON data nests, without recursion."""
    depth, level = 0, [obj]
    while level:
        depth += 1
        if depth > MAX_JSON_DEPTH:
            break
        level = [v for o in level if isinstance(o, (dict, list)) for v in (o.values() if isinstance(o, dict) else o)]
    return depth


def _meta(data: bytes, path) -> dict:
    try:
        meta = json.loads(data)
    except RecursionError:
        raise ValueError("meta.json nests deeper than any model's metadata") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"meta.json is not JSON ({e})") from None
    if _depth(meta) > MAX_JSON_DEPTH:
        raise ValueError(f"meta.json nests deeper than {MAX_JSON_DEPTH} levels")
    if not isinstance(meta, dict) or meta.get("format") != "latkit-model":
        raise ValueError("its meta.json does not describe a latkit model")
    version = meta.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ValueError(f"its format version {version!r} is not one latkit ever wrote")
    if version == 1:
        raise LatkitError(f"{path} is model format 1, from a latkit whose models were not yet scikit-learn "
                          "estimators; re-fit it with latkit predictor fit")
    if version > FORMAT_VERSION:
        raise LatkitError(f"{path} is model format {version}, newer than this latkit reads ({FORMAT_VERSION}); "
                          "upgrade latkit, or re-fit the model with this one")
    for key, types in (("latkit", str), ("model", str), ("params", dict)):
        if not isinstance(meta.get(key), types):
            raise ValueError(f"meta.json: its {key!r} is no JSON {'object' if types is dict else 'string'}")
    if meta.get("target", "latency_ms") not in TARGETS:
        raise ValueError(f"meta.json: its target {str(meta['target'])[:40]!r} is none of {', '.join(TARGETS)}")
    return meta


def _array(name: str, data: bytes) -> np.ndarray:
    """A .npy member as a native-order array of numbers, its header checked before anything is allocated."""
    buf = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(buf)
        if version not in ((1, 0), (2, 0)):
            raise ValueError(f".npy version {version}")
        header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = header(buf, max_header_size=4096)
    except (ValueError, TypeError, SyntaxError, RecursionError, MemoryError) as e:
        raise ValueError(f"{name}: its .npy header does not parse ({str(e)[:120]})") from None
    if dtype.hasobject or dtype.fields is not None or dtype.subdtype is not None or dtype.kind not in "biuf":
        raise ValueError(f"{name}: its dtype {str(dtype)[:40]} is not a number type")
    if len(shape) > 4 or any(d < 0 for d in shape) or np.prod(shape, dtype=object) > MAX_ELEMENTS:
        raise ValueError(f"{name}: its shape {shape} is larger than any model array ({MAX_ELEMENTS} elements)")
    count = int(np.prod(shape, dtype=object))
    if count * dtype.itemsize != len(data) - buf.tell():
        raise ValueError(f"{name}: holds {len(data) - buf.tell()} data bytes, not the {count * dtype.itemsize} its "
                         f"shape {shape} needs")
    arr = np.frombuffer(data, dtype, count, buf.tell()).reshape(shape, order="F" if fortran else "C")
    return arr.astype(dtype.newbyteorder("="), order="C")  # a writable copy in native order


def is_model_file(path) -> bool:
    """Whether `path` is a regular file holding a latkit model's metadata (any format version), read with
    the bounds above; what it holds beyond that is not checked."""
    try:
        with os.fdopen(validate.open_regular(path, "file"), "rb") as f:
            size = os.fstat(f.fileno()).st_size
            _check_end(f, size)
            with zipfile.ZipFile(f) as z:
                info = z.getinfo("meta.json")
                return info.file_size <= MAX_META and json.loads(_inflate(z, info)).get("format") == "latkit-model"
    except (LatkitError, OSError, EOFError, zipfile.BadZipFile, zlib.error, NotImplementedError, ValueError,
            KeyError, RecursionError, AttributeError):
        return False


def check_output(path, advice: str) -> None:
    """Refuse to save a model over anything but a model file: `fit --out` given a user's other file by
    mistake must not destroy it, and writing to a FIFO would hang."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return
    except OSError as e:
        raise LatkitError(f"cannot write {path}: {e.strerror or e}; {advice}") from None
    kind = validate.special(mode)
    if kind or not is_model_file(path):
        raise LatkitError(f"cannot write {path}: it is {kind or 'a file but no latkit model'}, which latkit does "
                          f"not overwrite; {advice}")
