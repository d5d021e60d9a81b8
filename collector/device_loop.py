"""One device, one loop: every executor (in-process threads, Ray actors, the caller-driven stream) times
jobs through `measurements`, a generator that yields each Measurement once its row is buffered.

The loop starts the agent, records its probe in each store it writes to, takes the device lease and then
reads the stored keys again (another collection may have measured some jobs into the same store while it
waited: a key is stored once). Jobs come from a source a window at a time (all at once, a Stream fed while
models export, or one by one as a caller hands them over) and are timed in `settings.rounds` shuffled rounds
(round_queue). A broken link is retried on a fresh agent with capped, jittered exponential backoff; rows are
flushed before the lease can go (the next holder must see them), and an error or Ctrl-C kills the agent at
once, while a caller that stops early (closes the generator) shuts it down politely. With `reference` on
(`collect`'s default), the loop also times the reference network's A/A pair now and then (collector/reference.py)
into the dataset's side table, and keeps each check in the report (collector/drift.py reads them).
"""
from __future__ import annotations

import logging
import queue
import random
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Optional, Sequence, Union

from .cache import DEFAULT_CACHE, evictions, max_bytes
from .devices import Device
from .drift import Check
from .errors import Failure, LatkitError, TransportError
from .job import Job
from .measurement import Measurement
from .progress import bars
from .reference import REFERENCE_EVERY_JOBS, REFERENCE_EVERY_S, Schedule, side_store
from .reports import DeviceReport, DeviceStatus
from .rounds import prune, read_saved, rounds_store, take_back
from .runner import DeviceRunner
from .store import Store

log = logging.getLogger("latkit")

# Jobs whose rounds interleave: the agent's default --max-sessions, so every round after the first runs on
# a session the agent still holds (a .pt2 load is ~0.6 s) while rounds still spread over many models.
ROUND_WINDOW = 64


@dataclass(frozen=True)
class DeviceRequest:
    """How a device is driven, from the caller's options down to its loop (a frozen value, so none is lost on
    the way). `force` measures every job even where the store holds its key (after the lease too);
    `retry_errors` measures again the jobs whose stored row is an error; `cache_max_gb` bounds the device's
    model cache (models measured here go first, pending ones stay); `reference` times the reference network's A/A
    pair first, every `reference_every_s` seconds or `reference_every_jobs` jobs, and last (collector/reference.py)."""

    retries: int = 3
    backoff_s: float = 1.0
    backoff_max_s: float = 60.0
    job_timeout: float = 600.0
    wait: bool = True
    retry_errors: bool = False
    force: bool = False
    cache_max_gb: Optional[float] = None
    reference: bool = False
    reference_every_s: float = REFERENCE_EVERY_S
    reference_every_jobs: int = REFERENCE_EVERY_JOBS

    def backoff(self, failures: int) -> float:
        """Seconds before retry number `failures`: doubling from backoff_s, capped, with +-25 % jitter so devices
        behind one broken link do not all come back at the same moment."""
        return min(self.backoff_max_s, self.backoff_s * 2 ** (failures - 1)) * random.uniform(0.75, 1.25)


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
    a feeder fills and the loop drains a window at a time. Bounded, so a slow device holds back the exports
    (and the files on disk) instead of letting them run far ahead."""

    first_seed = 1  # round_queue's seed of the first window (the next ones count up)

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


class Batch:
    """Jobs known up front: queued in shuffled rounds before the agent starts (round_queue windows them)."""

    def __init__(self, jobs: Sequence[Job]):
        self.jobs = list(jobs)


class Arrivals:
    """Jobs from any iterable, each timed the moment it comes (a window of one)."""

    first_seed = 0

    def __init__(self, jobs: Iterable[Job], check: Callable[[Job], None] = lambda job: None):
        self._jobs, self._check = iter(jobs), check

    def window(self, stop: threading.Event) -> Optional[list]:
        job = next(self._jobs, None)
        if job is None:
            return None
        self._check(job)
        return [job]


Source = Union[Batch, Stream, Arrivals]


class GaveUp(Failure):
    """A device that stayed unreachable through every retry."""


class _Rows:
    """The loop's stores: a batch writer each, the probe of the running agent recorded once in each, and the
    keys each held when the lease was last taken."""

    def __init__(self, store_of: Callable[[Job], Store], request: DeviceRequest):
        self.store_of, self.request = store_of, request
        self.writers: dict = {}  # Store.root -> (store, writer)
        self.sides: dict = {}  # (Store.root, side) -> side(store)
        self.probed: set = set()
        self.done: dict = {}  # Store.root -> keys stored when the lease was taken

    def new_lease(self) -> None:
        self.probed.clear()
        self.done.clear()

    def writer(self, job: Job, runner: DeviceRunner, side: Optional[Callable[[Store], Store]] = None):
        """The batch writer of `job`'s store, or of the side table `side(store)` (reference, saved rounds)."""
        store = self.store_of(job)
        if side is not None:
            store = self.sides.setdefault((store.root, side), side(store))
        if store.root not in self.writers:
            self.writers[store.root] = (store, store.writer())
        # saved rounds are scratch, not a dataset to share: their probe is the data's
        if store.root not in self.probed and runner.probe is not None and side is not rounds_store:
            store.record_devices({runner.fingerprint: dict(runner.probe, device=runner.device.name)})
            self.probed.add(store.root)
        return self.writers[store.root]

    def stored(self, job: Job) -> bool:
        """Whether `job`'s store held its key when this lease was taken (never, with `force`)."""
        if self.request.force:
            return False
        store = self.store_of(job)
        if store.root not in self.done:
            self.done[store.root] = store.done_keys(include_errors=not self.request.retry_errors)
        return job.key in self.done[store.root]

    def flush(self, close: bool = False) -> None:
        """Write what is buffered (before a lease can go); a write that fails fails the device."""
        for store, w in self.writers.values():
            try:
                w.close() if close else w.flush()
            except OSError as e:
                raise Failure(f"cannot write rows to {store.uri}: {e}") from None


