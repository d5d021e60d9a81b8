"""The Python API behind the CLI: every `latkit` command is one of these functions."""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Iterable, Iterator, Optional, Sequence

import pyarrow.compute as pc

from . import validate
from .cache import DEFAULT_CACHE, max_bytes, prune_host
from .dataset import group_summary
from .device_loop import DeviceRequest, run_device
from .devices import Device, Registry, now_utc
from .errors import Failure, LatkitError, need
from .executor import CollectRequest
from .exporters import cached
from .job import FORMATS, RUNTIME_FOR_FORMAT, WHOLE, Artifact, Job, Settings
from .measurement import Measurement, fingerprint
from .pipeline import ExportRequest
from .reference import SIDE
from .rounds import SIDE as ROUNDS
from .reports import CollectReport, DeviceReport, DeviceStatus
from .runner import DeviceRunner
from .samplers import sample
from .scheduler import collect, executor_of
from .spaces import as_space
from .store import Store, no_dataset
from .transports import kind_of
# The export pipeline moved to pipeline.py; these names stay importable from here (scripts, tests, predictor/).
from .pipeline import (EXPORT_FORMAT, ExportPlan, arch_spec, export_arch, export_plan,  # noqa: F401, E402
                       iter_space_artifacts, space_artifacts)

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
    return dict(found, route=[str(h) for h in ssh_route(dev)]) if kind_of(dev).remote else found


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
    if kind_of(dev).remote:
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
    shapeless = [a for a in artifacts if a.format == "torchscript" and not a.inputs and not base.input_shapes]
    if shapeless:  # refused here, not by the device: nothing is shipped or stored for them
        raise LatkitError(f"{shapeless[0].arch} is a TorchScript file, which declares no input shapes; give them "
                          "(--input-shape 1x3x224x224, once per input) or export it with torch.export to .pt2")
    if base.input_shapes and not any(a.format == "torchscript" and not a.inputs for a in artifacts):
        raise LatkitError(f"--input-shape applies to TorchScript (.pt) files, which declare no inputs; "
                          f"{artifacts[0].arch if len(artifacts) == 1 else 'none of these models'} "
                          f"{'declares its own' if len(artifacts) == 1 else 'is one'}")
    wrong = [a for a in artifacts if runtime and RUNTIME_FOR_FORMAT[a.format] != runtime]
    if wrong:
        names = ", ".join(f"{a.arch[:60]} ({a.format}, for {RUNTIME_FOR_FORMAT[a.format]})" for a in wrong[:3])
        raise LatkitError(f"runtime {runtime} cannot run {'' if len(wrong) == 1 else f'{len(wrong)} models: '}{names}"
                          f"{', ...' if len(wrong) > 3 else ''}; leave --runtime out to time each file with the "
                          "runtime its extension calls for")
    return [Job(a, d, dataclasses.replace(base, runtime=runtime or RUNTIME_FOR_FORMAT[a.format],
                                          input_shapes=None if a.inputs or a.format != "torchscript"
                                          else base.input_shapes))  # given shapes key only the rows they shape
            for d in devices for a in artifacts]


def collect_models(models: Sequence, devices: Sequence[str], runtime: Optional[str] = None,
                   settings: Optional[Settings] = None, out="latkit-data", registry: Optional[Registry] = None,
                   **kwargs) -> CollectReport:
    """`latkit collect --models`: every model file on every device, resumable."""
    reg = registry or Registry()
    devs = [reg.get(d) for d in devices]
    arts = [m if isinstance(m, Artifact) else Artifact.from_file(m) for m in models]
    return collect(make_jobs(arts, [d.name for d in devs], runtime, settings), devs, out=out, **kwargs)


