"""Collection: many jobs over many devices, one measurement at a time per device, all devices at once.

Every row is appended as soon as it is measured, so a killed orchestrator loses at most the
measurements in flight, and a re-run skips what the store already holds (exactly once, by key).
Transport failures are retried with exponential backoff on a fresh connection; a device that stays down,
or that cannot run the jobs at all (wrong key, changed host key, runtime missing), is marked failed and
the other devices go on.
"""
from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

from .devices import Device
from .errors import LatkitError, TransportError
from .job import Job
from .runner import DeviceRunner
from .store import Store


@dataclass
class DeviceReport:
    device: str
    total: int
    skipped: int = 0
    measured: int = 0
    errors: int = 0  # rows with status=error (model failures); they count as done
    status: str = "pending"  # pending | running | done | failed
    message: str = ""
    busy_s: float = 0.0  # host time inside measure calls: upload, request, and the agent's work
    agent_s: float = 0.0  # the agent's own work: model load, warmup and timed runs
    timing_s: float = 0.0  # warmup and timed runs: the device doing what it is here for
    wall_s: float = 0.0

    @property
    def remaining(self) -> int:
        return self.total - self.skipped - self.measured - self.errors


@dataclass
class CollectReport:
    devices: list = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(d.status == "done" for d in self.devices)

    @property
    def measured(self) -> int:
        return sum(d.measured for d in self.devices)


def run_device(device: Device, jobs: Sequence[Job], store: Store, report: DeviceReport, retries: int = 3,
               backoff_s: float = 1.0, job_timeout: float = 600.0, on_row: Optional[Callable] = None) -> None:
    """Measure `jobs` on `device`, appending each row; fills `report` as it goes."""
    t0 = time.perf_counter()
    report.status = "running"
    pending = list(jobs)
    runner = DeviceRunner(device, timeout=job_timeout)
    failures = 0
    try:
        while pending:
            try:
                if runner.probe is None:
                    runner.start()
                    store.record_devices({runner.fingerprint: dict(runner.probe, device=device.name)})
                t_job = time.perf_counter()
                m = runner.measure(pending[0])
                report.busy_s += time.perf_counter() - t_job
            except TransportError as e:
                failures += 1
                runner.close()
                runner.probe = None
                if failures > retries:
                    report.status, report.message = "failed", f"{e} (gave up after {retries} retries)"
                    return
                time.sleep(backoff_s * 2 ** (failures - 1))
                continue
            except LatkitError as e:
                report.status, report.message = "failed", str(e)
                return
            failures = 0
            try:
                store.append([m.to_row()])
            except OSError as e:
                report.status, report.message = "failed", f"cannot write rows to {store.uri}: {e}"
                return
            pending.pop(0)
            if m.status == "ok":
                report.measured += 1
                report.timing_s += m.warmup_s + sum(m.samples_ms) / 1e3
                report.agent_s += m.load_s + m.warmup_s + sum(m.samples_ms) / 1e3
            else:
                report.errors += 1
            if on_row:
                on_row(report, m)
        report.status = "done"
    finally:
        runner.close()
        report.wall_s = time.perf_counter() - t0


def collect(jobs: Sequence[Job], devices: Sequence[Device], out="latkit-data", retries: int = 3,
            backoff_s: float = 1.0, job_timeout: float = 600.0, max_workers: int = 64, progress: bool = True,
            retry_errors: bool = False) -> CollectReport:
    """Run every job on its device (Job.device names it). Returns per-device counts and failures."""
    store = Store(out)
    store.check_writable()  # before any device time is spent
    by_name = {d.name: d for d in devices}
    unknown = {j.device for j in jobs} - set(by_name)
    if unknown:
        raise LatkitError(f"jobs name devices that were not given: {', '.join(sorted(unknown))}")
    done = store.done_keys(include_errors=not retry_errors)
    reports, todo = {}, {}
    for name in by_name:
        mine = [j for j in jobs if j.device == name]
        keep = [j for j in mine if j.key not in done]
        reports[name] = DeviceReport(name, total=len(mine), skipped=len(mine) - len(keep))
        todo[name] = keep
    report = CollectReport(list(reports.values()))
    with _Progress(report, enabled=progress) as bar:
        with ThreadPoolExecutor(max_workers=max(1, min(max_workers, len(by_name)))) as pool:
            futures = [pool.submit(run_device, by_name[n], todo[n], store, reports[n], retries, backoff_s,
                                   job_timeout, bar.update) for n in by_name]
            for f in futures:
                f.result()
        bar.update()
    return report


class _Progress:
    """Rich progress: one bar per device and one overall, with ETA and done/failed counts."""

    def __init__(self, report: CollectReport, enabled: bool):
        self.report, self.enabled = report, enabled
        self._lock = threading.Lock()

    def __enter__(self):
        if not self.enabled:
            return self
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
        self.progress = Progress(TextColumn("{task.description:<24}"), BarColumn(), MofNCompleteColumn(),
                                 TimeRemainingColumn(), TextColumn("{task.fields[state]}"))
        self.progress.start()
        total = sum(d.total for d in self.report.devices)
        self.overall = self.progress.add_task("all devices", total=total, state="")
        self.tasks = {d.device: self.progress.add_task(d.device, total=d.total, state="") for d in self.report.devices}
        self.update()
        return self

    def update(self, *_):
        if not self.enabled:
            return
        with self._lock:
            for d in self.report.devices:
                state = d.status + (f" ({d.errors} errors)" if d.errors else "")
                self.progress.update(self.tasks[d.device], completed=d.total - d.remaining, state=state)
            failed = sum(d.status == "failed" for d in self.report.devices)
            self.progress.update(self.overall, completed=sum(d.total - d.remaining for d in self.report.devices),
                                 state=f"{failed} device(s) failed" if failed else "")

    def __exit__(self, *exc):
        if self.enabled:
            self.update()
            self.progress.stop()
