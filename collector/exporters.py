"""Exporters: torch nn.Module -> ONNX, TFLite (litert-torch), torch.export .pt2 or TorchScript Artifact.

Exports are cached, each file stored under its own sha256 with an index entry `index/<key>.json` naming it.
A search-space arch is found by an ExportSpec key (space, arch, batch, resolution, format, exporter versions,
weight seed) computed without building the network, so resuming a big collection costs a file stat per
arch; any other module by a key hashing its structure, weights and inputs. An index entry records the
file's size and mtime: a file whose size changed is corrupt, one whose mtime changed is re-hashed, and
either way a corrupt file is exported again. What a converter prints is captured; when an export fails it
is kept in <cache>/logs/<key>.log, named in the error and shown with -v.

Graphs outlive weights: every ONNX export also leaves `<cache>/graphs/<sha256>.onnx`, the same file with its
large tensors' values dropped (`keep_graph`, ~1 % of the size). The cache bound evicts model files, never
these, so a graph model (`predictor fit --space onnx`) still reads every graph a big collection measured
after its weights are gone (a zoo collection writes ~30 MB of weights per network).
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import sys
import tempfile
import warnings
from functools import lru_cache
from pathlib import Path
from typing import Optional, Sequence

from .cache import DEFAULT_CACHE
from .errors import Failure, LatkitError
from .formats import CONVERTERS, EXTENSIONS
from .job import Artifact, InputSpec, sha256_file

log = logging.getLogger("latkit")

# Bump when latkit exports a (space, arch) differently in a way the package versions do not show
# (a change to a space's network, to the weight seeding or to the converters' options).
EXPORT_RECIPE = 1
GRAPHS = "graphs"  # the cache's folder of weightless ONNX graphs, named by the full file's sha256


@lru_cache(maxsize=None)
def exporter_versions(fmt: str) -> tuple:
    """(package, version) of everything that writes a `fmt` file, read from package metadata (no import)."""
    from importlib import metadata
    out = []
    for pkg in CONVERTERS[fmt]:
        try:
            out.append((pkg, metadata.version(pkg)))
        except metadata.PackageNotFoundError:
            out.append((pkg, "absent"))
    return tuple(out) + (("latkit-export-recipe", str(EXPORT_RECIPE)),)


@dataclasses.dataclass(frozen=True)
class ExportSpec:
    """Everything that determines the file exported for a search-space arch; its `key` finds the file in
    the cache without building the network. `space_options`: the space's constructor options (sorted)."""

    space: str
    arch: str
    batch_size: int
    resolution: int
    format: str
    weight_seed: int
    versions: tuple
    space_options: tuple = ()

    @property
    def key(self) -> str:
        fields = {k: v for k, v in dataclasses.asdict(self).items()}
        return "arch-" + hashlib.sha256(json.dumps(fields, sort_keys=True, default=list).encode()).hexdigest()


def export_key(module, example_inputs: Sequence, fmt: str) -> str:
    """sha256 over what determines the exported file (structure, weights, inputs, format, exporter)."""
    h = hashlib.sha256()
    h.update(f"{fmt}\n{exporter_versions(fmt)}\n{module!r}\n".encode())
    for name, t in module.state_dict().items():
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().cpu().float().contiguous().numpy().tobytes())
    for x in example_inputs:
        h.update(f"{tuple(x.shape)}{x.dtype}".encode())
    return h.hexdigest()


def cached(cache: Path, key: str, fmt: str) -> Optional[tuple]:
    """(path, sha256) of the file the index entry `key` names, if it is there and intact; marks it used."""
    index = cache / "index" / f"{key}.json"
    try:
        entry = json.loads(index.read_text())
        path = cache / f"{entry['sha256']}{EXTENSIONS[fmt]}"
        st = path.stat()
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if st.st_size != entry.get("size", st.st_size) or (
            st.st_mtime_ns != entry.get("mtime_ns") and sha256_file(path) != entry["sha256"]):
        log.warning("cached export %s is corrupt (changed since it was written); exporting it again", path.name)
        path.unlink(missing_ok=True)
        return None
    if st.st_mtime_ns != entry.get("mtime_ns"):  # intact, but touched: record the new mtime
        _write_index(index, dict(entry, mtime_ns=st.st_mtime_ns))
    else:
        os.utime(index)  # the index entry's mtime is the file's last use (bounded caches evict the oldest)
    return path, entry["sha256"]


