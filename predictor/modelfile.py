"""The `.latkit-model` file: a model as data only, so that loading one can never run code from it.

A zip archive of:
- `meta.json`: {"format": "latkit-model", "version": 2, "latkit": "<version that wrote it>",
  "model": "ridge" | "gbdt" | "rf" | "mlp" | "gnn", "params": {the estimator's hyperparameters}};
- `<attr>.npy`: a learned array (a number as a 0-d array), numpy's .npy format, read with allow_pickle=False;
- `<attr>.<key>.npy`: entry <key> of a learned dict of arrays (MLP layers, the GNN's state_dict);
- `<attr>.txt`, `<attr>.<key>.txt`: learned text (the LightGBM booster, `model_to_string` format);
- models made of models (an ensemble, a transfer model) flatten their members' state into such keys,
  `<attr>.<member>.<member's attr>[.<key>]`.
Pickles, object arrays, other member names (paths included), format 1 (latkit's models before they were
scikit-learn estimators) and versions newer than this code are refused in one line.
"""
from __future__ import annotations

import io
import json
import re
import zipfile
import zlib
from importlib import metadata

import numpy as np

from latkit.collector.errors import LatkitError

FORMAT_VERSION = 2
_MEMBER = re.compile(r"([a-z][a-z0-9_]*_)(?:\.([A-Za-z0-9_.]+))?\.(npy|txt)")  # attr[.key].ext, no path


def latkit_version() -> str:
    try:
        return metadata.version("latkit")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def write(path, kind: str, params: dict, state: dict) -> None:
    """`state`: attribute -> array, number, str or dict of arrays."""
    meta = {"format": "latkit-model", "version": FORMAT_VERSION, "latkit": latkit_version(), "model": kind,
            "params": params}
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("meta.json", json.dumps(meta, indent=1))
        for attr, value in state.items():
            if isinstance(value, str):
                z.writestr(f"{attr}.txt", value)
            elif isinstance(value, dict):
                for key, v in value.items():
                    if isinstance(v, str):
                        z.writestr(f"{attr}.{key}.txt", v)
                    else:
                        z.writestr(f"{attr}.{key}.npy", _npy(v))
            else:
                z.writestr(f"{attr}.npy", _npy(value))


def read(path, build) -> object:
    """The model in `path`: `build(kind, params, state)` makes it from the file's data (and raises ValueError,
    TypeError or KeyError on data that does not fit); anything else is refused in one line."""
    try:
        with open(path, "rb") as f:
            pickled = f.read(1) == b"\x80"  # a pickle (protocol >= 2), as latkit wrote before format 1
    except OSError as e:
        raise LatkitError(f"cannot read predictor file {path}: {e.strerror}; give a file written by latkit "
                          "predictor fit") from None
    if pickled:
        raise LatkitError(f"{path} is an old pickle-based model file, which latkit no longer reads (it could "
                          "run code); re-fit with latkit predictor fit")
    try:
        with zipfile.ZipFile(path) as z:
            meta, state = _read(z, path)
        return build(meta.get("model"), meta.get("params", {}), state)
    except KeyError as e:
        raise LatkitError(f"cannot load a predictor from {path}: it lacks learned state {e.args[0]!r}; give a file "
                          "written by latkit predictor fit") from None
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error, NotImplementedError, ValueError, TypeError,
            RuntimeError) as e:
        raise LatkitError(f"cannot load a predictor from {path}: {e}; give a file written by latkit predictor "
                          "fit") from None


def _npy(arr) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.asarray(arr), allow_pickle=False)
    return buf.getvalue()


def _read(z: zipfile.ZipFile, path) -> tuple:
    names = z.namelist()
    stray = [n for n in names if n != "meta.json" and not _MEMBER.fullmatch(n)]
    if stray:
        raise ValueError(f"it holds {stray[0]!r}, which is no member of a model file")
    if "meta.json" not in names:
        raise ValueError("it has no meta.json")
    meta = json.loads(z.read("meta.json"))
    if not isinstance(meta, dict) or meta.get("format") != "latkit-model":
        raise ValueError("its meta.json does not describe a latkit model")
    version = meta.get("version")
    if not isinstance(version, int) or version < 1:
        raise ValueError(f"its format version {version!r} is not one latkit ever wrote")
    if version == 1:
        raise LatkitError(f"{path} is model format 1, from a latkit whose models were not yet scikit-learn "
                          "estimators; re-fit it with latkit predictor fit")
    if version > FORMAT_VERSION:
        raise LatkitError(f"{path} is model format {version}, newer than this latkit reads ({FORMAT_VERSION}); "
                          "upgrade latkit, or re-fit the model with this one")
    state = {}
    for name in names:
        if name == "meta.json":
            continue
        attr, key, ext = _MEMBER.fullmatch(name).groups()
        if ext == "txt":
            value = z.read(name).decode()
        else:
            arr = np.lib.format.read_array(io.BytesIO(z.read(name)), allow_pickle=False)
            value = arr.item() if arr.ndim == 0 else arr
        if key:
            state.setdefault(attr, {})[key] = value
        else:
            state[attr] = value
    return meta, state
