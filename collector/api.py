"""The Python API behind the CLI: every `latkit` command is one of these functions."""
from __future__ import annotations

import collections
import dataclasses
import hashlib
import itertools
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Iterable, Iterator, Optional, Sequence

import pyarrow.compute as pc

from . import validate
from .devices import Device, Registry, now_utc
from .errors import Failure, LatkitError
from .exporters import DEFAULT_CACHE, export
from .job import FORMATS, RUNTIME_FOR_FORMAT, WHOLE, Artifact, Job, Settings
from .dataset import group_summary
from .measurement import TELEMETRY, Measurement, Stats, fingerprint
from .progress import progress_iter
from .runner import DeviceRunner
from .samplers import sample
from .scheduler import CollectReport, DeviceReport, collect, run_device
from .spaces import get_space
from .store import Store


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


def export_arch(space: str, arch: str, fmt: str, batch_size: int = 1, resolution: Optional[int] = None,
                cache_dir=None, **space_options) -> Artifact:
    """Build one arch and export it to `fmt` (cached by content). The weights are seeded by the arch: the
    same arch is the same file (same sha256, same key), so re-running a collection resumes instead of
    timing fresh random copies."""
    import torch
    sp = get_space(space, **space_options)
    torch.manual_seed(int(hashlib.sha256(f"{space}\n{arch}".encode()).hexdigest()[:15], 16))
    return export(sp.build(arch, resolution), (torch.randn(sp.input_shape(arch, batch_size, resolution)),), fmt,
                  space=space, arch=arch, cache_dir=cache_dir)


def _export_worker() -> None:
    """Export workers: one thread each, so N workers use N cores instead of N x all of them, and a lower
    priority, so a device timing on this host while they export (the local agent) gets the CPU first."""
    import torch
    torch.set_num_threads(1)
    os.nice(10)


def iter_space_artifacts(space: str, archs: Sequence[str], fmt: str, batch_size: int = 1,
                         resolution: Optional[int] = None, workers: int = 1, ahead: Optional[int] = None,
                         cache_dir=None, **space_options) -> Iterator[Artifact]:
    """Export archs and yield their artifacts in the order given, each as soon as it is ready, so timing
    can start while later archs are still exporting. With workers > 1 a process pool exports (spawned:
    a forked torch can hang), keeping at most `ahead` (default 4 x workers) archs beyond the consumer, so
    a slow consumer bounds the files on disk. Closing the iterator cancels what has not started."""
    sp = get_space(space, **space_options)
    archs = [sp.validate(a) for a in archs]
    for a in archs:  # a resolution the space lacks, or one that contradicts an ofa arch: refused before exporting
        sp.input_shape(a, batch_size, resolution)
    validate.whole(workers, "export workers", 1)
    if workers == 1:
        for a in archs:
            yield export_arch(space, a, fmt, batch_size, resolution, cache_dir, **space_options)
        return
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_export_worker)
    try:
        todo, queued = iter(archs), collections.deque()
        for a in itertools.islice(todo, ahead or 4 * workers):
            queued.append(pool.submit(export_arch, space, a, fmt, batch_size, resolution, cache_dir, **space_options))
        while queued:
            art = queued.popleft().result()
            nxt = next(todo, None)
            if nxt is not None:
                queued.append(pool.submit(export_arch, space, nxt, fmt, batch_size, resolution, cache_dir,
                                          **space_options))
            yield art
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def space_artifacts(space: str, archs: Sequence[str], runtime: str = "onnxruntime", batch_size: int = 1,
                    resolution: Optional[int] = None, progress: bool = False, workers: int = 1,
                    **space_options) -> list:
    """Build and export each arch (cached by content) in the format `runtime` times, on `workers` processes."""
    fmt = EXPORT_FORMAT[runtime]
    arts = iter_space_artifacts(space, archs, fmt, batch_size, resolution, workers, **space_options)
    return list(progress_iter(arts, f"exporting {len(archs)} {space} archs to {fmt}", progress, total=len(archs)))


