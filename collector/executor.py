"""The Executor interface: how a collection's devices are driven (threads here, Ray actors across machines).
Executors are looked up by name in scheduler.EXECUTORS; each lives in its own module, and only the Ray one
imports ray (when it runs), so neither the interface nor the scheduler depends on an engine."""
from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import ClassVar, Iterable, Optional, Sequence

from .device_loop import DeviceRequest
from .devices import Device
from .job import Job
from .pipeline import ExportRequest
from .reports import CollectReport


@dataclass(frozen=True)
class CollectRequest:
    """What a collection asks of its executor beside the jobs and devices: the store, how each device is driven,
    and the executor's own knobs. `expected`: jobs per device while a lazy job iterable has not ended (progress);
    `refs`: model sha256 -> object ref of its bytes, where an executor exported them (Ray)."""

    out: str = "latkit-data"
    device: DeviceRequest = DeviceRequest()
    max_workers: int = 64
    progress: bool = True
    expected: Optional[int] = None
    refs: Optional[dict] = field(default=None, compare=False, hash=False)


@dataclass
class Exported:
    """An executor's exports: the artifacts (an iterator while they are still being made, when `streamed`),
    and object refs of their bytes where the executor ships them itself."""

    artifacts: Iterable
    streamed: bool = False
    refs: Optional[dict] = None


class Executor(abc.ABC):
    name: ClassVar[str]
    exports_here: ClassVar[bool]  # exports run in this process's workers (so need torch here)

    def refuse(self, request: CollectRequest) -> None:
        """Raise LatkitError for an option this executor cannot honour, before any export or device time."""

    @abc.abstractmethod
    def export(self, request: ExportRequest, devices: Sequence[Device], settings, progress: bool) -> Exported:
        """Export a space's archs where this executor works."""

    @abc.abstractmethod
    def collect(self, jobs: Iterable[Job], devices: Sequence[Device], request: CollectRequest) -> CollectReport:
        """Run every job on its device (Job.device names it); per-device counts and failures."""
