"""The reference model a device times again and again during a collection, so the host's drift shows.

Each device of a `collect` times a small fixed network at the start, every REFERENCE_EVERY_S seconds or
REFERENCE_EVERY_JOBS jobs (whichever comes first) and at the end, as an A/A pair: the same network under two
names (twins "a" and "b", a few bytes of metadata apart, so the agent loads two sessions), a round each in the
order a b b a.
Their rows (role "reference", space "reference", arch "reference-a" / "reference-b") go to a side table,
`<dataset>/_reference/`, never among the data: no reader of `data/` (latkit's, pyarrow's, a predictor's) can
mix them in. Each timing is a new row: its key adds the run and the timing's number to the job key.
collector/drift.py turns the rows into the A/A floor and the drift.

The ONNX reference is written here, protobuf field by field with numpy's seeded weights, so its bytes (and
sha256) are the same on every host and latkit version, with neither torch nor onnx installed; the other
runtimes' references are exported from the same network by torch (collector/exporters.py).
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import threading
import time
import uuid
from pathlib import Path
from typing import Optional

import numpy as np

from .errors import LatkitError, need
from .exporters import export
from .formats import EXPORT_FORMAT
from .job import Artifact, InputSpec, Job, sha256_file
from .store import Store
from .validate import write_atomic

ROLE = "reference"
SPACE = "reference"
SIDE = "_reference"  # the side table's folder in a dataset
TWINS = ("a", "b")
REFERENCE_EVERY_S = 60.0
REFERENCE_EVERY_JOBS = 25
INPUT = (1, 8, 64, 64)
# The network: three 3x3 convolutions on 64x64 (8->32->32->32 channels, ReLU), global average pool, a 32x10
# matmul: ~170 MFLOP, 1-2 ms on one CPU core, 85 KB of weights. It is held in a core's L2 cache, so it times the
# core (its clock, its share of the host) precisely and not the shared cache and memory: a small MobileNetV2 that
# overflows L2 followed one shift of real networks between passes, but its own level wandered by 1.6-3.9 % within
# runs on a quiet host (3 warnings in 4 runs) and by 5-8 % from one agent process to the next (README "Real
# networks"), more than what it was to detect.
CONVS = ((32, 8), (32, 32), (32, 32))
CLASSES = 10


def side_store(store: Store) -> Store:
    """The reference side table of the dataset `store`."""
    return store.side(SIDE)


# ---------------------------------------------------------------- the ONNX file, protobuf by hand


def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1  # int64 fields: two's complement
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _int(field: int, n: int) -> bytes:
    return _varint(field << 3) + _varint(n)


def _bytes(field: int, data) -> bytes:
    data = data.encode() if isinstance(data, str) else bytes(data)
    return _varint(field << 3 | 2) + _varint(len(data)) + data


def _tensor(name: str, array: np.ndarray) -> bytes:
    """TensorProto: dims (1), data_type FLOAT (2), name (8), raw_data little-endian (9)."""
    return b"".join(_int(1, d) for d in array.shape) + _int(2, 1) + _bytes(8, name) + \
        _bytes(9, array.astype("<f4").tobytes())


def _value_info(name: str, shape: tuple) -> bytes:
    """ValueInfoProto: name (1), type (2) = TypeProto.tensor_type (1): elem_type FLOAT (1), shape (2)."""
    dims = b"".join(_bytes(1, _int(1, d)) for d in shape)
    return _bytes(1, name) + _bytes(2, _bytes(1, _int(1, 1) + _bytes(2, dims)))


def _node(op: str, inputs, outputs, **ints) -> bytes:
    """NodeProto: input (1), output (2), name (3), op_type (4), attributes (5) of ints (8, type INTS = 7)."""
    attrs = b"".join(_bytes(5, _bytes(1, k) + b"".join(_int(8, v) for v in vs) + _int(20, 7))
                     for k, vs in ints.items())
    return b"".join(_bytes(1, i) for i in inputs) + b"".join(_bytes(2, o) for o in outputs) + \
        _bytes(3, f"{op}_{outputs[0]}") + _bytes(4, op) + attrs


def onnx_bytes(twin: str) -> bytes:
    """The reference network as ONNX (IR 7, opset 13), weights from numpy's seeded legacy generator (stable
    across numpy versions); the twins differ in the model's doc_string only."""
    rng = np.random.RandomState(0)
    nodes, inits, x = [], [], "input_0"
    for i, (cout, cin) in enumerate(CONVS):
        w = rng.standard_normal((cout, cin, 3, 3)) * np.sqrt(2.0 / (cin * 9))
        inits += [_tensor(f"w{i}", w), _tensor(f"b{i}", rng.standard_normal(cout) * 0.01)]
        nodes += [_node("Conv", [x, f"w{i}", f"b{i}"], [f"c{i}"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
                  _node("Relu", [f"c{i}"], [f"r{i}"])]
        x = f"r{i}"
    inits += [_tensor("fc", rng.standard_normal((CONVS[-1][0], CLASSES)) * 0.1)]
    nodes += [_node("GlobalAveragePool", [x], ["pool"]), _node("Flatten", ["pool"], ["flat"]),
              _node("MatMul", ["flat", "fc"], ["output_0"])]
    graph = b"".join(_bytes(1, n) for n in nodes) + _bytes(2, "latkit_reference") + \
        b"".join(_bytes(5, t) for t in inits) + _bytes(11, _value_info("input_0", INPUT)) + \
        _bytes(12, _value_info("output_0", (1, CLASSES)))
    return _int(1, 7) + _bytes(2, "latkit") + _bytes(6, f"latkit reference network, twin {twin}") + \
        _bytes(7, graph) + _bytes(8, _bytes(1, "") + _int(2, 13))


# ---------------------------------------------------------------- the files, cached


def _torch_module():
    import torch
    torch.manual_seed(0)
    layers = []
    for cout, cin in CONVS:
        layers += [torch.nn.Conv2d(cin, cout, 3, padding=1), torch.nn.ReLU()]
    return torch.nn.Sequential(*layers, torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                               torch.nn.Linear(CONVS[-1][0], CLASSES, bias=False)).eval()


def _tmp(path: Path) -> Path:
    """A temporary name beside `path` no other process or thread writes (its suffix kept: torch.export wants it)."""
    return path.with_name(f".{path.stem}.{uuid.uuid4().hex}.tmp{path.suffix}")


def _place(path: Path, write) -> Path:
    """`write(tmp)` to a temporary name beside `path`, renamed onto it; the temporary goes if either fails
    (validate.write_atomic for bytes; this for torch.export.save, which writes a file by its name)."""
    tmp = _tmp(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _twin_of(art: Artifact, folder: Path) -> Path:
    """Twin "b" of an exported file: the same network, a few bytes of metadata apart."""
    out = folder / f"{art.sha256}-b{art.path.suffix}"
    if out.is_file():
        return out
    if art.format == "tflite":  # a flatbuffer is read from its root offset: bytes after it are never looked at
        return write_atomic(out, art.path.read_bytes() + b"latkit reference twin b\0")
    import torch
    return _place(out, lambda tmp: torch.export.save(torch.export.load(str(art.path)), str(tmp),
                                                     extra_files={"latkit_reference": "b"}))


def _write_once(path: Path, data: bytes) -> Path:
    if not (path.is_file() and sha256_file(path) == hashlib.sha256(data).hexdigest()):
        write_atomic(path, data)
    return path


_MADE: dict = {}  # (runtime, cache) -> the twins this process made or found
_MAKING = threading.Lock()  # devices' threads start at once; exports redirect the process's stdout: one at a time


def artifacts(runtime: str, cache: Path) -> tuple:
    """The twins (a, b) for `runtime` in its export format, made once into `cache`/reference (once per process,
    whichever device thread asks first). LatkitError when they cannot be made here (a torch runtime without
    torch, tflite without litert-torch)."""
    key = (runtime, str(cache))
    with _MAKING:
        if key not in _MADE or not all(a.path.is_file() for a in _MADE[key]):  # made, and still there
            _MADE[key] = _make(runtime, Path(cache))
        return _MADE[key]


def _make(runtime: str, cache: Path) -> tuple:
    fmt = EXPORT_FORMAT.get(runtime)
    if fmt is None:
        raise LatkitError(f"latkit has no reference network for runtime {runtime}")
    folder = cache / "reference"
    folder.mkdir(parents=True, exist_ok=True)
    inputs = (InputSpec("input_0", INPUT),)
    if fmt == "onnx":
        paths = [_write_once(folder / f"reference-{t}.onnx", onnx_bytes(t)) for t in TWINS]
    else:
        torch = need("torch", "export", f"the {runtime} reference network")
        a = export(_torch_module(), (torch.zeros(INPUT),), fmt, SPACE, "reference-a", cache_dir=folder)
        paths = [a.path, _twin_of(a, folder)]
    return tuple(Artifact.from_file(p, space=SPACE, arch=f"reference-{t}", inputs=inputs) for p, t in zip(paths, TWINS))


# ---------------------------------------------------------------- the schedule


@dataclasses.dataclass
class Schedule:
    """When a device times its reference: first before its first job, then every `every_s` seconds or
    `every_jobs` jobs, whichever comes first, and once more at the end if jobs were timed since."""

    every_s: float = REFERENCE_EVERY_S
    every_jobs: int = REFERENCE_EVERY_JOBS
    run: str = dataclasses.field(default_factory=lambda: uuid.uuid4().hex)
    checks: int = 0
    timings: int = 0  # reference rows keyed so far
    last_at: Optional[float] = None
    jobs_at_last: int = 0
    twins: Optional[tuple] = None  # the (a, b) Artifacts, once made
    off: str = ""  # why no more checks are made in this run

    def due(self, jobs: int) -> bool:
        if self.off:
            return False
        if self.last_at is None:
            return True
        return jobs - self.jobs_at_last >= self.every_jobs or time.monotonic() - self.last_at >= self.every_s

    def pending_end(self, jobs: int) -> bool:
        """Whether the end check is still to come: jobs were timed since the last check."""
        return not self.off and self.last_at is not None and jobs > self.jobs_at_last

    def done(self, jobs: int) -> None:
        self.checks += 1
        self.last_at, self.jobs_at_last = time.monotonic(), jobs

    def jobs(self, job: Job, cache: Path) -> Optional[tuple]:
        """The twins' jobs on `job`'s device under its settings (two rounds each: a check is four requests, a b b
        a), or None (and `off` says why) when no reference can be made for its runtime."""
        if self.twins is None:
            try:
                self.twins = artifacts(job.settings.runtime, cache)
            except Exception as e:  # noqa: BLE001 - the reference is optional: never a reason to lose the data
                why = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                self.off = f"no reference on {job.device}: {why}"
                return None
        settings = dataclasses.replace(job.settings, rounds=2, batch_size=None, input_shapes=None)  # its own inputs
        return tuple(Job(a, job.device, settings, role=ROLE) for a in self.twins)

    @property
    def sampler(self) -> str:
        """A reference row's sampler: names this run, so that the checks of one collection are told apart from
        another's (collector/drift.py: a resume days later is a new run, not a step)."""
        return f"reference(run={self.run[:12]})"

    def key(self, job: Job) -> str:
        """A reference row's key: the job's, this run's and the timing's number, so each timing is a row of its own
        (a check timed again after a broken link too)."""
        self.timings += 1
        return hashlib.sha256(f"{job.key}\n{self.run}\n{self.timings}".encode()).hexdigest()
