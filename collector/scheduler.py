"""Collection: many jobs over many devices, one measurement at a time per device, all devices at once.

Rows are written in batches (Store.writer: every few hundred rows or few seconds, and always before a
device's lease is released), so a killed orchestrator loses at most the unwritten batch and the jobs in
flight, which a re-run measures again; a re-run skips what the store already holds (exactly once, by key;
the key column is read again each time a device's lease is taken, so two collections into one dataset never
store a key twice). Jobs may arrive while the devices time (a Stream per device, fed as models are exported).
A job is timed in `settings.rounds` shuffled rounds: every pending model of a window of ROUND_WINDOW (or of
what a stream has delivered, up to that) once per round, in a new order each round (the agent keeps the
window's sessions loaded between rounds). Transport failures are retried with exponential backoff on a
fresh connection; a device that
stays down, or that cannot run the jobs at all (wrong key, changed host key, runtime missing), is marked
failed and the other devices go on. A hung model is a `timeout` row, not a failed device. SIGINT and
SIGTERM kill every agent at once (the devices stop timing, their leases are released) and raise
Interrupted with a one-line summary.
"""
from __future__ import annotations

import queue
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Iterable, Optional, Sequence, Union

from .cache import evictions, max_bytes
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

    @property
    def remaining(self) -> int:
        return self.total - self.skipped - self.measured - self.errors

    def fail(self, message: str, exit_code: int = 1) -> None:
        """The device is out of this run: why, and the exit code that means."""
        self.status, self.message, self.exit_code = "failed", message, exit_code


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


# Jobs whose rounds interleave: the agent's default --max-sessions, so every round after the first runs on
# a session the agent still holds (a .pt2 load is ~0.6 s) while rounds still spread over many models.
ROUND_WINDOW = 64


def round_queue(jobs: Sequence[Job], seed: int = 0, window: int = ROUND_WINDOW) -> list:
    """(job, round) pairs, `window` jobs at a time: round r visits every job of the window that needs more
    than r rounds, in a fresh shuffled order."""
    order = []
    for w in range(0, len(jobs), window):
        block = jobs[w:w + window]
        for r in range(max(j.settings.rounds for j in block)):
            these = [j for j in block if j.settings.rounds > r]
            random.Random(seed * 1000003 + w * 1009 + r).shuffle(these)
            order += [(j, r) for j in these]
    return order


