"""The Python API behind the CLI: every `latkit` command is one of these functions."""
from __future__ import annotations

import collections
import dataclasses
import hashlib
import itertools
import logging
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Iterable, Iterator, Optional, Sequence

import pyarrow.compute as pc

from . import validate
from .devices import Device, Registry, now_utc
from .errors import Failure, LatkitError, need
from .exporters import (DEFAULT_CACHE, ExportSpec, cached, check_format, export_cached, exporter_versions,
                        input_specs)
from .job import FORMATS, RUNTIME_FOR_FORMAT, WHOLE, Artifact, Job, Settings
from .cache import max_bytes, prune_host
from .dataset import group_summary
from .measurement import TELEMETRY, Measurement, Stats, fingerprint
from .progress import progress_iter
from .runner import DeviceRunner
from .samplers import sample
from .scheduler import CollectReport, DeviceReport, collect, run_device
from .spaces import as_space
from .store import Store

log = logging.getLogger("latkit")


def probe(device: str = "local", registry: Optional[Registry] = None) -> dict:
    """What the device reports about itself: OS, CPU, memory, GPUs, Python and runtimes (no lease needed); for
    an ssh device also the `route` its entry resolved to (jump hosts first)."""
    dev = (registry or Registry()).get(device)
    runner = DeviceRunner(dev)
    try:
        found = runner.start()
    finally:
        runner.close()
    return dict(found, route=[str(h) for h in ssh_route(dev)]) if dev.transport == "ssh" else found


def ssh_route(device: Device) -> list:
    """The hops to an ssh device as its registry entry and the ssh config resolve (no network): jump hosts
    first (sshconfig.Hop), the device last."""
    from .transports import sshconfig  # paramiko only where a device is reached over ssh
    return sshconfig.resolve(device)


def _probe_summary(p: dict) -> dict:
    """The part of a probe kept in the registry (TOML has no null)."""
    keep = {k: p.get(k) for k in ("machine", "cpu_model", "cpu_count", "cpu_affinity", "memory_mb", "os_release",
                                  "kernel", "python")}
    keep["runtimes"] = {k: v["version"] for k, v in p.get("runtimes", {}).items()}
    keep["gpus"] = [g["name"] for g in p.get("gpus", [])]
    return {k: v for k, v in keep.items() if v is not None}


def _with_probe(dev: Device, p: dict) -> Device:
    """The registry entry refreshed from a probe: fingerprint, time, and the summary kept in TOML."""
    return dataclasses.replace(dev, fingerprint=fingerprint(p), last_probe=now_utc(), probe=_probe_summary(p))


def add_device(name: str, host: str, port: Optional[int] = None, user: Optional[str] = None,
               key: Optional[str] = None, python: Optional[str] = None, workdir: Optional[str] = None,
               tags: Sequence[str] = (), trust_host_key: bool = False, registry: Optional[Registry] = None,
               lease: Optional[str] = None, ssh_config: Optional[str] = None) -> Device:
    """Connect (verifying every hop's host key), deploy the agent, probe, and record the device with its
    fingerprint. `host` may be an alias of the ssh config (~/.ssh/config, or `ssh_config`); port, user and key
    given here win over it and are all that is stored, so a later edit of the config applies."""
    reg = registry or Registry()
    if name in {d.name for d in reg.devices()}:
        raise LatkitError(f"device {name!r} is already registered; remove it first or choose another name")
    dev = Device(name=name, transport="ssh", host=host, port=port, user=user, key=key, ssh_config=ssh_config,
                 python=python, workdir=workdir, lease=lease, tags=tuple(tags), known_hosts=str(reg.known_hosts))
    runner = DeviceRunner(dev, trust_host_key=trust_host_key)
    try:
        dev = _with_probe(dev, runner.start())
    finally:
        runner.close()
    reg.save(dev)
    return dev


def reprobe_device(name: str, registry: Optional[Registry] = None) -> dict:
    """Probe a registered device and refresh its fingerprint in the registry."""
    reg = registry or Registry()
    dev = reg.get(name)
    p = probe(name, reg)
    if dev.transport == "ssh":
        reg.save(_with_probe(dev, p))
    return p


def reachable(device: Device) -> bool:
    """Whether an agent starts on the device now (connect, deploy if needed, ping)."""
    transport = device.connect()
    try:
        transport.start()
        return True
    except LatkitError:
        return False
    finally:
        transport.close()