def _write_index(index: Path, entry: dict) -> None:
    tmp = index.with_name(f".{index.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(entry))
    os.replace(tmp, index)


@contextlib.contextmanager
def _captured(log_path: Path):
    """Send fds 1 and 2 to `log_path` while converters run (litert-torch and its C++ log chatter keeps
    stdout free for results); the caller keeps the file when the export fails and deletes it otherwise."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(log_path, "wb") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def _write(module, example_inputs: tuple, fmt: str, path: str) -> None:
    import torch
    names = [f"input_{i}" for i in range(len(example_inputs))]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if fmt == "onnx":
            # The TorchScript-based exporter is ~50x faster than dynamo on small nets; dynamo is the fallback.
            try:
                torch.onnx.export(module, example_inputs, path, input_names=names, dynamo=False, opset_version=17)
            except Exception:
                # external_data=False: one self-contained file (< 2 GB); the default writes the weights to
                # `<tmp>.data`, which the rename to `<sha256>.onnx` leaves behind (the file then has no weights)
                torch.onnx.export(module, example_inputs, path, input_names=names, dynamo=True, verbose=False,
                                  external_data=False)
        elif fmt == "tflite":
            try:
                import litert_torch
            except ImportError:
                raise LatkitError("TFLite export needs litert-torch; pip install 'latkit[tflite]'") from None
            litert_torch.convert(module, example_inputs).export(path)
        elif fmt == "pt2":
            torch.export.save(torch.export.export(module, example_inputs), path)
        elif fmt == "torchscript":
            torch.jit.save(torch.jit.trace(module, example_inputs), path)


def export(module, example_inputs: Sequence, fmt: str = "onnx", space: str = "custom", arch: str = "",
           cache_dir: Optional[Path] = None) -> Artifact:
    """Export `module` (in eval mode) for `example_inputs` to `fmt`; cached by content, so repeated calls are
    free (but each hashes the module's weights: search-space archs use export_arch, which needs no network)."""
    check_format(fmt)
    example_inputs = tuple(example_inputs)
    module = module.eval()
    inputs = input_specs([tuple(x.shape) for x in example_inputs], [str(x.dtype) for x in example_inputs])
    return export_cached(Path(cache_dir or DEFAULT_CACHE), export_key(module, example_inputs, fmt), fmt,
                         lambda: (module, example_inputs), space, arch, inputs)


def check_format(fmt: str) -> None:
    if fmt not in EXTENSIONS:
        raise LatkitError(f"unknown export format {fmt!r}; choose one of {', '.join(EXTENSIONS)}")


def input_specs(shapes: Sequence[tuple], dtypes: Sequence[str]) -> tuple:
    return tuple(InputSpec(f"input_{i}", tuple(s), d.replace("torch.", ""))
                 for i, (s, d) in enumerate(zip(shapes, dtypes)))


def keep_graph(cache: Path, path: Path, sha: str, min_bytes: int = 1024) -> Path:
    """Write `<cache>/graphs/<sha>.onnx`: the ONNX file at `path` with every initializer over `min_bytes`
    declared as external data that is never written (dims and type kept, values dropped). Shape arithmetic
    keeps its small constants; predictor/graphs.py encodes it (external="shapes") as the full file."""
    import onnx
    model = onnx.load(str(path), load_external_data=False)
    for t in model.graph.initializer:
        size = t.ByteSize()
        if size > min_bytes and t.data_location != onnx.TensorProto.EXTERNAL:
            for field in ("raw_data", "float_data", "int32_data", "int64_data", "double_data", "uint64_data"):
                t.ClearField(field)
            t.data_location = onnx.TensorProto.EXTERNAL
            del t.external_data[:]
            for k, v in (("location", f"{sha}.onnx.weights-not-kept"), ("offset", "0"), ("length", str(size))):
                t.external_data.add(key=k, value=v)
    folder = cache / GRAPHS
    folder.mkdir(exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".onnx", dir=folder, prefix=".graph-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(model.SerializeToString())
        os.replace(tmp, folder / f"{sha}.onnx")
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return folder / f"{sha}.onnx"


def export_cached(cache: Path, key: str, fmt: str, make, space: str, arch: str, inputs: tuple,
                  spec: Optional[dict] = None) -> Artifact:
    """The artifact of index entry `key`; on a miss `make()` gives (module, example inputs) to export."""
    (cache / "index").mkdir(parents=True, exist_ok=True)
    hit = cached(cache, key, fmt)
    if hit:
        return Artifact(path=hit[0], sha256=hit[1], format=fmt, space=space, arch=arch, inputs=inputs)
    import torch
    module, example_inputs = make()
    fd, tmp = tempfile.mkstemp(suffix=EXTENSIONS[fmt], dir=cache, prefix=".export-")
    os.close(fd)
    (cache / "logs").mkdir(exist_ok=True)
    log_path = cache / "logs" / f"{key}.log"
    try:
        with torch.no_grad(), _captured(log_path):
            _write(module, example_inputs, fmt, tmp)
        sha = sha256_file(Path(tmp))
        path = cache / f"{sha}{EXTENSIONS[fmt]}"
        os.replace(tmp, path)
        log_path.unlink()
    except Exception as e:
        output = log_path.read_text(errors="replace").strip()
        if output:
            log.debug("%s converter output:\n%s", fmt, output)
        why = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        kept = f"; the converter's output is in {log_path}" if output else ""
        if not output:
            log_path.unlink()
        if isinstance(e, LatkitError):
            raise type(e)(f"{e}{kept}") from None
        raise Failure(f"{fmt} export of {arch or type(module).__name__} failed: {why}{kept}") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    if fmt == "onnx":
        try:
            keep_graph(cache, path, sha)
        except Exception as e:  # noqa: BLE001  (the model is exported; only its weightless copy is missing)
            log.warning("could not keep the graph of %s (%s); graph models need the file itself", path.name, e)
    st = path.stat()
    _write_index(cache / "index" / f"{key}.json", {"sha256": sha, "format": fmt, "size": st.st_size,
                                                     "mtime_ns": st.st_mtime_ns, "spec": spec})
    return Artifact(path=path, sha256=sha, format=fmt, space=space, arch=arch, inputs=inputs)
