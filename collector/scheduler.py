"""Collection: many jobs over many devices, one measurement at a time per device, all devices at once.

Rows are written in batches (Store.writer: every few hundred rows or few seconds, and always before a
device's lease is released), so a killed orchestrator loses at most the unwritten batch and the jobs in
flight, which a re-run measures again; a re-run skips what the store already holds (exactly once, by key; the key column is read
again each time a device's lease is taken, so two collections into one dataset never store a key twice).
A job is timed in `settings.rounds` shuffled rounds: every pending model once per round, in a new order
each round. Transport failures are retried with exponential backoff on a fresh connection; a device that
stays down, or that cannot run the jobs at all (wrong key, changed host key, runtime missing), is marked
failed and the other devices go on. A hung model is a `timeout` row, not a failed device. SIGINT and
SIGTERM kill every agent at once (the devices stop timing, their leases are released) and raise
Interrupted with a one-line summary.
"""
from __future__ import annotations

import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

from .devices import Device
from .errors import Interrupted, LatkitError, TransportError
from .job import Job
from .measurement import Measurement
from .progress import CollectProgress
from .runner import DeviceRunner
from .store import BatchWriter, Store


@dataclass
class DeviceReport:
    device: str
    total: int
    skipped: int = 0
    measured: int = 0
    errors: int = 0  # rows with status=error (model failures, timeouts) stored by this run
    status: str = "pending"  # pending | running | done | failed | stopped
    message: str = ""
    exit_code: int = 1  # of the error that failed the device: 2 when the set-up was wrong (e.g. a host key)
    failed: list = field(default_factory=list)  # this run's error rows: (arch, error_kind, error)
    busy_s: float = 0.0  # host time inside measure calls: upload, request, and the agent's work
    agent_s: float = 0.0  # the agent's own work: model load, warmup and timed runs
    timing_s: float = 0.0  # warmup and timed runs: the device doing what it is here for
    wall_s: float = 0.0
    node: str = ""  # the Ray node that drove the device (--executor ray)

    @property
    def remaining(self) -> int:
        return self.total - self.skipped - self.measured - self.errors


@dataclass
class CollectReport:
    devices: list = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Every device finished (error rows of models aside)."""
        return all(d.status == "done" for d in self.devices)

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


def round_queue(jobs: Sequence[Job], seed: int = 0) -> list:
    """(job, round) pairs: round r visits every job that needs more than r rounds, in a fresh shuffled order."""
    order = []
    for r in range(max((j.settings.rounds for j in jobs), default=0)):
        these = [j for j in jobs if j.settings.rounds > r]
        random.Random(seed * 1000003 + r).shuffle(these)
        order += [(j, r) for j in these]
    return order


def run_device(device: Device, jobs: Sequence[Job], store: Store, report: DeviceReport, retries: int = 3,
               backoff_s: float = 1.0, job_timeout: float = 600.0, on_row: Optional[Callable] = None,
               stop: Optional[threading.Event] = None, active: Optional[set] = None, wait: bool = True,
               retry_errors: bool = False) -> None:
    """Measure `jobs` on `device` in shuffled rounds, appending each job's row once its last round is in."""
    t0 = time.perf_counter()
    stop = stop or threading.Event()
    report.status = "running"
    pending = round_queue(jobs)
    parts: dict = {}  # key -> the job's rounds so far
    runner = DeviceRunner(device, timeout=job_timeout, wait=wait)
    rows = store.writer()  # flushed before the lease is released, so the next holder sees every row
    if active is not None:
        active.add(runner)
    failures = 0
    try:
        while pending:
            if stop.is_set():
                report.status = "stopped"
                return
            try:
                if not runner.started:
                    runner.start()
                    store.record_devices({runner.fingerprint: dict(runner.probe, device=device.name)})
                    runner.lease()
                    # while we waited, another collection may have measured some of these into the same store
                    done = store.done_keys(include_errors=not retry_errors)
                    gone = {j.key for j, _ in pending if j.key in done}
                    report.skipped += len(gone)
                    pending = [(j, r) for j, r in pending if j.key not in gone]
                    for k in gone:
                        parts.pop(k, None)
                    if not pending:
                        break
                job, _ = pending[0]
                t_job = time.perf_counter()
                m = runner.measure(job)
                report.busy_s += time.perf_counter() - t_job
            except TransportError as e:
                if not _flushed(rows, store, report):
                    return
                runner.close()
                if stop.is_set():
                    report.status = "stopped"
                    return
                failures += 1
                if failures > retries:
                    report.status, report.message = "failed", f"{e} (gave up after {retries} retries)"
                    return
                time.sleep(backoff_s * 2 ** (failures - 1))
                continue
            except LatkitError as e:
                report.status, report.message, report.exit_code = "failed", str(e), e.exit_code
                return
            failures = 0
            pending.pop(0)
            if m.status == "ok":
                report.timing_s += m.warmup_s + sum(m.samples_ms) / 1e3
                report.agent_s += (m.load_ms or 0) / 1e3 + m.warmup_s + sum(m.samples_ms) / 1e3
                parts.setdefault(job.key, []).append(m)
                if len(parts[job.key]) < job.settings.rounds:
                    continue
                m = Measurement.combine(parts.pop(job.key))
            else:  # an error ends the job: its later rounds are dropped
                parts.pop(job.key, None)
                pending = [(j, r) for j, r in pending if j.key != job.key]
            try:
                rows.add(m.to_row())
            except OSError as e:
                report.status, report.message = "failed", f"cannot write rows to {store.uri}: {e}"
                return
            if m.status == "ok":
                report.measured += 1
            else:
                report.errors += 1
                report.failed.append((job.artifact.arch, m.error_kind, m.error))
            if on_row:
                on_row(report, m)
        report.status = "done"
    except BaseException:
        runner.kill()  # interrupted in this thread (measure_many): stop the device now, not after a polite wait
        raise
    finally:
        try:
            _flushed(rows, store, report, close=True)
        finally:
            runner.close()
            if active is not None:
                active.discard(runner)
            report.wall_s = time.perf_counter() - t0