def collect_space(space, n: int, devices: Sequence[str], runtime: str = "onnxruntime",
                  sampler: str = "uniform", seed: int = 0, settings: Optional[Settings] = None, out="latkit-data",
                  batch_size: int = 1, resolution: Optional[int] = None, registry: Optional[Registry] = None,
                  progress: bool = True, export_workers: Optional[int] = None, weight_seed: int = 0,
                  cache_max_gb: Optional[float] = None, cache_dir=None, **kwargs) -> CollectReport:
    """`latkit collect --space`: sample n archs of `space` (a Space or its name), export them (cached, on
    `export_workers` processes, default export_plan's) and time each on every device as soon as it is
    exported, so devices do not wait for the whole export (a Stream per device). With a `resolution`,
    every arch is exported at it; on ofa, whose archs carry their resolution, the archs are sampled with
    r = resolution, so the stored arch always names its input. `cache_max_gb` bounds the host's export
    cache and each device's model cache (least recently used first; models measured on every device first).
    Other keywords go to scheduler.collect (`executor` among them)."""
    engine = executor_of(kwargs.pop("executor", None))
    if engine.exports_here:  # exports here need torch: say so before anything else is said or made
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
    engine.refuse(CollectRequest(out=out, device=DeviceRequest(cache_max_gb=cache_max_gb)))
    fmt = EXPORT_FORMAT[runtime]
    request = ExportRequest(sp, tuple(sample(sp, n, sampler, seed)), fmt, batch_size, resolution, weight_seed,
                            cache, export_workers)
    exported = engine.export(request, devs, settings, progress)
    made: list = []  # the jobs so far, for the cache bound at the end
    jobs = _space_jobs(exported.artifacts, [d.name for d in devs], runtime, settings, f"{sampler}(seed={seed})",
                       made)
    if cache_max_gb is not None:  # other collections' files go first; this one's cached exports stay
        mine = {cached(cache, request.spec(a).key, fmt) for a in request.archs}
        prune_host(cache, cache_max_gb, keep={m[1] for m in mine if m})
    try:
        return collect(jobs if exported.streamed else list(jobs), devs, out=out, progress=progress,
                       cache_max_gb=cache_max_gb, executor=engine, refs=exported.refs,
                       expected=len(request.archs), **kwargs)
    finally:
        if cache_max_gb is not None:
            done = store.done_keys()
            mine = {j.artifact.sha256 for j in made}
            everywhere = mine - {j.artifact.sha256 for j in made if j.key not in done}
            prune_host(cache, cache_max_gb, keep=mine - everywhere, first=everywhere)


def _space_jobs(artifacts, names: Sequence[str], runtime: str, settings: Optional[Settings], label: str,
                made: list) -> Iterator[Job]:
    """Each arch's jobs on every device as soon as its export is ready, appended to `made` too: devices time
    while later archs export."""
    exported = iter(artifacts)
    try:
        for art in exported:
            for j in make_jobs([art], names, runtime, settings):
                made.append(dataclasses.replace(j, sampler=label))
                yield made[-1]
    finally:
        getattr(exported, "close", lambda: None)()  # cancels exports not started


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
    run_device(dev, todo, store, report, DeviceRequest(wait=wait, retry_errors=force, force=force),
               on_row=lambda _, m: fresh.__setitem__(m.job.key, m))
    if report.status == DeviceStatus.FAILED:
        raise (Failure if report.exit_code == 1 else LatkitError)(report.message)
    return [fresh[j.key] if j.key in fresh else stored_measurement(store, j) for j in jobs]


def stored_measurement(store: Store, job: Job) -> Measurement:
    """The newest row of `job` in the store, as a Measurement marked `stored` (its to_row() is that row)."""
    t = store.read(filter=pc.field("key") == job.key)
    return Measurement.from_row(job, t.sort_by([("measured_at", "descending")]).slice(0, 1).to_pylist()[0])


def data_summary(path="latkit-data") -> list:
    """One dict per (device, runtime, space): rows, ok, rows that missed the CI target, min / median / max of
    latency_ms and the newest measurement (the dataset card states the same figures)."""
    store = Store(path)
    if not store.exists():
        raise no_dataset(path, f"measure something first (latkit measure MODEL --out {path})")
    if not store.files():  # a folder of models, of other tables, or an empty one: not an empty table
        raise not_a_dataset(path)
    return group_summary(store.read(columns=["device", "runtime", "space", "status", "latency_ms", "contention",
                                             "measured_at", "stopped_by"]))


def not_a_dataset(path) -> LatkitError:
    """The error for an existing folder that holds no latkit rows (no Parquet files under `data/`)."""
    hint = f"give the folder `--out` wrote, or measure into this one (latkit measure MODEL --out {path})"
    sides = Store(path).folders("")  # on the dataset's filesystem: an s3:// collection stops too
    if list(Path(path).glob("*_latency.parquet")):
        hint = f"it holds latency tables: import them with `latkit data import-help {path} OUT`"
    elif ROUNDS in sides:  # a collect stopped before any model's last round
        hint = "a collection into it stopped before any model's last round; run it again to resume (the rounds it " \
               "timed are kept)"
    elif SIDE in sides:  # a collect stopped after its first reference timing, before any model
        hint = "a collection into it timed only the reference network before it stopped; run it again to resume"
    return LatkitError(f"{path} is not a latkit dataset (no rows under {path}/data); {hint}")
