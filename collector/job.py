"""What to measure: Settings, Artifact and Job (the MeasureInput of latkit)."""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from .errors import LatkitError

RUNTIMES = ("onnxruntime", "tflite", "torch")
FORMATS = {".onnx": "onnx", ".tflite": "tflite", ".pt2": "pt2", ".pt": "torchscript", ".ts": "torchscript"}
RUNTIME_FOR_FORMAT = {"onnx": "onnxruntime", "tflite": "tflite", "pt2": "torch", "torchscript": "torch"}


@dataclass(frozen=True)
class Settings:
    """The timing protocol. Every field is part of the measurement key.

    Defaults mirror the agent's DEFAULT_SETTINGS (a test keeps them equal): one thread, no pinning,
    >= 10 warmup runs and 0.2 s, then >= 20 repeats and 1 s of timed work, continuing while the robust
    CV (IQR / 1.349 / median) is above 1 %, up to 10,000 repeats or 10 s; the minimums win over the caps.
    """

    runtime: str = "onnxruntime"
    threads: int = 1
    cores: Optional[tuple] = None
    accelerator: str = "cpu"
    batch_size: Optional[int] = None
    warmup_min_count: int = 10
    warmup_min_s: float = 0.2
    repeats_min_count: int = 20
    repeats_min_s: float = 1.0
    repeats_max_count: int = 10000
    repeats_max_s: float = 10.0
    cv_target: float = 0.01
    seed: int = 0
    dtype: str = "float32"
    cuda_graphs: bool = False
    include_copies: bool = False

    def __post_init__(self):
        if self.runtime not in RUNTIMES:
            raise LatkitError(f"unknown runtime {self.runtime!r}; choose one of {', '.join(RUNTIMES)}")
        if self.threads < 1:
            raise LatkitError(f"threads must be >= 1, got {self.threads}")
        if self.cores is not None:
            object.__setattr__(self, "cores", tuple(sorted(int(c) for c in self.cores)))
        if self.batch_size is not None and self.batch_size < 1:
            raise LatkitError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.repeats_max_count < self.repeats_min_count:
            raise LatkitError("repeats_max_count must be >= repeats_min_count")
        if self.accelerator not in ("cpu", "cuda"):
            raise LatkitError(f"unknown accelerator {self.accelerator!r}; choose cpu or cuda")
        if self.dtype not in ("float32", "float16", "bfloat16"):
            raise LatkitError(f"unknown dtype {self.dtype!r}; choose float32, float16 or bfloat16")
        if self.accelerator == "cpu" and (self.dtype != "float32" or self.cuda_graphs or self.include_copies):
            raise LatkitError("dtype, cuda_graphs and include_copies apply to accelerator cuda only")

    def agent_settings(self) -> dict:
        """What the agent's measure op takes (everything but the runtime, which travels beside it)."""
        d = dataclasses.asdict(self)
        d.pop("runtime")
        d["cores"] = list(self.cores) if self.cores else None
        return d

    def canonical(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True, separators=(",", ":"))


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class Artifact:
    """A model file ready to ship. Its sha256 is its identity everywhere (cache, upload, key)."""

    path: Path
    sha256: str
    format: str
    space: str = "custom"
    arch: str = ""
    inputs: tuple = field(default=())  # ({"name", "shape", "dtype"}, ...); TorchScript needs them

    @classmethod
    def from_file(cls, path, space: str = "custom", arch: Optional[str] = None, inputs=()) -> "Artifact":
        path = Path(path)
        if not path.is_file():
            raise LatkitError(f"model file {path} not found; check the path")
        fmt = FORMATS.get(path.suffix.lower())
        if fmt is None:
            raise LatkitError(f"cannot tell the format of {path.name}; use one of {', '.join(sorted(FORMATS))}")
        return cls(path=path.resolve(), sha256=sha256_file(path), format=fmt, space=space,
                   arch=arch if arch is not None else path.name, inputs=tuple(inputs))

    @property
    def name(self) -> str:
        """The file name on devices: content-addressed, so each model ships once."""
        return f"{self.sha256}{self.path.suffix.lower()}"


@dataclass(frozen=True)
class Job:
    """One measurement to make: an artifact on a device under settings."""

    artifact: Artifact
    device: str
    settings: Settings
    sampler: str = field(default="", compare=False)  # how the arch was chosen; not part of the key

    @property
    def key(self) -> str:
        """sha256 over (model sha, device, settings): a store that has it need not measure it again."""
        text = "\n".join([self.artifact.sha256, self.device, self.settings.canonical()])
        return hashlib.sha256(text.encode()).hexdigest()
