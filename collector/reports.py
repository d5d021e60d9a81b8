"""What a collection reports: one DeviceReport per device (counts, timings, status) and the CollectReport over
them. Every executor fills the same reports, so the CLI prints them one way."""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Optional

from .drift import Drift, of_checks


class DeviceStatus(enum.StrEnum):
    """Where a device is in a run. A str, so the CLI's table, logs and --json show the same words as before."""

    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    STOPPED = "stopped"


@dataclass
class DeviceReport:
    device: str
    total: int
    skipped: int = 0
    skipped_errors: int = 0  # of the skipped, models stored as permanent errors (--retry-errors measures them)
    measured: int = 0
    errors: int = 0  # rows with status=error (model failures, timeouts) stored by this run
    status: DeviceStatus = DeviceStatus.PENDING
    message: str = ""
    exit_code: int = 0  # 0 unless the device failed: 1 when its work failed, 2 when the set-up was wrong (a host key)
    failed: list = field(default_factory=list)  # this run's error rows: (arch, error_kind, error)
    busy_s: float = 0.0  # host time inside measure calls: upload, request, and the agent's work
    agent_s: float = 0.0  # the agent's own work: model load, warmup and timed runs
    timing_s: float = 0.0  # warmup and timed runs: the device doing what it is here for
    wall_s: float = 0.0
    node: str = ""  # the Ray node that drove the device (--executor ray)
    first_timing_at: Optional[float] = None  # time.time() as the first measure request went out (resume latency)
    start_s: Optional[float] = None  # from the start to the first measure call: connect, deploy, probe, lease
    agent_starts: int = 0  # one for the whole run unless the agent had to be restarted (timeouts, link failures)
    checks: list = field(default_factory=list)  # the reference's A/A checks of this run (collector/drift.py Check)
    reference_runtime: str = ""  # the runtime the reference was timed with ("" none)
    reference_s: float = 0.0  # host time spent on the reference checks
    reference_note: str = ""  # why the reference was not (or no longer) timed
    round_note: str = ""  # the round being timed ("round 2 of 4, 31 models"): a model is a row after its last round
    rounds_taken: int = 0  # rounds an earlier, stopped run timed and saved, taken back here (collector/rounds.py)

    def drift(self) -> Optional[Drift]:
        """The reference's drift over this run's checks (None without any)."""
        return of_checks(self.device, self.reference_runtime, self.checks)

    def __post_init__(self):
        self.status = DeviceStatus(self.status)

    @property
    def remaining(self) -> int:
        return self.total - self.skipped - self.measured - self.errors

    @property
    def active(self) -> bool:
        """Still to run or running: a device that has failed or stopped gets no more jobs."""
        return self.status in (DeviceStatus.PENDING, DeviceStatus.RUNNING)

    def fail(self, message: str, exit_code: int = 1) -> None:
        """The device is out of this run: why, and the exit code that means."""
        self.status, self.message, self.exit_code = DeviceStatus.FAILED, message, exit_code


@dataclass
class CollectReport:
    devices: list = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Every device finished (error rows of models aside)."""
        return all(d.status == DeviceStatus.DONE for d in self.devices)

    @property
    def failed_models(self) -> list:
        """(device, arch, error_kind, error) of every error row this run stored."""
        return [(d.device, *f) for d in self.devices for f in d.failed]

    @property
    def measured(self) -> int:
        return sum(d.measured for d in self.devices)

    def line(self) -> str:
        """One line: what is done and what is left."""
        d = self.devices
        return (f"{sum(r.measured for r in d)} measured, {sum(r.errors for r in d)} errors, "
                f"{sum(r.skipped for r in d)} already done, {sum(r.remaining for r in d)} left on {len(d)} device(s)")
