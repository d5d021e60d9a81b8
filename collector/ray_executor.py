"""`latkit collect --executor ray[=ADDRESS]`: one study over a Ray cluster.

Exports run as Ray tasks wherever the cluster has CPUs. Each device is driven by one Ray actor running the
same per-device loop as the in-process executor (`device_loop.run_device`: lease, shuffled rounds, retries,
resume by key). A node that can reach a device says so with the custom resource `latkit-device:<name>`
(`ray start --resources '{"latkit-device:pi4": 1}'`): the device's actor is placed there, anywhere when no
node claims the device. Model files travel through Ray's object store and are written into the driving node's
cache (checked by sha256). Rows go to one store, which every node must reach: a path on a shared (or the
same) file system, or a pyarrow filesystem URI.

A node that dies takes its actors and their agents with it (the agent exits with its parent); Ray restarts
the actor on another node that claims the device, and the loop there re-reads the store's keys after taking
the device lease: a row already stored is neither measured again nor stored twice.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Optional, Sequence

from .device_loop import DeviceRequest, run_device
from .cache import DEFAULT_CACHE
from .devices import Device
from .errors import Interrupted, LatkitError, need
from .executor import CollectRequest, Exported, Executor
from .job import Artifact, sha256_file
from .pipeline import ExportRequest, export_arch
from .reports import CollectReport, DeviceReport, DeviceStatus
from .store import Store

RESOURCE = "latkit-device:{}"


def parse_executor(value: str) -> Optional[str]:
    """`local` -> None (in-process); `ray` -> "" (a Ray cluster started here); `ray=ADDRESS` -> ADDRESS."""
    if value == "local":
        return None
    if value == "ray":
        return ""
    if value.startswith("ray=") and value[4:].strip():
        return value[4:].strip()
    raise LatkitError(f"--executor {value!r}: use local, ray (a Ray cluster on this machine) or ray=ADDRESS "
                      "(auto, or the head's host:port)")


def _ray(address: str):
    ray = need("ray", "ray", "--executor ray")
    if not ray.is_initialized():
        try:
            here = {} if address else {"include_dashboard": False}  # only a cluster started here takes it
            ray.init(address=address or None, log_to_driver=False, configure_logging=False, **here)
        except ConnectionError as e:
            raise LatkitError(f"cannot reach the Ray cluster at {address}: {e}; start it with `ray start --head` "
                              "or give --executor ray=HEAD:PORT") from None
    return ray


def _materialize(artifact: Artifact, ref, ray) -> Artifact:
    """The artifact as a file on this node: its bytes from the object store, written once into the cache."""
    if artifact.path.is_file() and sha256_file(artifact.path) == artifact.sha256:
        return artifact
    folder = Path(os.environ.get("LATKIT_CACHE", DEFAULT_CACHE)) / "ray"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / artifact.name
    if not (path.is_file() and sha256_file(path) == artifact.sha256):
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_bytes(ray.get(ref))
        if sha256_file(tmp) != artifact.sha256:
            tmp.unlink()
            raise LatkitError(f"model {artifact.arch} arrived corrupted on this node (sha256 differs)")
        os.replace(tmp, path)
    return dataclasses.replace(artifact, path=path)


class DeviceDriver:
    """The Ray actor that drives one device: the in-process loop, on the node that can reach the device."""

    def run(self, device: Device, jobs: list, out: str, request: DeviceRequest) -> tuple:
        import ray
        mine = [dataclasses.replace(job, artifact=_materialize(job.artifact, ref, ray)) for job, ref in jobs]
        report = DeviceReport(device.name, total=len(mine))
        run_device(device, mine, Store(out), report, request)
        return report, ray.get_runtime_context().get_node_id()


def _export(space, arch: str, fmt: str, batch_size: int, resolution: Optional[int], weight_seed: int) -> tuple:
    """A Ray task: export one arch on whichever node runs it (its own export cache); the file's bytes go to
    the object store."""
    import torch
    torch.set_num_threads(1)
    art = export_arch(space, arch, fmt, batch_size=batch_size, resolution=resolution, weight_seed=weight_seed)
    return art, art.path.read_bytes()


def export_remote(space, archs: Sequence[str], fmt: str, batch_size: int = 1, resolution: Optional[int] = None,
                  address: str = "", weight_seed: int = 0) -> list:
    """(Artifact, object ref of its bytes) for every arch of `space` (a Space), exported as Ray tasks across
    the cluster."""
    ray = _ray(address)
    task = ray.remote(num_cpus=1, num_returns=2, max_retries=2)(_export)
    pairs = [task.remote(space, a, fmt, batch_size, resolution, weight_seed) for a in archs]
    arts = ray.get([p[0] for p in pairs])
    return list(zip(arts, [p[1] for p in pairs]))


class RayExecutor(Executor):
    """Ray tasks export, Ray actors drive the devices (one per device, placed where the device is reachable).
    `address`: "" starts a cluster here, else the head's host:port or auto."""

    name = "ray"
    exports_here = False

    def __init__(self, address: str = ""):
        self.address = address

    def refuse(self, request: CollectRequest) -> None:
        if request.device.cache_max_gb is not None:
            raise LatkitError("--cache-max-gb does not apply to --executor ray yet (each node keeps its own cache); "
                              "leave it out")

    def export(self, request: ExportRequest, devices: Sequence[Device], settings, progress: bool) -> Exported:
        r = request
        pairs = export_remote(r.space, r.archs, r.fmt, r.batch_size, r.resolution, self.address,
                              weight_seed=r.weight_seed)
        return Exported([a for a, _ in pairs], refs={a.sha256: ref for a, ref in pairs})

    def collect(self, jobs, devices: Sequence[Device], request: CollectRequest) -> CollectReport:
        """`refs` (request.refs) maps a model sha256 to the object ref of its bytes (from export); other files
        are put in the object store from here."""
        ray = _ray(self.address)
        store = Store(request.out)
        store.check_writable()
        done, kept = store.skip_keys(include_errors=not request.device.retry_errors)
        refs = dict(request.refs or {})
        claimed = set(ray.cluster_resources())
        actor = ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)(DeviceDriver)
        jobs = list(jobs)
        reports, running = {}, {}
        for dev in devices:
            mine = list({j.key: j for j in jobs if j.device == dev.name}.values())
            todo = [j for j in mine if j.key not in done]
            reports[dev.name] = DeviceReport(dev.name, total=len(mine), skipped=len(mine) - len(todo),
                                             skipped_errors=sum(j.key in kept for j in mine))
            if not todo:
                reports[dev.name].status = DeviceStatus.DONE
                continue
            for j in todo:
                if j.artifact.sha256 not in refs:
                    refs[j.artifact.sha256] = ray.put(j.artifact.path.read_bytes())
            resource = RESOURCE.format(dev.name)
            place = {"resources": {resource: 0.001}} if resource in claimed else {}
            driver = actor.options(name=f"latkit-{dev.name}-{os.getpid()}", **place).remote()
            running[driver.run.remote(dev, [(j, refs[j.artifact.sha256]) for j in todo], str(request.out),
                                      request.device)] = (dev.name, driver)
        return _gather(ray, running, reports)


def _gather(ray, running: dict, reports: dict) -> CollectReport:
    """Wait for every device's actor; its report, plus what was skipped here before it started."""
    try:
        pending = list(running)
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            name, _ = running[ready[0]]
            got, node = ray.get(ready[0])
            reports[name] = dataclasses.replace(got, total=reports[name].total,
                                                skipped=reports[name].skipped + got.skipped,
                                                skipped_errors=reports[name].skipped_errors + got.skipped_errors,
                                                node=node)
    except (KeyboardInterrupt, Interrupted) as e:
        for _, driver in running.values():
            ray.kill(driver, no_restart=True)  # its agent exits with it; the device lease goes too
        sig = e if isinstance(e, Interrupted) else Interrupted("SIGINT", 130)
        raise Interrupted(sig.signame, sig.exit_code, f"interrupted by {sig.signame}; rows measured so far are "
                          "kept; run the same command again to resume") from None
    finally:
        for _, driver in running.values():
            ray.kill(driver, no_restart=True)
    return CollectReport(list(reports.values()))