def model_files(paths: Iterable) -> list:
    """Model files from files and directories (searched recursively for known extensions)."""
    found = []
    for p in map(Path, paths):
        if p.is_dir():
            found += sorted(f for f in p.rglob("*") if f.suffix.lower() in FORMATS and f.is_file())
        elif p.exists():
            found.append(p)
        else:
            raise LatkitError(f"model path {p} not found; give model files or folders holding them")
    if not found:
        raise LatkitError(f"no model files ({', '.join(sorted(FORMATS))}) in {', '.join(map(str, paths))}")
    return found


def make_jobs(artifacts: Sequence[Artifact], devices: Sequence[str], runtime: Optional[str] = None,
              settings: Optional[Settings] = None) -> list:
    """Every artifact on every device; the runtime defaults to the one the file format calls for. A runtime
    that cannot read some of the files is refused here, before anything is shipped."""
    base = settings or Settings()
    wrong = [a for a in artifacts if runtime and RUNTIME_FOR_FORMAT[a.format] != runtime]
    if wrong:
        names = ", ".join(f"{a.path.name} ({a.format}, for {RUNTIME_FOR_FORMAT[a.format]})" for a in wrong[:3])
        raise LatkitError(f"runtime {runtime} cannot run {'' if len(wrong) == 1 else f'{len(wrong)} models: '}{names}"
                          f"{', ...' if len(wrong) > 3 else ''}; leave --runtime out to time each file with the "
                          "runtime its extension calls for")
    return [Job(a, d, dataclasses.replace(base, runtime=runtime or RUNTIME_FOR_FORMAT[a.format]))
            for d in devices for a in artifacts]


def collect_models(models: Sequence, devices: Sequence[str], runtime: Optional[str] = None,
                   settings: Optional[Settings] = None, out="latkit-data", registry: Optional[Registry] = None,
                   **kwargs) -> CollectReport:
    """`latkit collect --models`: every model file on every device, resumable."""
    reg = registry or Registry()
    devs = [reg.get(d) for d in devices]
    arts = [m if isinstance(m, Artifact) else Artifact.from_file(m) for m in models]
    return collect(make_jobs(arts, [d.name for d in devs], runtime, settings), devs, out=out, **kwargs)


EXPORT_FORMAT = {"onnxruntime": "onnx", "tflite": "tflite", "torch": "pt2"}


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
    cache = Path(cache_dir or DEFAULT_CACHE)
    return _exports(sp, archs, fmt, batch_size, resolution, workers, ahead or 4 * workers, cache, weight_seed, cores,
                    pool or workers > 1 or cores is not None)


def _exports(sp, archs, fmt, batch_size, resolution, workers, ahead, cache, weight_seed, cores,
             pooled) -> Iterator[Artifact]:
    args = lambda a: (sp, a, fmt, batch_size, resolution, cache, weight_seed)  # noqa: E731
    if not pooled:
        for a in archs:
            yield export_arch(*args(a))
        return
    pool = None
    try:
        todo, queued = iter(archs), collections.deque()

        def push(a) -> None:
            nonlocal pool
            hit = cached(cache, arch_spec(sp, a, fmt, batch_size, resolution, weight_seed).key, fmt)
            if hit:
                queued.append(a)  # exported already: export_arch finds it at once
                return
            if pool is None:
                pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                           initializer=_export_worker, initargs=(cores, os.getpid()))
            queued.append(pool.submit(export_arch, *args(a)))

        for a in itertools.islice(todo, ahead):
            push(a)
        while queued:
            head = queued.popleft()
            art = export_arch(*args(head)) if isinstance(head, str) else head.result()
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
    local = any(d.transport == "local" for d in devices)
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


