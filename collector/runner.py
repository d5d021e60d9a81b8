"""Run jobs on one device through its transport: the step from Job to Measurement."""
from __future__ import annotations

import getpass
import logging
import os
import socket
import time
from typing import Callable, Optional

from .devices import Device
from .errors import AgentCallError, CallTimeout, DeviceBusy, Failure, ProtocolError
from .job import Job
from .measurement import STORED_ERRORS, Measurement, fingerprint
from .text import clean


def _say(message: str) -> None:
    logging.getLogger("latkit").warning(message)


class DeviceRunner:
    """One agent on one device, holding the device's lease and measuring jobs one at a time.

    The lease (an flock on the device, released by the kernel when the agent dies) makes timing exclusive
    across processes, hosts and users: a second runner waits for it (`wait`) or fails at once."""

    def __init__(self, device: Device, timeout: float = 600.0, trust_host_key: bool = False, wait: bool = True,
                 on_wait: Callable[[str], None] = _say):
        self.device = device
        self.timeout = timeout
        self.wait, self.on_wait = wait, on_wait
        self.transport = device.connect(trust_host_key=trust_host_key)
        self.probe: Optional[dict] = None
        self.leased = False

    def start(self) -> dict:
        self.transport.start()
        self.probe = self.transport.call("probe", timeout=120)
        return self.probe

    def lease(self, poll_s: float = 1.0) -> None:
        """Take the device's lease, waiting for another holder unless `wait` is off."""
        me = {"host": socket.gethostname(), "pid": os.getpid(), "user": getpass.getuser()}
        told = False
        while True:
            try:
                r = self.transport.call("lease", timeout=60, holder=me)
            except AgentCallError as e:  # the lease file cannot be opened or locked there
                raise Failure(f"{self.device.name}: {e.message}") from None
            if r["acquired"]:
                self.leased = True
                return
            h = r.get("holder") or {}
            who = clean(f"held by pid {h.get('pid', '?')} on host {h.get('host', '?')} (user {h.get('user', '?')}) "
                        f"since {h.get('since', '?')}")  # the lease file says so: anyone could have written it
            if not self.wait:
                raise DeviceBusy(f"device {self.device.name} is busy: {who}; wait for it or run without --no-wait")
            if not told:
                self.on_wait(f"waiting for device {self.device.name}: {who}")
                told = True
            time.sleep(poll_s)

    @property
    def started(self) -> bool:
        return self.probe is not None and self.leased

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.probe) if self.probe else ""

    def spare_cpus(self, job: Job) -> bool:
        """Whether the device has CPUs the job's timing does not use (more than its pinned cores, or than its
        threads), so shipping a file meanwhile (sshd's work) need not share a CPU with the timed runs."""
        cpus = len((self.probe or {}).get("cpu_affinity") or ()) or (self.probe or {}).get("cpu_count") or 1
        return cpus > (len(job.settings.cores) if job.settings.cores else job.settings.threads)

    def measure(self, job: Job, next_job: Optional[Job] = None) -> Measurement:
        """A Measurement, ok or a stored error; set-up problems (runtime missing...) raise LatkitError.
        A job that outlives `timeout` is a `timeout` row: the agent is killed and must be started again. A reply
        that breaks the protocol is a `protocol_error` row, after which the caller must stop using the device.
        `next_job`'s model is shipped while this one is timed, where the device has CPUs to spare."""
        model = self.transport.put(job.artifact)
        if next_job is not None and self.spare_cpus(job):
            self.transport.prefetch(next_job.artifact)
        try:
            result = self.transport.call("measure", timeout=self.timeout, model=model, runtime=job.settings.runtime,
                                         settings=job.settings.agent_settings(),
                                         inputs=[i.to_dict() for i in job.inputs])
        except CallTimeout:
            self.close()  # the transport has killed the agent: start a fresh one for the next job
            return Measurement.failed(job, "timeout", f"no result within {self.timeout:g} s (--job-timeout); the "
                                      "agent was killed and restarted", self.fingerprint)
        except ProtocolError as e:  # the transport has killed the agent; the caller drops the device
            self.close()
            return Measurement.failed(job, "protocol_error", f"{e}; it was dropped from this run (check the agent "
                                      "and the python it runs there)", self.fingerprint)
        except AgentCallError as e:
            if e.kind in STORED_ERRORS:
                return Measurement.failed(job, e.kind, e.message, self.fingerprint)
            raise Failure(f"{self.device.name}: {e.message}") from None
        m = Measurement.from_result(job, result, self.fingerprint)
        wrong = not_applied(job, m.applied)
        if wrong:
            return Measurement.failed(job, "settings_not_applied", f"the agent applied {wrong}", self.fingerprint)
        return m

    def kill(self) -> None:
        """Stop the agent now (Ctrl-C): whatever it is timing is abandoned and the lease released."""
        self.transport.kill()
        self.probe, self.leased = None, False

    def close(self) -> None:
        self.transport.close()
        self.probe, self.leased = None, False

    def __enter__(self):
        self.start()
        self.lease()
        return self

    def __exit__(self, *exc):
        self.close()


def not_applied(job: Job, applied: dict) -> str:
    """What the agent read back that differs from the job's settings ('' when all agree)."""
    s, wrong = job.settings, []
    if applied.get("threads") is not None and applied["threads"] != s.threads:
        wrong.append(f"threads={applied['threads']} (asked {s.threads})")
    if s.cores and applied.get("cores") is not None and tuple(applied["cores"]) != s.cores:
        wrong.append(f"cores={applied['cores']} (asked {list(s.cores)})")
    if s.accelerator == "cuda" and s.runtime == "torch":
        if applied.get("dtype") not in (None, s.dtype):
            wrong.append(f"dtype={applied['dtype']} (asked {s.dtype})")
        # a failed capture falls back to eager and says why in the row; that is not a mismatch
        if bool(applied.get("cuda_graphs")) != s.cuda_graphs and not applied.get("graph_fallback"):
            wrong.append(f"cuda_graphs={applied.get('cuda_graphs')} (asked {s.cuda_graphs})")
    return ", ".join(wrong)
