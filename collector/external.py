"""ONNX files whose weights lie in files beside them (`model.onnx.data`: torch.onnx.export's default). A device gets
one file, so the host packs the model and its weights into one self-contained file in the export cache, named by
its hash: the row's model_sha256 then covers the weights too. A model file is data, so latkit checks every weights
reference itself before onnx reads one: a plain name of a regular file beside the model (no link, no `..`, no
absolute path), within the bytes the file holds, all of them together under ONNX's 2 GB; else it is refused on the
host in one line, before a row is stored under its key."""
from __future__ import annotations

import hashlib
import mmap
import os
import re
import stat
from pathlib import Path

from . import validate
from .cache import DEFAULT_CACHE
from .errors import LatkitError

# How protobuf writes a TensorProto's external_data entry (field 13, tag 0x6a) {key: "location"}: its tag and a
# one- or two-byte length, then the key. A file without it keeps every weight inside and is read no further.
ENTRY = re.compile(rb"\x6a(?:[\x00-\x7f]|[\x80-\xff][\x00-\x7f])\x0a\x08location")
KEYS = {"location", "offset", "length", "checksum"}  # what an external_data entry may say (onnx's own keys)
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
    if path.stat().st_size > MAX_BYTES:
        raise LatkitError(f"{path.name} is larger than 2 GB; latkit ships one self-contained .onnx, which ONNX caps "
                          "below that")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # onnx raises DecodeError and others: the file is not an ONNX model
        raise LatkitError(f"{path.name} is not a readable ONNX model ({str(e).splitlines()[0][:200]})") from None
    sparse = [s for s in model.graph.sparse_initializer
              if onnx.TensorProto.EXTERNAL in (s.values.data_location, s.indices.data_location)]
    if sparse:
        raise LatkitError(f"{path.name} keeps sparse tensors in external data, which onnx cannot pack; export it "
                          "with external_data=False")
    tensors = [t for t in _tensors(model.graph) if t.data_location == onnx.TensorProto.EXTERNAL]
    if not tensors:
        return path
    size = path.stat().st_size + sum(_checked(path, t) for t in tensors)
    if size > MAX_BYTES:
        raise LatkitError(f"{path.name} and its weights hold {size / 2 ** 30:.1f} GB; latkit ships one "
                          "self-contained file, which ONNX caps below 2 GB")
    try:
        load_external_data_for_model(model, str(path.parent))
    except Exception as e:  # onnx's own checks, after ours
        raise LatkitError(f"the weights of {path.name} cannot be read ({str(e).splitlines()[0][:300]}); keep its "
                          "weights files, as the exporter wrote them, beside it") from None
    convert_model_from_external_data(model)
    data = model.SerializeToString()
    out = DEFAULT_CACHE / f"{hashlib.sha256(data).hexdigest()}.onnx"  # named as the cache names models: bounded
    if out.is_file():
        os.utime(out)  # its last use, for the cache's least-recently-used bound
    else:
        validate.write_atomic(validate.writable_file(out, "set LATKIT_CACHE to a writable folder"), data)
    return out


def _checked(path: Path, tensor) -> int:
    """The bytes `tensor` reads from its weights file, after checking what the entry names: a plain file name or
    relative path of a regular file inside the model's folder, links refused, the range inside the file."""
    info = {e.key: e.value for e in tensor.external_data}
    name, bad = info.get("location", ""), f"{path.name} names weights"
    if set(info) - KEYS:
        raise LatkitError(f"{bad} with unknown keys {sorted(set(info) - KEYS)[:3]}; that is no exporter's file")
    parts = Path(name).parts
    if not name or Path(name).is_absolute() or ".." in parts or "\0" in name:
        raise LatkitError(f"{bad} at {name[:100]!r}, outside its folder; keep its weights files beside it")
    try:
        st, inside = os.lstat(path.parent / name), (path.parent / name).resolve().is_relative_to(path.parent.resolve())
        offset, length = int(info.get("offset", 0)), info.get("length")
        length = st.st_size - offset if length is None else int(length)
    except FileNotFoundError:
        raise LatkitError(f"{path.name} keeps its weights in {name[:100]}, which is not beside it; put that file "
                          f"next to {path.name} (as the exporter wrote them) and run again") from None
    except (OSError, ValueError) as e:
        raise LatkitError(f"{bad} at {name[:100]!r}, which cannot be read ({e}); keep its weights files, as the "
                          "exporter wrote them, beside it") from None
    if not stat.S_ISREG(st.st_mode) or not inside:
        raise LatkitError(f"{bad} at {name[:100]!r}, which is a link or no regular file; keep the weights files "
                          "themselves beside it")
    if offset < 0 or length < 0 or offset + length > st.st_size:
        raise LatkitError(f"{bad} at bytes {offset}-{offset + length} of {name[:100]}, which holds {st.st_size}; "
                          "keep its weights files, as the exporter wrote them, beside it")
    return length


def _mentions_location(path: Path) -> bool:
    if path.stat().st_size == 0:
        return False
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        return ENTRY.search(m) is not None


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
