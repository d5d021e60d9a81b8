"""Collection: many jobs over many devices, one measurement at a time per device, all devices at once.

`collect` picks an executor by name (EXECUTORS: `local` threads here, `ray` actors across a cluster) and
hands it the jobs; every executor drives each device through the one loop in device_loop.py (lease, resume by
stored keys, shuffled rounds, retries, flush, kill)."""
from __future__ import annotations

from typing import Iterable, Optional, Sequence, Union

from .device_loop import ROUND_WINDOW, DeviceRequest, Stream, bound_device_cache, round_queue, run_device
from .devices import Device
from .errors import LatkitError
from .executor import CollectRequest, Executor
from .job import Job
from .reference import REFERENCE_EVERY_S
from .local_executor import LocalExecutor, feed
from .ray_executor import RayExecutor
from .reports import CollectReport, DeviceReport, DeviceStatus

# Named here as before the split: callers and tests import them from the scheduler.
__all__ = ["EXECUTORS", "executor_of", "collect", "CollectReport", "DeviceReport", "DeviceStatus", "Stream", "feed",
           "round_queue", "run_device", "bound_device_cache", "ROUND_WINDOW", "DeviceRequest"]

EXECUTORS = {cls.name: cls for cls in (LocalExecutor, RayExecutor)}


def executor_of(executor: Union[None, str, Executor]) -> Executor:
    """The executor a caller named: None runs here (`local`); an Executor is itself; a string is a Ray address,
    as `--executor ray[=ADDRESS]` gives it (ray_executor.parse_executor: "" starts a cluster here)."""
    if executor is None:
        return EXECUTORS["local"]()
    if isinstance(executor, Executor):
        return executor
    if isinstance(executor, str):
        return EXECUTORS["ray"](executor)
    raise LatkitError(f"executor {executor!r}: give None (in-process), a Ray address or an Executor "
                      f"({', '.join(EXECUTORS)})")


def collect(jobs: Iterable[Job], devices: Sequence[Device], out="latkit-data", retries: int = 3,
            backoff_s: float = 1.0, job_timeout: float = 600.0, max_workers: int = 64, progress: bool = True,
            retry_errors: bool = False, wait: bool = True, cache_max_gb: Optional[float] = None,
            executor: Union[None, str, Executor] = None, refs: Optional[dict] = None,
            expected: Optional[int] = None, reference: bool = True,
            reference_every_s: float = REFERENCE_EVERY_S) -> CollectReport:
    """Run every job on its device (Job.device names it). Returns per-device counts and failures.
    `jobs` may be lazy (an iterator, e.g. of models still exporting): then devices time while later jobs are
    made (`expected`: jobs per device, for progress until the iterator ends). Ctrl-C or SIGTERM (raised as
    Interrupted by the CLI's handler) stops every device within seconds. `executor`: see executor_of; `refs`
    are a Ray export's object refs. `cache_max_gb` bounds each device's model cache. `reference`: each device times
    the reference network's A/A pair first, every `reference_every_s` seconds (or 25 jobs) and last into
    `<out>/_reference/` (collector/reference.py); each DeviceReport's `drift()` says how far the host drifted."""
    request = CollectRequest(out=out, device=DeviceRequest(retries=retries, backoff_s=backoff_s,
                                                           job_timeout=job_timeout, wait=wait,
                                                           retry_errors=retry_errors, cache_max_gb=cache_max_gb,
                                                           reference=reference,
                                                           reference_every_s=reference_every_s),
                             max_workers=max_workers, progress=progress, expected=expected, refs=refs)
    engine = executor_of(executor)
    engine.refuse(request)
    return engine.collect(jobs, devices, request)
