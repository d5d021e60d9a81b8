"""The export pipeline: a search space's archs to cached model files (Artifacts), in worker processes beside
the devices' timing, and the plan of how many workers, on which cores, and whether devices time meanwhile."""
from __future__ import annotations

import collections
import dataclasses
import hashlib
import itertools
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Iterator, Optional, Sequence

from . import validate
from .cache import DEFAULT_CACHE
from .devices import Device
from .exporters import ExportSpec, cached, check_format, export_cached, exporter_versions, input_specs
from .formats import EXPORT_FORMAT
from .job import Artifact, Settings
from .progress import progress_iter
from .spaces import as_space
from .transports import kind_of


@dataclasses.dataclass(frozen=True)
class ExportRequest:
    """The archs of one space to export and how: format, batch, resolution, weight seed, cache folder
    (None: the default cache), and `workers` (None: export_plan's)."""

    space: object  # a Space
    archs: tuple
    fmt: str
    batch_size: int = 1
    resolution: Optional[int] = None
    weight_seed: int = 0
    cache: Optional[Path] = None
    workers: Optional[int] = None

    def spec(self, arch: str) -> ExportSpec:
        return arch_spec(self.space, arch, self.fmt, self.batch_size, self.resolution, self.weight_seed)

    def args(self, arch: str) -> tuple:
        """export_arch's arguments for `arch` (positional: they cross to worker processes)."""
        return (self.space, arch, self.fmt, self.batch_size, self.resolution, self.cache, self.weight_seed)


def arch_spec(space, arch: str, fmt: str, batch_size: int = 1, resolution: Optional[int] = None,
              weight_seed: int = 0) -> ExportSpec:
    """What determines the file `arch` exports to: found in the cache by its key, no network built."""
    sp = as_space(space)
    shape = sp.input_shape(arch, batch_size, resolution)
    return ExportSpec(sp.name, arch, shape[0], shape[-1], fmt, weight_seed, exporter_versions(fmt),
                      tuple(sp.options().items()))


def export_arch(space, arch: str, fmt: str, batch_size: int = 1, resolution: Optional[int] = None,
                cache_dir=None, weight_seed: int = 0) -> Artifact:
    """Build one arch of `space` (a Space or its name) and export it to `fmt`, unless the cache holds it.
    The weights are seeded by (space, arch, weight_seed): the same arch is the same file (same sha256, same
    job key), so re-running a collection resumes instead of timing fresh random copies."""
    check_format(fmt)
    sp = as_space(space)
    spec = arch_spec(sp, arch, fmt, batch_size, resolution, weight_seed)
    shape = (spec.batch_size, 3, spec.resolution, spec.resolution)

    def make():
        import torch
        salt = f"\n{weight_seed}" if weight_seed else ""  # seed 0 keeps the weights (and sha256s) of before
        torch.manual_seed(int(hashlib.sha256(f"{sp.name}\n{arch}{salt}".encode()).hexdigest()[:15], 16))
        return sp.build(arch, resolution), (torch.randn(shape),)

    return export_cached(Path(cache_dir or DEFAULT_CACHE), spec.key, fmt, make, sp.name, arch,
                         input_specs([shape], ["float32"]), dataclasses.asdict(spec))


def _export_worker(cores: Optional[tuple] = None, host_pid: Optional[int] = None) -> None:
    """Export workers: one thread each, so N workers use N cores instead of N x all of them, a lower
    priority, so a device timing on this host while they export (the local agent) gets the CPU first, and,
    given `cores`, only those (kept apart from a pinned local device). They die with the host process
    (Linux PR_SET_PDEATHSIG), which an idle pool worker would otherwise outlive, blocked on its queue."""
    import torch
    torch.set_num_threads(1)
    os.nice(10)
    if cores:
        os.sched_setaffinity(0, cores)
    try:
        import ctypes
        import signal
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: shut down with the pool, as before
        return
    if host_pid is not None and os.getppid() != host_pid:  # the host died before the prctl
        os._exit(1)


