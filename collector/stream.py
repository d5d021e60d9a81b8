"""Streaming collection on one device: jobs are measured as they arrive, by one agent.

`collect` needs every job up front (it shuffles rounds over all of them); a job's key needs its model's
sha256, so that means every model exported before the device times anything. Here jobs come from any
iterable, e.g. one that waits on exports still running; the agent starts at once, while the first job
is still on its way, and times each job the moment it comes. Rows are written in batches (Store.writer),
and what is buffered when the stream ends, fails or is stopped; the caller sees each Measurement and may
stop at any time (a time budget, enough rows), which shuts the agent down and releases the lease. Jobs are
timed in one round each, in arrival order: GPU jobs (one round by default) lose nothing; CPU jobs that
want shuffled rounds belong in `collect`.
"""
from __future__ import annotations

import time
from typing import Callable, Iterable, Iterator

from .devices import Device
from .errors import Failure, LatkitError, TransportError
from .job import Job
from .measurement import Measurement
from .runner import DeviceRunner
from .store import Store


def measure_stream(device: Device, jobs: Iterable[Job], store_of: Callable[[Job], Store], retries: int = 3,
                   backoff_s: float = 1.0, job_timeout: float = 600.0, wait: bool = True) -> Iterator[Measurement]:
    """Measure each job on `device` as it arrives, append its row to `store_of(job)` (with the device's
    probe, once per store) and yield the Measurement. A broken link is retried on a fresh agent with
    backoff; a hung model becomes a timeout row and a fresh agent takes the next job. Set-up failures
    (runtime missing, lease refused, `retries` failed restarts in a row) raise LatkitError."""
    runner = DeviceRunner(device, timeout=job_timeout, wait=wait)
    writers: dict = {}  # root -> the batch writer of each store checked writable
    probed: set = set()  # ... and of those that have this agent's probe

    def ready():
        if not runner.started:
            runner.start()
            runner.lease()
            probed.clear()  # a restarted agent probes again: record what it found

    try:
        try:
            ready()  # the agent's start (runtime imports, probe, lease) overlaps the wait for the first job
        except TransportError:
            runner.close()  # retried with the first job
        for job in jobs:
            if job.settings.rounds != 1:
                raise LatkitError(f"a streamed job is timed in one round, this one asks for {job.settings.rounds}; "
                                  "give rounds=1 or use collect() for shuffled rounds")
            if job.device != device.name:
                raise LatkitError(f"a job for device {job.device} was streamed to {device.name}")
            store = store_of(job)
            if store.root not in writers:
                store.check_writable()  # before the device times anything for it
                writers[store.root] = store.writer()
            failures = 0
            while True:
                try:
                    ready()
                    if store.root not in probed:
                        store.record_devices({runner.fingerprint: dict(runner.probe, device=device.name)})
                        probed.add(store.root)
                    m = runner.measure(job)
                    break
                except TransportError as e:
                    for w in writers.values():  # before the lease goes: the next holder must see these rows
                        w.flush()
                    runner.close()
                    failures += 1
                    if failures > retries:
                        raise Failure(f"{device.name}: {e} (gave up after {retries} retries)") from None
                    time.sleep(backoff_s * 2 ** (failures - 1))
            writers[store.root].add(m.to_row())
            if m.error_kind == "protocol_error":  # the row is kept (the writers close below); the device is done
                raise Failure(m.error)
            yield m
    except GeneratorExit:
        raise  # the caller stopped early: the agent is shut down politely below
    except BaseException:
        runner.kill()  # an error or Ctrl-C: stop the device now, not after a polite wait
        raise
    finally:
        try:
            for w in writers.values():
                w.close()
        finally:
            runner.close()
