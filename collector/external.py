"""ONNX files whose weights lie in files beside them (`model.onnx.data`: torch.onnx.export's default). A device gets
one file, so the host packs the model and its weights into one self-contained file in the export cache, named by
its hash: the row's model_sha256 then covers the weights too, and a model whose weights file is missing or leads
out of its folder is refused on the host, before a row is stored under its key."""
from __future__ import annotations

import hashlib
import mmap
from pathlib import Path

from . import validate
from .cache import DEFAULT_CACHE
from .errors import LatkitError

# How protobuf writes a TensorProto's external_data entry {key: "location"} (field 1, 8 bytes): a file without it
# keeps every weight inside, and is read no further.
LOCATION = b"\x0a\x08location"
MAX_BYTES = 2 ** 31 - 2 ** 20  # one protobuf message (a self-contained .onnx) holds less than 2 GB


def packed(path: Path) -> Path:
    """`path` where it keeps its weights inside, else the packed copy of it and its weights files."""
    if path.suffix.lower() != ".onnx" or not _mentions_location(path):
        return path
    try:
        import onnx
        from onnx.external_data_helper import convert_model_from_external_data, load_external_data_for_model
    except ImportError:
        raise LatkitError(f"{path.name} keeps its weights in files beside it (external data), which a device does "
                          "not get; install onnx (pip install onnx) so latkit packs them into one file, or export "
                          "it with external_data=False") from None
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # onnx raises DecodeError and others: the file is not an ONNX model
        raise LatkitError(f"{path.name} is not a readable ONNX model ({str(e).splitlines()[0][:200]})") from None
    tensors = [t for t in _tensors(model.graph) if t.data_location == onnx.TensorProto.EXTERNAL]
    if not tensors:
        return path
    size = path.stat().st_size
    for name in sorted({e.value for t in tensors for e in t.external_data if e.key == "location"}):
        weights = path.parent / name
        if not weights.is_file():
            raise LatkitError(f"{path.name} keeps its weights in {name}, which is not beside it; put that file next "
                              f"to {path.name} (as the exporter wrote them) and run again")
        size += weights.stat().st_size
    if size > MAX_BYTES:
        raise LatkitError(f"{path.name} and its weights files hold {size / 2 ** 30:.1f} GB; latkit ships one "
                          "self-contained file, which ONNX caps below 2 GB")
    try:  # onnx refuses a location that is absolute, leads out of the model's folder or is a symlink
        load_external_data_for_model(model, str(path.parent))
    except Exception as e:
        raise LatkitError(f"the weights of {path.name} cannot be read ({str(e).splitlines()[0][:300]}); keep its "
                          "weights files, as the exporter wrote them, beside it") from None
    convert_model_from_external_data(model)
    data = model.SerializeToString()
    out = DEFAULT_CACHE / f"{hashlib.sha256(data).hexdigest()}.onnx"  # named as the cache names models: bounded
    if not out.is_file():
        validate.write_atomic(validate.writable_file(out, "set LATKIT_CACHE to a writable folder"), data)
    return out


def _mentions_location(path: Path) -> bool:
    if path.stat().st_size == 0:
        return False
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        return m.find(LOCATION) >= 0


def _tensors(graph):
    """Every TensorProto of a graph: initializers and tensor attributes, subgraphs (If, Loop, Scan) included."""
    yield from graph.initializer
    for node in graph.node:
        for a in node.attribute:
            if a.HasField("t"):
                yield a.t
            yield from a.tensors
            if a.HasField("g"):
                yield from _tensors(a.g)
            for g in a.graphs:
                yield from _tensors(g)
