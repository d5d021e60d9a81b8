"""What to measure: Settings, Artifact and Job (the MeasureInput of latkit)."""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from . import validate
from .errors import LatkitError
from .external import packed
from .formats import FORMATS, RUNTIME_FOR_FORMAT, RUNTIMES  # noqa: F401 - named here by the CLI and retest

# Allowed values of the numeric settings; the CLI's options take theirs from here too.
# Whole numbers: name -> (lowest, highest).
WHOLE = {"threads": (1, 256), "batch_size": (1, 4096), "warmup_min_count": (0, 1_000_000),
         "repeats_min_count": (1, 1_000_000), "repeats_max_count": (1, 10_000_000), "rounds": (1, 100),
         "seed": (0, 2 ** 32 - 1)}
# Finite numbers: name -> (lowest, highest, both ends excluded). Seconds are capped at an hour (a day for
# the cooldown wait); ci_target is a fraction of the median.
NUMBER = {"warmup_min_s": (0, 3600, False), "repeats_min_s": (0, 3600, False), "repeats_max_s": (0, 3600, False),
          "ci_target": (0, 1, True), "cooldown_max_s": (0, 86400, False), "cooldown_temp_c": (0, 150, True)}


@dataclass(frozen=True)
class Settings:
    """The timing protocol. Every field is part of the measurement key.

    Defaults mirror the agent's DEFAULT_SETTINGS (a test keeps them equal). On the CPU a job is timed in
    `rounds` (4) shuffled rounds: the scheduler visits every model once per round in a new order, so a
    slow spell of a shared host hits all models alike instead of a contiguous block. Each round: one
    thread, no pinning, >= 2 warmup runs and 0.05 s, then >= 3 timed runs and 0.1 s of timed work,
    continuing until the 95 % CI of latency_ms's quantile (p10 on a CPU, the median on a GPU) is within
    +-0.5 % (`ci_target`) or 0.3 s / 10,000 runs; the minimums win over the caps, so a 100 ms network
    takes 3 runs a round and a 1 ms cell the time minimum. Chosen on two sets timed twice each on a quiet
    host (README "Real networks": 27 zoo networks and 40 NB201 cells, scripts/bench_models.py): against
    the former 5 warmup / 10 runs / 0.25 s, a third less time per real network at the same retest. The
    number of rounds matters more than the per-round cap (replayed on 60 NB201 archs, README
    "Test-retest": 2 / 3 / 4 rounds retest at Spearman 0.967 / 0.998 / 0.999); one set for all runtimes.
    On a GPU: one round, CUDA graphs on (eager timing of a small network on a fast GPU measures the host's
    kernel launches). `energy` (off: it costs an idle span and a longer span per round) also reads the
    device's energy counter, RAPL or NVML (agents/agent.py EnergyMeter, README "Energy").
    """

    runtime: str = "onnxruntime"
    threads: int = 1
    cores: Optional[tuple] = None
    accelerator: str = "cpu"
    batch_size: Optional[int] = None
    warmup_min_count: int = 2
    warmup_min_s: float = 0.05
    repeats_min_count: int = 3
    repeats_min_s: float = 0.1
    repeats_max_count: int = 10000
    repeats_max_s: float = 0.3
    ci_target: float = 0.005
    seed: int = 0
    dtype: str = "float32"
    cuda_graphs: Optional[bool] = None  # None: on for cuda, off for cpu
    include_copies: bool = False
    cooldown_temp_c: Optional[float] = None
    cooldown_max_s: float = 300.0
    rounds: Optional[int] = None  # None: 4 on the CPU, 1 on a GPU
    energy: bool = False  # read the energy counter around the timed runs (an idle span and >= 0.2 s / 1 s each)
    input_shapes: Optional[tuple] = None  # float32 inputs of a TorchScript file, which declares none (--input-shape)

    def __post_init__(self):
        cuda = self.accelerator == "cuda"
        if self.cuda_graphs is None:
            object.__setattr__(self, "cuda_graphs", cuda)
        if self.rounds is None:
            object.__setattr__(self, "rounds", 1 if cuda else 4)
        if self.runtime not in RUNTIMES:
            raise LatkitError(f"unknown runtime {self.runtime!r}; choose one of {', '.join(RUNTIMES)}")
        for name, (lo, hi) in WHOLE.items():
            if name != "batch_size" or self.batch_size is not None:
                validate.whole(getattr(self, name), name, lo, hi)
        for name, (lo, hi, open_) in NUMBER.items():
            if name != "cooldown_temp_c" or self.cooldown_temp_c is not None:
                validate.number(getattr(self, name), name, lo, hi, open_, open_)  # kept as given: part of the key
        if self.cores is not None:
            if isinstance(self.cores, (str, bytes)) or not hasattr(self.cores, "__iter__") or not self.cores:
                raise LatkitError(f"cores must be CPU ids, e.g. (0,) or (2, 3); got {self.cores!r}")
            object.__setattr__(self, "cores", tuple(sorted({validate.whole(c, "a core id", 0, validate.MAX_CPU_ID)
                                                            for c in self.cores})))
        if self.repeats_max_count < self.repeats_min_count:
            raise LatkitError("repeats_max_count must be >= repeats_min_count")
        if self.input_shapes is not None:
            object.__setattr__(self, "input_shapes", tuple(validate.shape(s) for s in self.input_shapes))
        if not isinstance(self.energy, bool):
            raise LatkitError(f"energy must be True or False, got {self.energy!r}")
        if self.accelerator not in ("cpu", "cuda"):
            raise LatkitError(f"unknown accelerator {self.accelerator!r}; choose cpu or cuda")
        if self.dtype not in ("float32", "float16", "bfloat16"):
            raise LatkitError(f"unknown dtype {self.dtype!r}; choose float32, float16 or bfloat16")
        if not cuda and (self.dtype != "float32" or self.cuda_graphs or self.include_copies):
            raise LatkitError("dtype, cuda_graphs and include_copies apply to accelerator cuda only")

    def agent_settings(self) -> dict:
        """What the agent's measure op takes (everything but the runtime, which travels beside it, and the
        rounds, which the scheduler runs)."""
        d = dataclasses.asdict(self)
        for host_only in ("runtime", "rounds", "input_shapes"):  # inputs travel beside the settings
            d.pop(host_only)
        d["cores"] = list(self.cores) if self.cores else None
        return d

    def canonical(self) -> str:
        """The key's JSON; energy only when on and input shapes only when given, so the keys of rows from before
        them stay as they were."""
        d = dataclasses.asdict(self)
        if not self.energy:
            del d["energy"]
        if self.input_shapes is None:
            del d["input_shapes"]
        return json.dumps(d, sort_keys=True, separators=(",", ":"))


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class InputSpec:
    """One input a model file takes; TorchScript files need them sent, other formats declare their own.
    Frozen with a tuple shape, so an Artifact (and a Job) holding inputs can be hashed."""

    name: str
    shape: tuple
    dtype: str = "float32"

    def __post_init__(self):
        object.__setattr__(self, "shape", tuple(self.shape))

    @classmethod
    def of(cls, spec) -> "InputSpec":
        """An InputSpec from itself or a {name, shape, dtype} dict (the agent protocol's form)."""
        return spec if isinstance(spec, cls) else cls(spec["name"], tuple(spec["shape"]), spec.get("dtype", "float32"))

    def to_dict(self) -> dict:
        """The agent protocol's form: {name, shape (a list), dtype}."""
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}