def collect_space(space: str, n: int, devices: Sequence[str], runtime: str = "onnxruntime",
                  sampler: str = "uniform", seed: int = 0, settings: Optional[Settings] = None, out="latkit-data",
                  batch_size: int = 1, resolution: Optional[int] = None, registry: Optional[Registry] = None,
                  progress: bool = True, export_workers: int = 1, **kwargs) -> CollectReport:
    """`latkit collect --space`: sample n archs, export them (cached, on `export_workers` processes), time
    them on every device. With a `resolution`, every arch is exported at it; on ofa, whose archs carry their
    resolution, the archs are sampled with r = resolution, so the stored arch always names its input."""
    reg = registry or Registry()
    devs = [reg.get(d) for d in devices]
    sp = get_space(space)
    if resolution is not None:
        sp = sp.at_resolution(resolution)
    validate.whole(n, "n", 1)
    validate.whole(batch_size, "batch_size", *WHOLE["batch_size"])
    if runtime not in EXPORT_FORMAT:
        raise LatkitError(f"unknown runtime {runtime!r}; choose one of {', '.join(EXPORT_FORMAT)}")
    Store(out).check_writable()  # before sampling and exporting, as before any device time
    validate.writable_dir(DEFAULT_CACHE, "set LATKIT_CACHE to a writable folder for the exported models")
    archs = sample(sp, n, sampler, seed)
    refs = None
    if kwargs.get("executor") is not None:  # exports as Ray tasks across the cluster
        from .ray_executor import export_remote
        pairs = export_remote(space, archs, EXPORT_FORMAT[runtime], batch_size, resolution, kwargs["executor"])
        arts, refs = [a for a, _ in pairs], {a.sha256: r for a, r in pairs}
    else:
        arts = space_artifacts(space, archs, runtime, batch_size, resolution, progress=progress,
                               workers=export_workers)
    jobs = [dataclasses.replace(j, sampler=f"{sampler}(seed={seed})")
            for j in make_jobs(arts, [d.name for d in devs], runtime, settings)]
    return collect(jobs, devs, out=out, progress=progress, refs=refs, **kwargs)


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
                 registry: Optional[Registry] = None, wait: bool = True, sampler: str = "") -> list:
    """Time several artifacts on one device with one agent (in shuffled rounds); each row is appended as
    soon as its job is done. `sampler`: how the archs were chosen, kept in each new row."""
    dev = (registry or Registry()).get(device)
    store = Store(out)
    store.check_writable()
    jobs = [dataclasses.replace(j, sampler=sampler) for j in make_jobs(artifacts, [dev.name], runtime, settings)]
    done = set() if force else store.done_keys()
    todo = list({j.key: j for j in jobs if j.key not in done}.values())
    fresh = {}
    report = DeviceReport(dev.name, total=len(todo))
    run_device(dev, todo, store, report, on_row=lambda _, m: fresh.__setitem__(m.job.key, m), wait=wait,
               retry_errors=force)
    if report.status == "failed":
        raise (Failure if report.exit_code == 1 else LatkitError)(report.message)
    return [fresh[j.key] if j.key in fresh else stored_measurement(store, j) for j in jobs]


def stored_measurement(store: Store, job: Job) -> Measurement:
    """The newest row of `job` in the store, as a Measurement."""
    t = store.read(filter=pc.field("key") == job.key)
    row = t.sort_by([("measured_at", "descending")]).slice(0, 1).to_pylist()[0]
    if row["status"] != "ok":
        m = Measurement.failed(job, row["error_kind"], row["error"], row["device_fingerprint"])
        return dataclasses.replace(m, measured_at=row["measured_at"])
    samples = tuple(row["samples_ms"])
    stats = (Stats(**{f.name: row[f.name] for f in dataclasses.fields(Stats)}) if row["median_ms"] is not None
             else Stats.of(samples))
    applied = {"threads": row["threads_applied"], "dtype": row["dtype"], "cuda_graphs": row["cuda_graphs"],
               "graph_fallback": row["graph_fallback"], "cudnn_benchmark": row["cudnn_benchmark"], "tf32": row["tf32"],
               "cores": [int(c) for c in row["cores_applied"].split(",") if c] if row["cores_applied"] else None}
    return Measurement(
        job=job, status="ok", samples_ms=samples, stats=stats, warmup=row["warmup"], load_ms=row["load_ms"],
        first_ms=row["first_ms"], runtime_version=row["runtime_version"], agent_version=row["agent_version"],
        inputs=tuple({"shape": [int(d) for d in s.split("x")]} for s in row["input_shape"].split(";") if s),
        telemetry_before={k: row[f"telemetry_before_{k}"] for k in TELEMETRY},
        telemetry_after={k: row[f"telemetry_after_{k}"] for k in TELEMETRY},
        applied={k: v for k, v in applied.items() if v is not None}, stopped_by=row["stopped_by"] or "",
        ci_rel=row["ci_rel"], cooldown_s=row["cooldown_s"], throttle=row["throttle"], peak_rss_mb=row["peak_rss_mb"],
        gpu_peak_mb=row["gpu_peak_mb"], launch_ms=row["launch_ms"], round_ms=tuple(row["round_ms"] or ()),
        round_started_at=tuple(row["round_started_at"] or ()), round_finished_at=tuple(row["round_finished_at"] or ()),
        device_fingerprint=row["device_fingerprint"], measured_at=row["measured_at"])


def data_summary(path="latkit-data") -> list:
    """One dict per (device, runtime, space): rows, ok, rows that missed the CI target, min / median / max of
    latency_ms and the newest measurement (the dataset card states the same figures)."""
    store = Store(path)
    if not store.exists():
        raise LatkitError(f"no dataset at {path}; measure something first (latkit measure MODEL --out {path})")
    return group_summary(store.read(columns=["device", "runtime", "space", "status", "latency_ms", "measured_at",
                                             "stopped_by"]))