def iter_space_artifacts(space, archs: Sequence[str], fmt: str, batch_size: int = 1,
                         resolution: Optional[int] = None, workers: int = 1, ahead: Optional[int] = None,
                         cache_dir=None, weight_seed: int = 0, cores: Optional[tuple] = None,
                         pool: bool = False) -> Iterator[Artifact]:
    """Export archs and yield their artifacts in the order given, each as soon as it is ready, so timing
    can start while later archs are still exporting. The archs are checked here, before anything is
    exported; cached archs are found without a network or a worker; with workers > 1, or `pool` (exports
    beside timing: in worker processes at nice 10 even with one worker), a process pool (spawned: a forked
    torch can hang, and started only at the first miss) exports the rest, keeping at most `ahead` (default
    4 x workers) archs beyond the consumer, so a slow consumer bounds the files on disk. Closing the
    iterator cancels what has not started."""
    sp = as_space(space)
    archs = [sp.validate(a) for a in archs]
    for a in archs:  # a resolution the space lacks, or one that contradicts an ofa arch: refused before exporting
        sp.input_shape(a, batch_size, resolution)
    validate.whole(workers, "export workers", 1)
    check_format(fmt)
    req = ExportRequest(sp, tuple(archs), fmt, batch_size, resolution, weight_seed, Path(cache_dir or DEFAULT_CACHE))
    if not (pool or workers > 1 or cores is not None):
        return (export_arch(*req.args(a)) for a in req.archs)
    return _pooled(req, workers, ahead or 4 * workers, cores)


def _pooled(req: "ExportRequest", workers: int, ahead: int, cores: Optional[tuple]) -> Iterator[Artifact]:
    pool = None
    try:
        todo, queued = iter(req.archs), collections.deque()

        def push(a) -> None:
            nonlocal pool
            if cached(req.cache, req.spec(a).key, req.fmt):
                queued.append(a)  # exported already: export_arch finds it at once
                return
            if pool is None:
                pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                           initializer=_export_worker, initargs=(cores, os.getpid()))
            queued.append(pool.submit(export_arch, *req.args(a)))

        for a in itertools.islice(todo, ahead):
            push(a)
        while queued:
            head = queued.popleft()
            art = export_arch(*req.args(head)) if isinstance(head, str) else head.result()
            nxt = next(todo, None)
            if nxt is not None:
                push(nxt)
            yield art
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


def space_artifacts(space, archs: Sequence[str], runtime: str = "onnxruntime", batch_size: int = 1,
                    resolution: Optional[int] = None, progress: bool = False, workers: int = 1,
                    weight_seed: int = 0) -> list:
    """Build and export each arch (cached) in the format `runtime` times, on `workers` processes."""
    sp, fmt = as_space(space), EXPORT_FORMAT[runtime]
    arts = iter_space_artifacts(sp, archs, fmt, batch_size, resolution, workers, weight_seed=weight_seed)
    return list(progress_iter(arts, f"exporting {len(archs)} {sp.name} archs to {fmt}", progress, total=len(archs)))


@dataclasses.dataclass(frozen=True)
class ExportPlan:
    """How many export workers, on which cores, whether devices time while they export, and why (logged)."""

    workers: int
    cores: Optional[tuple]  # None: any core (at nice 10)
    why: str
    stream: bool = True  # devices time while later archs export; False: every export first


def export_plan(devices: Sequence[Device], settings: Optional[Settings], cores: Optional[set] = None) -> ExportPlan:
    """Default export workers: the host's cores - 1, none on a core a `local` device is pinned to (--cores).
    Exports stream into the devices' queues unless a `local` device would share cores with them: a local
    device that is not pinned (or pinned to every core) times only once every export is done, so no
    export disturbs its timing."""
    cores = set(os.sched_getaffinity(0) if cores is None else cores)
    pinned = set(settings.cores or ()) if settings else set()
    local = any(kind_of(d).shares_host for d in devices)
    n = max(1, len(cores) - 1)
    if local and pinned:
        free = sorted(cores - pinned)
        if free:
            n = max(1, min(len(free), len(cores) - 1))
            return ExportPlan(n, tuple(free), f"{n} export worker(s) on cores {free}, apart from the local device's "
                                              f"{sorted(pinned)}, while the devices time")
        return ExportPlan(n, None, f"{n} export worker(s), all before timing: the local device is pinned to every "
                                   f"core ({sorted(pinned)})", stream=False)
    if local:
        return ExportPlan(n, None, f"{n} export worker(s) ({len(cores)} cores - 1), all before timing: the local "
                                   "device is not pinned (--cores), so exports would share its cores", stream=False)
    return ExportPlan(n, None, f"{n} export worker(s) ({len(cores)} cores - 1) at nice 10, while the devices time")