def _account(report: DeviceReport, m: Measurement) -> None:
    """The device's own time in a round: warmup and timed runs, plus the load of a fresh session."""
    if m.status == "ok":
        report.timing_s += m.warmup_s + sum(m.samples_ms) / 1e3
        fresh = not (m.round_session_reused and m.round_session_reused[0])  # a reused session loaded nothing
        report.agent_s += (m.load_ms or 0) / 1e3 * fresh + m.warmup_s + sum(m.samples_ms) / 1e3


def _counted(report: DeviceReport, m: Measurement) -> None:
    if m.status == "ok":
        report.measured += 1
    else:
        report.errors += 1
        report.failed.append((m.job.artifact.arch, m.error_kind, m.error))


def bound_device_cache(runner: DeviceRunner, max_gb: float, pending: set) -> None:
    """Evict models from the device's cache down to `max_gb`, least recently used first; the models still
    pending on this device stay (every other one is measured here already)."""
    gone = evictions(runner.transport.model_files(), max_bytes(max_gb), keep=pending)
    if gone:
        runner.transport.evict({f.sha256 for f in gone})


class _Loop:
    """The state of one device's loop; `run` is the generator."""

    def __init__(self, device: Device, source: Source, store_of: Callable[[Job], Store], request: DeviceRequest,
                 report: DeviceReport, stop: threading.Event, active: Optional[set]):
        self.device, self.source, self.request, self.report, self.stop = device, source, request, report, stop
        self.rows = _Rows(store_of, request)
        self.runner = DeviceRunner(device, timeout=request.job_timeout, wait=request.wait)
        self.active = active
        batch = isinstance(source, Batch)
        self.pending: list = round_queue(source.jobs) if batch else []  # (job, round) still to time
        self.parts: dict = {}  # key -> the job's rounds so far
        self.saved: dict = {}  # Store.root -> key -> rows of rounds an earlier run saved (collector/rounds.py)
        self.saved_in: dict = {}  # Store.root -> the store whose side table holds rounds of this device
        self.windows = 0
        self.round: Optional[int] = None  # the round of the request before (note_round)
        self.more = not batch  # the source may have more jobs
        self.schedule = Schedule(request.reference_every_s, request.reference_every_jobs) if request.reference else None
        self.template: Optional[Job] = None  # the job whose device and settings every reference check takes
        self.t0 = time.perf_counter()

    def start(self) -> None:
        """A fresh agent holding the lease; pending jobs stored meanwhile (by another collection) are dropped."""
        self.runner.start()
        self.report.agent_starts += 1
        self.runner.lease()
        self.rows.new_lease()
        gone = {j.key for j, _ in self.pending if self.rows.stored(j)}
        self.report.skipped += len(gone)
        self.pending = [(j, r) for j, r in self.pending if j.key not in gone]
        for k in gone:
            self.parts.pop(k, None)
        self.take_saved()

    def refill(self) -> None:
        """The next window of the source, less what is stored, in shuffled rounds; `more` False once it ends."""
        block = self.source.window(self.stop)
        if block is None:
            self.more = False
            return
        fresh = [j for j in block if not self.rows.stored(j)]
        self.report.skipped += len(block) - len(fresh)
        self.pending = round_queue(fresh, seed=self.source.first_seed + self.windows) if fresh else []
        self.windows += 1
        self.take_saved()

    def take_saved(self) -> None:
        """Rounds of pending jobs that an earlier run timed on this hardware, runtime and agent version and saved (a
        stop comes between rounds: collector/rounds.py) count as timed: they leave the queue, and each job's row
        combines them with the rounds timed now. Not with `force`, which times every round afresh."""
        if self.request.force:
            return
        got: dict = {}
        for j, _ in self.pending:
            if j.settings.rounds == 1:
                continue
            store = self.rows.store_of(j)
            if store.root not in self.saved:
                self.saved[store.root] = read_saved(store, self.device.name, self.runner.probe or {})
                if self.saved[store.root]:
                    self.saved_in[store.root] = store
            back = take_back(j, self.saved[store.root].pop(j.key, []))
            if back:
                got[j.key] = back
        if not got:
            return
        self.parts.update(got)
        self.pending = [(j, r) for j, r in self.pending if r >= len(got.get(j.key, ()))]
        n = sum(map(len, got.values()))
        self.report.rounds_taken += n
        log.info("%s: %d round(s) of %d model(s) timed by an earlier run taken back", self.device.name, n, len(got))

    def first_request(self) -> float:
        """Now (perf_counter), noting the first measure request of the run in the report."""
        if self.report.first_timing_at is None:
            self.report.first_timing_at = time.time()
        now = time.perf_counter()
        if self.report.start_s is None:
            self.report.start_s = now - self.t0
        return now

    def note_round(self) -> None:
        """Say which round begins: a model is a row only after its last round, so a window's first rows come
        rounds - 1 rounds in (~30 s on a CPU), and a collection must not look hung until then."""
        job, r = self.pending[0]
        if r == self.round:
            return
        self.round = r
        n = next((i for i, (_, q) in enumerate(self.pending) if q != r), len(self.pending))
        self.report.round_note = f"round {r + 1} of {job.settings.rounds}, {n} model(s)"
        if job.settings.rounds > 1 and n > 1 and not bars():  # a bar shows it (progress.CollectProgress)
            log.info("%s: %s%s", self.device.name, self.report.round_note,
                     "; a model is stored after its last round" if r == 0 else "")

    def measure(self) -> Measurement:
        self.note_round()
        job = self.pending[0][0]
        self.rows.writer(job, self.runner)  # the store's probe, before the first row of this agent
        t_job = self.first_request()
        m = self.runner.measure(job, self.pending[1][0] if len(self.pending) > 1 else None)
        self.report.busy_s += time.perf_counter() - t_job
        return m

    def jobs_done(self) -> int:
        return self.report.measured + self.report.errors

    def check(self) -> None:
        """One A/A check: the reference twins timed a round each in the order a b b a (ABBA: what comes first, and
        a drift that is linear over the check, weigh on both alike) under the first job's settings, a row per twin
        into the side table (each a new row: Schedule.key), the pair into the report. A twin that fails ends the
        checks."""
        sch = self.schedule
        self.template = self.template or self.pending[0][0]
        twins = sch.jobs(self.template, DEFAULT_CACHE)
        if twins is None:
            self.report.reference_note = sch.off
            log.info("%s", sch.off)
            return
        self.report.reference_runtime = self.template.settings.runtime
        t, rounds = self.first_request(), {job.key: [] for job in twins}
        for job in (twins[0], twins[1], twins[1], twins[0]):
            m = self.runner.measure(job)
            if m.status != "ok":
                self.write(job, dict(m.to_row(), key=sch.key(job), sampler=sch.sampler), side=side_store)
                sch.off = f"reference on {self.device.name} failed: {m.error_kind}: {m.error}"
                self.report.reference_note = sch.off
                log.info("%s", sch.off)
                break
            rounds[job.key].append(m)
        got = [Measurement.combine(rounds[job.key]) for job in twins] if sch.off == "" else []
        for job, m in zip(twins, got):
            self.write(job, dict(m.to_row(), key=sch.key(job), sampler=sch.sampler), side=side_store)
        sch.done(self.jobs_done())
        self.bound_cache()
        self.report.reference_s += time.perf_counter() - t
        if len(got) == 2 and sch.off == "":
            a, b = got
            at = a.round_started_at[0] if a.round_started_at and a.round_started_at[0] else a.measured_at
            self.report.checks.append(Check(at, a.latency_ms, b.latency_ms,
                                            max((x.ci_rel for x in got if x.ci_rel is not None), default=None),
                                            max((t for x in got for t in x.round_finished_at if t), default=None)))

    def end_check(self) -> None:
        """The last check, after the last job; a device that cannot give it now keeps its rows and says why."""
        try:
            if not self.runner.started:
                self.start()
            self.check()
        except LatkitError as e:
            self.report.reference_note = f"no end check of the reference on {self.device.name}: {e}"
            log.info("%s", self.report.reference_note)

    def step(self) -> Optional[Measurement]:
        """One request: start the agent, take a window, check the reference or time one round; the Measurement
        when a job is done."""
        if not self.runner.started:
            self.start()
            return None
        if not self.pending:
            self.refill()
            return None
        if self.schedule and self.schedule.due(self.jobs_done()):
            self.check()
            return None
        m = self.measure()
        job, _ = self.pending.pop(0)
        _account(self.report, m)
        if m.status == "ok":
            self.parts.setdefault(job.key, []).append(m)
            if len(self.parts[job.key]) < job.settings.rounds:  # saved, so that a stop before its last loses none
                self.write(job, m.to_row(), side=rounds_store)
                store = self.rows.store_of(job)
                self.saved_in.setdefault(store.root, store)
                return None
            return Measurement.combine(self.parts.pop(job.key))
        self.parts.pop(job.key, None)  # an error ends the job: its later rounds are dropped
        self.pending = [(j, r) for j, r in self.pending if j.key != job.key]
        return m

    def write(self, job: Job, row: dict, side: Optional[Callable[[Store], Store]] = None) -> None:
        """Buffer a row in `job`'s store (or in its side table `side(store)`); a write that fails fails the
        device."""
        store, writer = self.rows.writer(job, self.runner, side)
        try:
            writer.add(row)
        except OSError as e:
            raise Failure(f"cannot write rows to {store.uri}: {e}") from None

    def store(self, m: Measurement) -> None:
        self.write(m.job, m.to_row())
        self.bound_cache()
        _counted(self.report, m)

    def bound_cache(self) -> None:
        if self.request.cache_max_gb is not None:  # the reference twins (170 KB) stay for the next check
            keep = {j.artifact.sha256 for j, _ in self.pending} | {a.sha256 for a in (self.schedule and
                                                                                    self.schedule.twins or ())}
            bound_device_cache(self.runner, self.request.cache_max_gb, keep)

    def drop_saved(self) -> None:
        """At the end of the jobs, while the lease is held: the rows flushed, then the device's saved rounds removed
        from each store where stored rows supersede them all (a stop keeps them for the next run)."""
        if not self.saved_in or self.parts or not self.runner.started:
            return
        self.rows.flush()
        for store in self.saved_in.values():
            try:
                prune(store, self.device.name)
            except (OSError, ValueError, LatkitError) as e:  # dead weight, never a reason to fail a device
                log.info("%s: saved rounds left in %s: %s", self.device.name, rounds_store(store).uri, e)

    def link_failed(self, e: TransportError, failures: int) -> None:
        """After a broken link: rows flushed, the agent gone, a wait before the next try (or give up)."""
        self.rows.flush()
        self.runner.close()
        if self.stop.is_set():
            return
        if failures > self.request.retries:
            raise GaveUp(f"{e} (gave up after {self.request.retries} retries)")
        time.sleep(self.request.backoff(failures))

    def run(self) -> Iterator[Measurement]:
        self.t0 = time.perf_counter()
        self.report.status = DeviceStatus.RUNNING
        if self.active is not None:
            self.active.add(self.runner)
        failures = 0
        try:
            while self.pending or self.more:
                if self.stop.is_set():
                    self.report.status = DeviceStatus.STOPPED
                    return
                try:
                    started = self.runner.started
                    m = self.step()
                except TransportError as e:
                    failures += 1
                    self.link_failed(e, failures)
                    continue
                if started:  # a request answered by a running agent (a round, a check): the link works again
                    failures = 0
                if m is None:
                    continue
                self.store(m)
                yield m
                if m.error_kind == "protocol_error":  # its row is kept; a device that lies measures nothing more
                    raise Failure(m.error)
            if self.schedule and not self.stop.is_set() and self.schedule.pending_end(self.jobs_done()):
                self.end_check()
            if not self.stop.is_set():
                self.drop_saved()
            self.report.status = DeviceStatus.DONE if not self.stop.is_set() else DeviceStatus.STOPPED
        except (GeneratorExit, LatkitError):
            raise  # the caller stopped early, or the device cannot go on: the agent is shut down politely below
        except BaseException:
            self.runner.kill()  # an error or Ctrl-C: stop the device now, not after a polite wait
            raise
        finally:
            try:
                self.rows.flush(close=True)
            finally:
                self.runner.close()
                if self.active is not None:
                    self.active.discard(self.runner)
                self.report.wall_s = time.perf_counter() - self.t0


