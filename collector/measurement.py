"""Measurement: raw samples from the agent plus the statistics derived from them (the MeasureResult)."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Optional

import numpy as np

from .job import Job

TELEMETRY = ("freq_mhz", "temp_c", "load1", "gpu_sm_mhz", "gpu_mem_mhz", "gpu_temp_c", "gpu_power_w")

# Agent error kinds that are facts about (model, device, runtime) and so are stored as rows.
# Others (runtime_missing, model_not_found, bad_request, transport) describe the set-up and are only reported.
MODEL_ERRORS = frozenset({"corrupt_model", "unsupported_op", "bad_model", "runtime_error"})


def summarize(samples_ms) -> dict:
    """Statistics of one run's samples. The median is the headline latency: robust to the odd
    preempted sample, which inflates the mean."""
    x = np.asarray(samples_ms, dtype=np.float64)
    if x.size == 0:
        raise ValueError("no samples")
    p10, p25, p50, p75, p90 = np.percentile(x, [10, 25, 50, 75, 90])
    mean = float(x.mean())
    std = float(x.std(ddof=1)) if x.size > 1 else 0.0
    return {"latency_ms": float(p50), "mean_ms": mean, "std_ms": std, "min_ms": float(x.min()),
            "max_ms": float(x.max()), "p10_ms": float(p10), "p90_ms": float(p90), "iqr_ms": float(p75 - p25),
            "cv": std / mean if mean > 0 else float("nan"), "repeats": int(x.size)}


@dataclass
class Measurement:
    """The outcome of one Job: status 'ok' with samples and stats, or 'error' with a kind and message."""

    job: Job
    status: str
    samples_ms: list = field(default_factory=list)
    stats: dict = field(default_factory=dict)
    warmup: int = 0
    load_s: float = 0.0  # agent-side model load (not stored: it describes the run, not the model)
    warmup_s: float = 0.0
    runtime_version: str = ""
    agent_version: str = ""
    inputs: list = field(default_factory=list)
    telemetry_before: dict = field(default_factory=dict)
    telemetry_after: dict = field(default_factory=dict)
    device_fingerprint: str = ""
    error_kind: str = ""
    error: str = ""
    measured_at: datetime = field(default_factory=lambda: datetime.now(timezone.utc))

    @classmethod
    def from_result(cls, job: Job, result: dict, fingerprint: str = "") -> "Measurement":
        return cls(job=job, status="ok", samples_ms=list(result["samples_ms"]), stats=summarize(result["samples_ms"]),
                   warmup=result["warmup"], load_s=result.get("load_s", 0.0), warmup_s=result.get("warmup_s", 0.0),
                   runtime_version=result["runtime_version"],
                   agent_version=result["agent_version"], inputs=result["inputs"],
                   telemetry_before=result["telemetry_before"], telemetry_after=result["telemetry_after"],
                   device_fingerprint=fingerprint)

    @classmethod
    def failed(cls, job: Job, kind: str, message: str, fingerprint: str = "") -> "Measurement":
        return cls(job=job, status="error", error_kind=kind, error=message, device_fingerprint=fingerprint)

    @property
    def latency_ms(self) -> Optional[float]:
        return self.stats.get("latency_ms")

    def summary(self) -> str:
        j = self.job
        head = f"{j.artifact.arch} on {j.device}/{j.settings.runtime} (threads={j.settings.threads})"
        if self.status != "ok":
            return f"{head}: {self.error_kind}: {self.error}"
        s = self.stats
        return (f"{head}: {s['latency_ms']:.4f} ms median, p10-p90 {s['p10_ms']:.4f}-{s['p90_ms']:.4f} ms, "
                f"CV {s['cv'] * 100:.2f}%, {s['repeats']} repeats, input {self.input_shape or '?'}")

    @property
    def input_shape(self) -> str:
        return ";".join("x".join(str(d) for d in i["shape"]) for i in self.inputs)

    def to_row(self) -> dict:
        """One store row; column names are documented in collector/store.py."""
        j, st = self.job, self.job.settings
        first = self.inputs[0]["shape"] if self.inputs else None
        row = {
            "space": j.artifact.space, "arch": j.artifact.arch, "model_sha256": j.artifact.sha256,
            "model_format": j.artifact.format, "device": j.device, "device_fingerprint": self.device_fingerprint,
            "runtime": st.runtime, "runtime_version": self.runtime_version, "accelerator": st.accelerator,
            "batch_size": int(first[0]) if first else st.batch_size, "input_shape": self.input_shape,
            "threads": st.threads, "cores": ",".join(map(str, st.cores)) if st.cores else "",
            "settings": st.canonical(), "key": j.key, "sampler": j.sampler,
            "warmup": self.warmup, "samples_ms": self.samples_ms,
            "agent_version": self.agent_version, "measured_at": self.measured_at,
            "status": self.status, "error_kind": self.error_kind, "error": self.error,
        }
        for name in ("latency_ms", "mean_ms", "std_ms", "min_ms", "max_ms", "p10_ms", "p90_ms", "iqr_ms", "cv"):
            row[name] = self.stats.get(name)
        row["repeats"] = self.stats.get("repeats", 0)
        for when, tel in (("before", self.telemetry_before), ("after", self.telemetry_after)):
            for k in TELEMETRY:
                row[f"telemetry_{when}_{k}"] = tel.get(k)
        row["gpu_clocks_locked"] = self.telemetry_before.get("gpu_clocks_locked")
        return row


def fingerprint(probe: dict) -> str:
    """Short hash of what makes a device's numbers comparable: hardware, OS kernel and runtime versions."""
    keys = ("machine", "cpu_model", "cpu_count", "cpu_affinity", "memory_mb", "kernel", "os_release", "gpus",
            "python")
    basis = {k: probe.get(k) for k in keys}
    basis["runtimes"] = {k: v.get("version") for k, v in (probe.get("runtimes") or {}).items()}
    return hashlib.sha256(json.dumps(basis, sort_keys=True).encode()).hexdigest()[:16]
