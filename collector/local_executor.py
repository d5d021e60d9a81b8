"""The in-process executor: every device driven from a thread of this process, all devices at once.

Rows are written in batches (Store.writer: every few hundred rows or few seconds, and always before a
device's lease is released), so a killed orchestrator loses at most the unwritten batch and the jobs in
flight, which a re-run measures again; a re-run skips what the store already holds (exactly once, by key,
read again each time a device's lease is taken: device_loop). Jobs may arrive while the devices time (a Stream
per device, fed as models are exported). A device that stays down, or that cannot run the jobs at all (wrong
key, changed host key, runtime missing), is marked failed and the other devices go on. SIGINT and SIGTERM kill
every agent at once (the devices stop timing, their leases are released) and raise Interrupted with a
one-line summary.
"""
from __future__ import annotations

import dataclasses
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Iterable, Sequence

from .device_loop import Stream, run_device
from .devices import Device
from .errors import Interrupted, LatkitError
from .executor import CollectRequest, Exported, Executor
from .job import Job
from .pipeline import ExportRequest, export_plan, iter_space_artifacts
from .progress import CollectProgress, progress_iter
from .reports import CollectReport, DeviceReport
from .store import Store

log = logging.getLogger("latkit")


def feed(jobs: Iterable[Job], streams: dict, reports: dict, done: set, stop: threading.Event,
         errors: list, kept: set | frozenset = frozenset()) -> None:
    """Deal a lazy iterable of jobs into the devices' streams (the feeder thread of a streamed collection):
    keys already stored are counted as skipped (those in `kept`, stored errors, also as such), a device that
    has stopped gets no more; each device's total becomes exact when the iterable ends. An error (an export
    that failed) stops every device and is kept in `errors` for collect to raise; the rows measured before it
    are kept."""
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
                rep.skipped_errors += job.key in kept
                continue
            streams[job.device].put(job, lambda: not stop.is_set() and rep.active)
        for name, n in count.items():
            reports[name].total = n
    except BaseException as e:  # noqa: B902 - handed to the main thread
        errors.append(e)
        stop.set()
    finally:
        getattr(jobs, "close", lambda: None)()  # a generator of exports: cancel what has not started
        for s in streams.values():
            s.end()


def _queues(jobs, names: Sequence[str], done: set, request: CollectRequest, streamed: bool,
            kept: set | frozenset = frozenset()) -> tuple:
    """Each device's report and jobs: a Stream a feeder fills, or the list of its jobs not yet stored."""
    reports, todo = {}, {}
    if streamed:
        for name in names:
            reports[name], todo[name] = DeviceReport(name, total=request.expected or 0), Stream()
        return reports, todo
    unknown = {j.device for j in jobs} - set(names)
    if unknown:
        raise LatkitError(f"jobs name devices that were not given: {', '.join(sorted(unknown))}")
    for name in names:
        mine = list({j.key: j for j in jobs if j.device == name}.values())
        keep = [j for j in mine if j.key not in done]
        reports[name] = DeviceReport(name, total=len(mine), skipped=len(mine) - len(keep),
                                     skipped_errors=sum(j.key in kept for j in mine))
        todo[name] = keep
    return reports, todo


def _raise_feed_error(errors: list, report: CollectReport) -> None:
    """The feeder's error (an export that failed), with what was kept and how to resume."""
    e = errors[0]
    if isinstance(e, LatkitError):
        said = LatkitError(f"{e} (stopped: {report.line()}; the rows measured are kept, the same command resumes)")
        said.exit_code = e.exit_code
        raise said from None
    raise e


class LocalExecutor(Executor):
    """Threads of this process: one per device (up to `max_workers`), exports in worker processes beside them."""

    name = "local"
    exports_here = True

    def export(self, request: ExportRequest, devices: Sequence[Device], settings, progress: bool) -> Exported:
        """Exports stream into the devices' queues as they finish, unless export_plan says a local device would
        share its cores with them: then every export first."""
        plan = export_plan(devices, settings)  # said once the inputs are known good, so a refusal stays one line
        if request.workers is not None:
            plan = dataclasses.replace(plan, workers=request.workers, why=f"{request.workers} export worker(s) (given)"
                                       + ("" if plan.stream else ", all before timing: a local device shares their cores"))
        log.info("%s", plan.why)
        r = request
        arts = iter_space_artifacts(r.space, r.archs, r.fmt, r.batch_size, r.resolution, plan.workers,
                                    cache_dir=r.cache, weight_seed=r.weight_seed, cores=plan.cores, pool=plan.stream)
        if not plan.stream:
            arts = list(progress_iter(arts, f"exporting {len(r.archs)} {r.space.name} archs to {r.fmt}", progress,
                                      total=len(r.archs)))
        return Exported(arts, streamed=plan.stream)

    def collect(self, jobs: Iterable[Job], devices: Sequence[Device], request: CollectRequest) -> CollectReport:
        """`jobs` may be lazy (an iterator, e.g. of models still exporting): a feeder thread deals them into each
        device's Stream as they come. Ctrl-C or SIGTERM (raised as Interrupted by the CLI's handler) stops every
        device within seconds."""
        streamed = not isinstance(jobs, (list, tuple))
        store = Store(request.out)
        store.check_writable()  # before any device time is spent
        store.devices()  # a corrupt device probe is named now, not when the first device has started
        by_name = {d.name: d for d in devices}
        done, kept = store.skip_keys(include_errors=not request.device.retry_errors)
        reports, todo = _queues(jobs, list(by_name), done, request, streamed, kept)
        report = CollectReport(list(reports.values()))
        stop, active, errors = threading.Event(), set(), []
        feeder = threading.Thread(target=feed, args=(jobs, todo, reports, done, stop, errors, kept), daemon=True,
                                  name="latkit-feed") if streamed else None
        pool = ThreadPoolExecutor(max_workers=max(1, min(request.max_workers, len(by_name))))
        try:
            with CollectProgress(report, enabled=request.progress) as bar:
                futures = [pool.submit(run_device, by_name[n], todo[n], store, reports[n], request.device, bar.update,
                                       stop, active) for n in by_name]
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
            _raise_feed_error(errors, report)
        return report