class Stream:
    """One device's jobs as they arrive while it already times (models still exporting): a bounded queue that
    a feeder fills and run_device drains a window at a time. Bounded, so a slow device holds back the exports
    (and the files on disk) instead of letting them run far ahead."""

    def __init__(self, maxsize: int = 2 * ROUND_WINDOW):
        self._q: queue.Queue = queue.Queue(maxsize)
        self._ended = threading.Event()

    def put(self, job: Job, wanted: Callable[[], bool]) -> bool:
        """Queue `job`, waiting while the queue is full; False (dropped) once `wanted()` turns False."""
        while wanted():
            try:
                self._q.put(job, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def end(self) -> None:
        self._ended.set()

    def window(self, stop: threading.Event, limit: int = ROUND_WINDOW) -> Optional[list]:
        """The next jobs (at least one, at most `limit`: what has arrived), waiting for the first; None once
        the stream has ended and is drained, or `stop` is set."""
        while not stop.is_set():
            try:
                first = self._q.get(timeout=0.2)
            except queue.Empty:
                if self._ended.is_set() and self._q.empty():
                    return None
                continue
            out = [first]
            while len(out) < limit:
                try:
                    out.append(self._q.get_nowait())
                except queue.Empty:
                    break
            return out
        return None


def feed(jobs: Iterable[Job], streams: dict, reports: dict, done: set, stop: threading.Event,
         errors: list) -> None:
    """Deal a lazy iterable of jobs into the devices' streams (the feeder thread of a streamed collection):
    keys already stored are counted as skipped, a device that has stopped gets no more; each device's total
    becomes exact when the iterable ends. An error (an export that failed) stops every device and is kept in
    `errors` for collect to raise; the rows measured before it are kept."""
    seen, count = set(), {name: 0 for name in streams}
    try:
        for job in jobs:
            if stop.is_set():
                return
            if job.device not in streams:
                raise LatkitError(f"a job names device {job.device!r}, which was not given")
            if job.key in seen:
                continue
            seen.add(job.key)
            rep = reports[job.device]
            count[job.device] += 1
            rep.total = max(rep.total, count[job.device])
            if job.key in done:
                rep.skipped += 1
                continue
            streams[job.device].put(job, lambda: not stop.is_set() and rep.status in ("pending", "running"))
        for name, n in count.items():
            reports[name].total = n
    except BaseException as e:  # noqa: B902 - handed to the main thread
        errors.append(e)
        stop.set()
    finally:
        getattr(jobs, "close", lambda: None)()  # a generator of exports: cancel what has not started
        for s in streams.values():
            s.end()


def run_device(device: Device, jobs: Union[Sequence[Job], Stream], store: Store, report: DeviceReport, retries: int = 3,
               backoff_s: float = 1.0, job_timeout: float = 600.0, on_row: Optional[Callable] = None,
               stop: Optional[threading.Event] = None, active: Optional[set] = None, wait: bool = True,
               retry_errors: bool = False, cache_max_gb: Optional[float] = None, force: bool = False) -> None:
    """Measure `jobs` on `device` in shuffled rounds, appending each job's row once its last round is in.
    A Stream of jobs is measured a window at a time, as they arrive (the agent starts while the first is
    still on its way). `cache_max_gb` bounds the device's model cache (models measured here go first,
    pending ones stay). `force` measures every job even where the store holds its key (after the lease
    too: the re-read of stored keys would drop them)."""
    t0 = time.perf_counter()
    stop = stop or threading.Event()
    report.status = "running"
    source = jobs if isinstance(jobs, Stream) else None
    pending = [] if source else round_queue(jobs)
    windows, done = 0, set()
    parts: dict = {}  # key -> the job's rounds so far
    runner = DeviceRunner(device, timeout=job_timeout, wait=wait)
    rows = store.writer()  # flushed before the lease is released, so the next holder sees every row
    if active is not None:
        active.add(runner)
    failures = 0
    try:
        while pending or source:
            if stop.is_set():
                report.status = "stopped"
                return
            try:
                if not runner.started:
                    runner.start()
                    report.agent_starts += 1
                    store.record_devices({runner.fingerprint: dict(runner.probe, device=device.name)})
                    runner.lease()
                    # while we waited, another collection may have measured some of these into the same store
                    done = set() if force else store.done_keys(include_errors=not retry_errors)
                    gone = {j.key for j, _ in pending if j.key in done}
                    report.skipped += len(gone)
                    pending = [(j, r) for j, r in pending if j.key not in gone]
                    for k in gone:
                        parts.pop(k, None)
                    if not pending and not source:
                        break
                if not pending:
                    block = source.window(stop)
                    if block is None:
                        if stop.is_set():
                            report.status = "stopped"
                            return
                        break
                    windows += 1
                    fresh = [j for j in block if j.key not in done]
                    report.skipped += len(block) - len(fresh)
                    pending = round_queue(fresh, seed=windows)
                    continue
                job, _ = pending[0]
                if report.first_timing_at is None:
                    report.first_timing_at = time.time()
                t_job = time.perf_counter()
                if report.start_s is None:
                    report.start_s = t_job - t0
                m = runner.measure(job, pending[1][0] if len(pending) > 1 else None)
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
                    report.fail(f"{e} (gave up after {retries} retries)")
                    return
                time.sleep(backoff_s * 2 ** (failures - 1))
                continue
            except LatkitError as e:
                report.fail(str(e), e.exit_code)
                return
            failures = 0
            pending.pop(0)
            if m.status == "ok":
                report.timing_s += m.warmup_s + sum(m.samples_ms) / 1e3
                fresh = not (m.round_session_reused and m.round_session_reused[0])  # a reused session loaded nothing
                report.agent_s += (m.load_ms or 0) / 1e3 * fresh + m.warmup_s + sum(m.samples_ms) / 1e3
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
                report.fail(f"cannot write rows to {store.uri}: {e}")
                return
            if cache_max_gb is not None:
                bound_device_cache(runner, cache_max_gb, {j.artifact.sha256 for j, _ in pending})
            if m.status == "ok":
                report.measured += 1
            else:
                report.errors += 1
                report.failed.append((job.artifact.arch, m.error_kind, m.error))
            if on_row:
                on_row(report, m)
            if m.error_kind == "protocol_error":  # its row is kept; a device that lies measures nothing more
                report.fail(m.error)
                return
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
        report.fail(f"cannot write rows to {store.uri}: {e}")
        return False


def bound_device_cache(runner: DeviceRunner, max_gb: float, pending: set) -> None:
    """Evict models from the device's cache down to `max_gb`, least recently used first; the models still
    pending on this device stay (every other one is measured here already)."""
    gone = evictions(runner.transport.model_files(), max_bytes(max_gb), keep=pending)
    if gone:
        runner.transport.evict({f.sha256 for f in gone})


def collect(jobs: Iterable[Job], devices: Sequence[Device], out="latkit-data", retries: int = 3,
            backoff_s: float = 1.0, job_timeout: float = 600.0, max_workers: int = 64, progress: bool = True,
            retry_errors: bool = False, wait: bool = True, cache_max_gb: Optional[float] = None,
            executor: Optional[str] = None, refs: Optional[dict] = None,
            expected: Optional[int] = None) -> CollectReport:
    """Run every job on its device (Job.device names it). Returns per-device counts and failures.
    `jobs` may be lazy (an iterator, e.g. of models still exporting): then a feeder thread deals them into
    each device's Stream as they come, so devices time while later jobs are made (`expected`: jobs per
    device, for progress until the iterator ends). Ctrl-C or SIGTERM (raised as Interrupted by the CLI's
    handler) stops every device within seconds. `executor`: None runs every device from a thread here; a
    Ray address ("" starts a cluster here) drives each device from a Ray actor (collector/ray_executor.py;
    `refs` are its exported models' object refs)."""
    streamed = not isinstance(jobs, (list, tuple))
    if executor is not None:
        if cache_max_gb is not None:
            raise LatkitError("--cache-max-gb does not apply to --executor ray yet (each node keeps its own cache); "
                              "leave it out")
        from .ray_executor import collect_ray
        return collect_ray(list(jobs), devices, out, executor, refs, retries=retries, backoff_s=backoff_s,
                           job_timeout=job_timeout, retry_errors=retry_errors, wait=wait)
    store = Store(out)
    store.check_writable()  # before any device time is spent
    store.devices()  # a corrupt device probe is named now, not when the first device has started
    by_name = {d.name: d for d in devices}
    done = store.done_keys(include_errors=not retry_errors)
    reports, todo = {}, {}
    if streamed:
        for name in by_name:
            reports[name], todo[name] = DeviceReport(name, total=expected or 0), Stream()
    else:
        unknown = {j.device for j in jobs} - set(by_name)
        if unknown:
            raise LatkitError(f"jobs name devices that were not given: {', '.join(sorted(unknown))}")
        for name in by_name:
            mine = list({j.key: j for j in jobs if j.device == name}.values())
            keep = [j for j in mine if j.key not in done]
            reports[name] = DeviceReport(name, total=len(mine), skipped=len(mine) - len(keep))
            todo[name] = keep
    report = CollectReport(list(reports.values()))
    stop, active, errors = threading.Event(), set(), []
    feeder = threading.Thread(target=feed, args=(jobs, todo, reports, done, stop, errors), daemon=True,
                              name="latkit-feed") if streamed else None
    pool = ThreadPoolExecutor(max_workers=max(1, min(max_workers, len(by_name))))
    try:
        with CollectProgress(report, enabled=progress) as bar:
            futures = [pool.submit(run_device, by_name[n], todo[n], store, reports[n], retries, backoff_s,
                                   job_timeout, bar.update, stop, active, wait, retry_errors, cache_max_gb)
                       for n in by_name]
            if feeder:
                feeder.start()
            for f in futures:
                f.result()
            if feeder:
                feeder.join()
            bar.update()
    except (KeyboardInterrupt, Interrupted) as e:
        stop.set()
        for runner in list(active):
            runner.kill()
        pool.shutdown(wait=True)
        if feeder:
            feeder.join(timeout=5)  # an export in progress finishes in its worker; nothing waits for it
        sig = e if isinstance(e, Interrupted) else Interrupted("SIGINT", 130)
        raise Interrupted(sig.signame, sig.exit_code, f"interrupted by {sig.signame}: {report.line()}; run the "
                          "same command again to resume") from None
    finally:
        pool.shutdown(wait=True)
    if errors:
        e = errors[0]
        if isinstance(e, LatkitError):
            said = LatkitError(f"{e} (stopped: {report.line()}; the rows measured are kept, the same command resumes)")
            said.exit_code = e.exit_code
            raise said from None
        raise e
    return report
