"""Run jobs on one device through its transport: the step from Job to Measurement."""
from __future__ import annotations

from typing import Optional

from .devices import Device
from .errors import AgentCallError, LatkitError
from .job import Job
from .measurement import MODEL_ERRORS, Measurement, fingerprint


class DeviceRunner:
    """One agent on one device, measuring jobs one at a time (timings must not contend)."""

    def __init__(self, device: Device, timeout: float = 600.0, trust_host_key: bool = False):
        self.device = device
        self.timeout = timeout
        self.transport = device.connect(trust_host_key=trust_host_key)
        self.probe: Optional[dict] = None

    def start(self) -> dict:
        self.transport.start()
        self.probe = self.transport.call("probe", timeout=120)
        return self.probe

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.probe) if self.probe else ""

    def measure(self, job: Job) -> Measurement:
        """A Measurement, ok or a stored model error; set-up problems (runtime missing...) raise LatkitError."""
        model = self.transport.put(job.artifact)
        try:
            result = self.transport.call("measure", timeout=self.timeout, model=model, runtime=job.settings.runtime,
                                         settings=job.settings.agent_settings(), inputs=list(job.artifact.inputs))
        except AgentCallError as e:
            if e.kind in MODEL_ERRORS:
                return Measurement.failed(job, e.kind, e.message, self.fingerprint)
            raise LatkitError(f"{self.device.name}: {e.message}") from None
        return Measurement.from_result(job, result, self.fingerprint)

    def close(self) -> None:
        self.transport.close()

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.close()