def measurements(device: Device, source: Source, store_of: Callable[[Job], Store], request: DeviceRequest,
                 report: Optional[DeviceReport] = None, stop: Optional[threading.Event] = None,
                 active: Optional[set] = None) -> Iterator[Measurement]:
    """Time the jobs of `source` on `device`, buffering each job's row in `store_of(job)` once its last round is
    in, and yield its Measurement. `report` is kept up to date (counts, timings, status); `stop` ends the loop
    between requests; `active` holds the running DeviceRunner (to kill it from another thread). Raises
    LatkitError when the device cannot go on (GaveUp after `request.retries` failed restarts in a row)."""
    return _Loop(device, source, store_of, request, report or DeviceReport(device.name, total=0),
                 stop or threading.Event(), active).run()


def run_device(device: Device, jobs: Union[Sequence[Job], Stream], store: Store, report: DeviceReport,
               request: DeviceRequest = DeviceRequest(), on_row: Optional[Callable] = None,
               stop: Optional[threading.Event] = None, active: Optional[set] = None) -> None:
    """Measure `jobs` (a list, or a Stream measured a window at a time as jobs arrive) on `device` into `store`,
    calling `on_row(report, m)` after each stored row. A device that cannot go on is marked failed in `report`
    (with its message and exit code), not raised, so the other devices go on."""
    source = jobs if isinstance(jobs, Stream) else Batch(jobs)
    loop = measurements(device, source, lambda job: store, request, report, stop, active)
    try:
        for m in loop:
            if on_row:
                try:
                    on_row(report, m)
                except BaseException as e:  # Ctrl-C in this thread: the device stops now, as inside the loop
                    loop.throw(e)
    except LatkitError as e:
        report.fail(str(e), e.exit_code)
