"""Streaming collection on one device: jobs are measured as they arrive, by one agent.

`collect` needs every job up front (it shuffles rounds over all of them); a job's key needs its model's
sha256, so that means every model exported before the device times anything. Here jobs come from any
iterable, e.g. one that waits on exports still running; the agent starts at once, while the first job
is still on its way, and times each job the moment it comes. It is the loop every executor uses
(device_loop.measurements: lease, stored keys read again after it, retries, flush, kill), fed one job at a
time; the caller sees each Measurement and may stop at any time (a time budget, enough rows), which shuts the
agent down and releases the lease. Jobs are timed in one round each, in arrival order: GPU jobs (one round by
default) lose nothing; CPU jobs that want shuffled rounds belong in `collect`.
"""
from __future__ import annotations

from typing import Callable, Iterable, Iterator

from .device_loop import Arrivals, DeviceRequest, GaveUp, measurements
from .devices import Device
from .errors import Failure, LatkitError
from .job import Job
from .measurement import Measurement
from .store import Store


def measure_stream(device: Device, jobs: Iterable[Job], store_of: Callable[[Job], Store], retries: int = 3,
                   backoff_s: float = 1.0, job_timeout: float = 600.0, wait: bool = True) -> Iterator[Measurement]:
    """Measure each job on `device` as it arrives, append its row to `store_of(job)` (with the device's
    probe, once per store and agent) and yield the Measurement; a job whose store held its key when the lease
    was taken is skipped. A broken link is retried on a fresh agent with backoff; a hung model becomes a timeout
    row and a fresh agent takes the next job. Set-up failures (runtime missing, lease refused, `retries` failed
    restarts in a row) raise LatkitError."""
    def check(job: Job) -> None:
        if job.settings.rounds != 1:
            raise LatkitError(f"a streamed job is timed in one round, this one asks for {job.settings.rounds}; "
                              "give rounds=1 or use collect() for shuffled rounds")
        if job.device != device.name:
            raise LatkitError(f"a job for device {job.device} was streamed to {device.name}")

    checked: set = set()

    def checked_store(job: Job) -> Store:
        store = store_of(job)
        if store.root not in checked:
            store.check_writable()  # before the device times anything for it
            checked.add(store.root)
        return store

    loop = measurements(device, Arrivals(jobs, check), checked_store,
                        DeviceRequest(retries=retries, backoff_s=backoff_s, job_timeout=job_timeout, wait=wait))
    try:
        for m in loop:
            if m.error_kind == "protocol_error":  # the row is kept (written as the loop closes); the device is done
                raise Failure(m.error)
            yield m
    except GaveUp as e:
        raise Failure(f"{device.name}: {e}") from None
    finally:
        loop.close()