def _flushed(rows: BatchWriter, store: Store, report: DeviceReport, close: bool = False) -> bool:
    """Write the buffered rows (before a lease is released); False, with the device failed, if they could not be."""
    try:
        rows.close() if close else rows.flush()
        return True
    except OSError as e:
        report.status, report.message = "failed", f"cannot write rows to {store.uri}: {e}"
        return False


def collect(jobs: Sequence[Job], devices: Sequence[Device], out="latkit-data", retries: int = 3,
            backoff_s: float = 1.0, job_timeout: float = 600.0, max_workers: int = 64, progress: bool = True,
            retry_errors: bool = False, wait: bool = True, executor: Optional[str] = None,
            refs: Optional[dict] = None) -> CollectReport:
    """Run every job on its device (Job.device names it). Returns per-device counts and failures.
    Ctrl-C or SIGTERM (raised as Interrupted by the CLI's handler) stops every device within seconds.
    `executor`: None runs every device from a thread here; a Ray address ("" starts a cluster here) drives
    each device from a Ray actor (collector/ray_executor.py; `refs` are its exported models' object refs)."""
    if executor is not None:
        from .ray_executor import collect_ray
        return collect_ray(jobs, devices, out, executor, refs, retries=retries, backoff_s=backoff_s,
                           job_timeout=job_timeout, retry_errors=retry_errors, wait=wait)
    store = Store(out)
    store.check_writable()  # before any device time is spent
    store.devices()  # a corrupt device probe is named now, not when the first device has started
    by_name = {d.name: d for d in devices}
    unknown = {j.device for j in jobs} - set(by_name)
    if unknown:
        raise LatkitError(f"jobs name devices that were not given: {', '.join(sorted(unknown))}")
    done = store.done_keys(include_errors=not retry_errors)
    reports, todo = {}, {}
    for name in by_name:
        mine = list({j.key: j for j in jobs if j.device == name}.values())
        keep = [j for j in mine if j.key not in done]
        reports[name] = DeviceReport(name, total=len(mine), skipped=len(mine) - len(keep))
        todo[name] = keep
    report = CollectReport(list(reports.values()))
    stop, active = threading.Event(), set()
    pool = ThreadPoolExecutor(max_workers=max(1, min(max_workers, len(by_name))))
    try:
        with CollectProgress(report, enabled=progress) as bar:
            futures = [pool.submit(run_device, by_name[n], todo[n], store, reports[n], retries, backoff_s,
                                   job_timeout, bar.update, stop, active, wait, retry_errors) for n in by_name]
            for f in futures:
                f.result()
            bar.update()
    except (KeyboardInterrupt, Interrupted) as e:
        stop.set()
        for runner in list(active):
            runner.kill()
        pool.shutdown(wait=True)
        sig = e if isinstance(e, Interrupted) else Interrupted("SIGINT", 130)
        raise Interrupted(sig.signame, sig.exit_code, f"interrupted by {sig.signame}: {report.line()}; run the "
                          "same command again to resume") from None
    finally:
        pool.shutdown(wait=True)
    return report