@dataclass(frozen=True)
class Artifact:
    """A model file ready to ship. Its sha256 is its identity everywhere (cache, upload, key)."""

    path: Path
    sha256: str
    format: str
    space: str = "custom"
    arch: str = ""
    inputs: tuple = field(default=())  # InputSpecs (dicts given are turned into them); TorchScript needs them

    def __post_init__(self):
        object.__setattr__(self, "inputs", tuple(InputSpec.of(i) for i in self.inputs))

    @classmethod
    def from_file(cls, path, space: str = "custom", arch: Optional[str] = None, inputs=()) -> "Artifact":
        if not Path(path).exists() and not Path(path).is_symlink():
            raise LatkitError(f"model file {path} not found; check the path")
        path = validate.readable_file(path, "model file")  # a FIFO or device is refused, not read forever
        fmt = FORMATS.get(path.suffix.lower())
        if fmt is None:
            raise LatkitError(f"cannot tell the format of {path.name}; use one of {', '.join(sorted(FORMATS))}")
        arch = arch if arch is not None else path.name
        path = packed(path)  # an .onnx with its weights beside it: one file with them, which is what a device gets
        return cls(path=path.resolve(), sha256=sha256_file(path), format=fmt, space=space, arch=arch,
                   inputs=tuple(inputs))

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
    role: str = field(default="", compare=False)  # what the row is for (collector/schema.py ROLES); not in the key
    role_round: Optional[int] = field(default=None, compare=False)  # the round of a "round" row

    @property
    def inputs(self) -> tuple:
        """What the device feeds the model: the artifact's own inputs, else the settings' shapes (TorchScript)."""
        return self.artifact.inputs or tuple(InputSpec(f"input{i}", s)
                                             for i, s in enumerate(self.settings.input_shapes or ()))

    @property
    def key(self) -> str:
        """sha256 over (model sha, device, settings): a store that has it need not measure it again."""
        text = "\n".join([self.artifact.sha256, self.device, self.settings.canonical()])
        return hashlib.sha256(text.encode()).hexdigest()