def collect_space(space, n: int, devices: Sequence[str], runtime: str = "onnxruntime",
                  sampler: str = "uniform", seed: int = 0, settings: Optional[Settings] = None, out="latkit-data",
                  batch_size: int = 1, resolution: Optional[int] = None, registry: Optional[Registry] = None,
                  progress: bool = True, export_workers: Optional[int] = None, weight_seed: int = 0,
                  cache_max_gb: Optional[float] = None, cache_dir=None, **kwargs) -> CollectReport:
    """`latkit collect --space`: sample n archs of `space` (a Space or its name), export them (cached, on
    `export_workers` processes, default export_plan's) and time each on every device as soon as it is
    exported, so devices do not wait for the whole export (scheduler.Stream). With a `resolution`,
    every arch is exported at it; on ofa, whose archs carry their resolution, the archs are sampled with
    r = resolution, so the stored arch always names its input. `cache_max_gb` bounds the host's export
    cache and each device's model cache (least recently used first; models measured on every device first)."""
    if kwargs.get("executor") is None:  # exports here need torch: say so before anything else is said or made
        need("torch", "export", "latkit collect --space")
    reg = registry or Registry()
    devs = [reg.get(d) for d in devices]
    sp = as_space(space)
    if resolution is not None:
        sp = sp.at_resolution(resolution)
    validate.whole(n, "n", 1)
    validate.whole(batch_size, "batch_size", *WHOLE["batch_size"])
    validate.whole(weight_seed, "weight_seed", 0)
    max_bytes(cache_max_gb)
    if runtime not in EXPORT_FORMAT:
        raise LatkitError(f"unknown runtime {runtime!r}; choose one of {', '.join(EXPORT_FORMAT)}")
    store = Store(out)
    store.check_writable()  # before sampling and exporting, as before any device time
    cache = Path(cache_dir or DEFAULT_CACHE)
    validate.writable_dir(cache, "set LATKIT_CACHE to a writable folder for the exported models")
    archs = sample(sp, n, sampler, seed)
    refs, streamed = None, False
    if kwargs.get("executor") is not None:  # exports as Ray tasks across the cluster
        if cache_max_gb is not None:
            raise LatkitError("--cache-max-gb does not apply to --executor ray yet (each node keeps its own cache); "
                              "leave it out")
        from .ray_executor import export_remote
        pairs = export_remote(sp, archs, EXPORT_FORMAT[runtime], batch_size, resolution, kwargs["executor"],
                              weight_seed=weight_seed)
        arts, refs = [a for a, _ in pairs], {a.sha256: r for a, r in pairs}
    else:
        plan = export_plan(devs, settings)  # said once the inputs are known good, so a refusal stays one line
        if export_workers is not None:
            plan = dataclasses.replace(plan, workers=export_workers, why=f"{export_workers} export worker(s) (given)"
                                       + ("" if plan.stream else ", all before timing: a local device shares their cores"))
        log.info("%s", plan.why)
        arts = iter_space_artifacts(sp, archs, EXPORT_FORMAT[runtime], batch_size, resolution, plan.workers,
                                    cache_dir=cache, weight_seed=weight_seed, cores=plan.cores, pool=plan.stream)
        streamed = plan.stream
        if not streamed:
            arts = list(progress_iter(arts, f"exporting {len(archs)} {sp.name} archs to {EXPORT_FORMAT[runtime]}",
                                      progress, total=len(archs)))
    names, label = [d.name for d in devs], f"{sampler}(seed={seed})"
    made: list = []  # the jobs so far, for the cache bound at the end

    def jobs() -> Iterator[Job]:
        """Each arch's jobs on every device as soon as its export is ready: devices time while later archs
        export (scheduler.Stream)."""
        exported = iter(arts)
        try:
            for art in exported:
                for j in make_jobs([art], names, runtime, settings):
                    made.append(dataclasses.replace(j, sampler=label))
                    yield made[-1]
        finally:
            getattr(exported, "close", lambda: None)()  # cancels exports not started

    if cache_max_gb is not None:  # other collections' files go first; this one's cached exports stay
        mine = {cached(cache, arch_spec(sp, a, EXPORT_FORMAT[runtime], batch_size, resolution, weight_seed).key,
                       EXPORT_FORMAT[runtime]) for a in archs}
        prune_host(cache, cache_max_gb, keep={m[1] for m in mine if m})
    try:
        return collect(jobs() if streamed else list(jobs()), devs, out=out, progress=progress,
                       cache_max_gb=cache_max_gb, refs=refs, expected=len(archs), **kwargs)
    finally:
        if cache_max_gb is not None:
            done = store.done_keys()
            mine = {j.artifact.sha256 for j in made}
            everywhere = mine - {j.artifact.sha256 for j in made if j.key not in done}
            prune_host(cache, cache_max_gb, keep=mine - everywhere, first=everywhere)


def measure(model, device: str = "local", runtime: Optional[str] = None, settings: Optional[Settings] = None,
            out="latkit-data", force: bool = False, registry: Optional[Registry] = None,
            wait: bool = True) -> Measurement:
    """Time one model file on one device and append the row to the store at `out`.

    A model already measured under the same key is not timed again (unless `force`): the stored
    row is returned instead.
    """
    artifact = model if isinstance(model, Artifact) else Artifact.from_file(model)
    return measure_many([artifact], device, runtime, settings, out, force, registry, wait)[0]


def measure_many(artifacts: Sequence[Artifact], device: str = "local", runtime: Optional[str] = None,
                 settings: Optional[Settings] = None, out="latkit-data", force: bool = False,
                 registry: Optional[Registry] = None, wait: bool = True, sampler: str = "", role: str = "",
                 role_round: Optional[int] = None) -> list:
    """Time several artifacts on one device with one agent (in shuffled rounds); each row is appended as
    soon as its job is done. `sampler`: how the archs were chosen, `role` and `role_round`: what the rows are
    for (collector/schema.py), kept in each new row."""
    dev = (registry or Registry()).get(device)
    store = Store(out)
    store.check_writable()
    jobs = [dataclasses.replace(j, sampler=sampler, role=role, role_round=role_round)
            for j in make_jobs(artifacts, [dev.name], runtime, settings)]
    done = set() if force else store.done_keys()
    todo = list({j.key: j for j in jobs if j.key not in done}.values())
    fresh = {}
    report = DeviceReport(dev.name, total=len(todo))
    run_device(dev, todo, store, report, on_row=lambda _, m: fresh.__setitem__(m.job.key, m), wait=wait,
               retry_errors=force, force=force)
    if report.status == "failed":
        raise (Failure if report.exit_code == 1 else LatkitError)(report.message)
    return [fresh[j.key] if j.key in fresh else stored_measurement(store, j) for j in jobs]


def stored_measurement(store: Store, job: Job) -> Measurement:
    """The newest row of `job` in the store, as a Measurement marked `stored` (its to_row() is that row)."""
    t = store.read(filter=pc.field("key") == job.key)
    row = t.sort_by([("measured_at", "descending")]).slice(0, 1).to_pylist()[0]
    if row["status"] != "ok":
        m = Measurement.failed(job, row["error_kind"], row["error"], row["device_fingerprint"])
        return dataclasses.replace(m, measured_at=row["measured_at"], stored=True)
    samples = tuple(row["samples_ms"])
    stats = (Stats(**{f.name: row[f.name] for f in dataclasses.fields(Stats)}) if row["median_ms"] is not None
             else Stats.of(samples))
    applied = {"threads": row["threads_applied"], "dtype": row["dtype"], "cuda_graphs": row["cuda_graphs"],
               "graph_fallback": row["graph_fallback"], "cudnn_benchmark": row["cudnn_benchmark"], "tf32": row["tf32"],
               "cores": [int(c) for c in row["cores_applied"].split(",") if c] if row["cores_applied"] else None}
    reused = row["round_session_reused"] or ([row["session_reused"]] if row["session_reused"] is not None else [])
    return Measurement(
        job=job, status="ok", samples_ms=samples, stats=stats, warmup=row["warmup"], load_ms=row["load_ms"],
        first_ms=row["first_ms"], runtime_version=row["runtime_version"], agent_version=row["agent_version"],
        inputs=tuple({"shape": [int(d) for d in s.split("x")]} for s in row["input_shape"].split(";") if s),
        telemetry_before={**{k: row[f"telemetry_before_{k}"] for k in TELEMETRY},
                          **({"gpu_clocks_locked": row["gpu_clocks_locked"]} if row["gpu_clocks_locked"] is not None
                             else {})},
        telemetry_after={k: row[f"telemetry_after_{k}"] for k in TELEMETRY},
        applied={k: v for k, v in applied.items() if v is not None}, stopped_by=row["stopped_by"] or "",
        ci_rel=row["ci_rel"], cooldown_s=row["cooldown_s"], throttle=row["throttle"], peak_rss_mb=row["peak_rss_mb"],
        gpu_peak_mb=row["gpu_peak_mb"], launch_ms=row["launch_ms"], round_ms=tuple(row["round_ms"] or ()),
        round_session_reused=tuple(reused),
        round_started_at=tuple(row["round_started_at"] or ()), round_finished_at=tuple(row["round_finished_at"] or ()),
        device_fingerprint=row["device_fingerprint"], measured_at=row["measured_at"], stored=True)


def data_summary(path="latkit-data") -> list:
    """One dict per (device, runtime, space): rows, ok, rows that missed the CI target, min / median / max of
    latency_ms and the newest measurement (the dataset card states the same figures)."""
    store = Store(path)
    if not store.exists():
        raise LatkitError(f"no dataset at {path}; measure something first (latkit measure MODEL --out {path})")
    if not store.files():  # a folder of models, of other tables, or an empty one: not an empty table
        raise not_a_dataset(path)
    return group_summary(store.read(columns=["device", "runtime", "space", "status", "latency_ms", "measured_at",
                                             "stopped_by"]))


def not_a_dataset(path) -> LatkitError:
    """The error for an existing folder that holds no latkit rows (no Parquet files under `data/`)."""
    hint = f"give the folder `--out` wrote, or measure into this one (latkit measure MODEL --out {path})"
    if list(Path(path).glob("*_latency.parquet")):
        hint = f"it holds latency tables: import them with `latkit data import-help {path} OUT`"
    return LatkitError(f"{path} is not a latkit dataset (no rows under {path}/data); {hint}")
