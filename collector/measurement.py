"""Measurement: raw samples from the agent plus the statistics derived from them (the MeasureResult)."""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Optional, Sequence

import numpy as np

from .job import Job

TELEMETRY = ("freq_mhz", "temp_c", "load1", "gpu_sm_mhz", "gpu_mem_mhz", "gpu_temp_c", "gpu_power_w")

# Every error kind the agent or the host gives a job: kind -> (stored as a row, permanent). A stored kind is
# a fact about (model, device, settings) and becomes a row. Only a permanent one is skipped by a re-run (it
# cannot change while the file, the device's runtime and the settings stay the same; --retry-errors, or
# an upgraded runtime, is what would change it); the others are measured again by the next run. The kinds
# that are not stored describe the set-up (runtime missing, bad request...) and fail the device instead.
# tests/test_integrity.py keeps this table and the agent's kinds in step.
ERROR_KINDS = {
    "corrupt_model": (True, True),   # the runtime cannot load the file
    "unsupported_op": (True, True),  # the runtime has no kernel for an op of the file
    "bad_model": (True, True),       # dynamic dimensions or input types latkit cannot generate inputs for
    "wrong_runtime": (True, False),  # the file's content is another format than the runtime reads
    "runtime_error": (True, False),  # failed while running (out of memory, a driver error): may pass next time
    "timeout": (True, False),  # no answer within --job-timeout (agent killed and restarted): a busy device, or
                               # a longer --job-timeout, may let it pass
    "settings_not_applied": (True, False),  # the agent read back other settings than the key's
    "protocol_error": (True, False),  # the device's reply broke the agent protocol (collector/protocol.py): the
                                      # row of the job in flight; the device leaves the run. A device that
                                      # lies now may be fixed, so a re-run measures it again
    "runtime_missing": (False, False),
    "model_not_found": (False, False),
    "bad_request": (False, False),
    "lease_unavailable": (False, False),
    "agent_error": (False, False),
}
STORED_ERRORS = frozenset(k for k, (stored, _) in ERROR_KINDS.items() if stored)
PERMANENT_ERRORS = frozenset(k for k, (_, permanent) in ERROR_KINDS.items() if permanent)

# Which statistic latency_ms is, per device class (the job's accelerator), chosen on test-retest data (README,
# "Test-retest"): on CPUs a low quantile of all samples repeats best on a busy host (scripts/bench_measure, 60
# NB201 archs: p10 Spearman 0.999 ORT / 0.986 torch, minimum of round medians 0.9985 / 0.84; under a 1-min load
# of 7-17, p10 0.996 / min 0.997 / min round median 0.994 on ORT); p10 rather than the minimum, which one
# lucky sample sets. On CUDA GPUs (graphs replayed, jitter ~0.1 %) the median (H200 retest: Spearman 0.9998).
LATENCY_STATISTIC = {"cpu": "p10", "cuda": "median"}

NOISY_ROBUST_CV = 0.10  # above this IQR/1.349/median a row carries a "noisy" warning
LAUNCH_BOUND = 0.8      # an eager CUDA row whose host launch time is >= this share of its latency is launch-bound
# above this contention (latency_ms / cpu_ms - 1: the share of wall time the host gave to other processes) a row
# carries a "contended" warning; a quiet host gives ~0 (README "How latkit times a model")
CONTENDED = 0.05


@dataclass(frozen=True)
class Stats:
    """Statistics of one job's samples. `latency_ms` is the headline, `latency_statistic` says which one it is
    (LATENCY_STATISTIC: on a CPU the p10 of all samples; on a GPU the median, or with several rounds the
    minimum of the round medians). The others are kept so every choice can be re-made from the data."""

    latency_ms: float
    median_ms: float
    mean_ms: float
    std_ms: float
    min_ms: float
    max_ms: float
    p10_ms: float
    p90_ms: float
    p99_ms: float
    iqr_ms: float
    mode_ms: float     # midpoint of the shortest interval holding half the samples
    cv: float          # std / mean
    robust_cv: float   # IQR / 1.349 / median
    repeats: int
    latency_statistic: str = "median"  # p10 | median | min_round_median

    @classmethod
    def of(cls, samples_ms, round_medians: Sequence[float] = (), accelerator: str = "cpu") -> "Stats":
        x = np.sort(np.asarray(samples_ms, dtype=np.float64))
        if x.size == 0:
            raise ValueError("no samples")
        p10, p25, p50, p75, p90, p99 = np.percentile(x, [10, 25, 50, 75, 90, 99])
        mean = float(x.mean())
        std = float(x.std(ddof=1)) if x.size > 1 else 0.0
        k = (x.size + 1) // 2
        widths = x[k - 1:] - x[:x.size - k + 1]
        i = int(np.argmin(widths))
        which = LATENCY_STATISTIC[accelerator]
        if which == "median" and len(round_medians) > 1:
            which, latency = "min_round_median", float(min(round_medians))
        else:
            latency = float(p10 if which == "p10" else p50)
        return cls(latency_ms=latency, latency_statistic=which,
                   median_ms=float(p50), mean_ms=mean, std_ms=std, min_ms=float(x[0]), max_ms=float(x[-1]),
                   p10_ms=float(p10), p90_ms=float(p90), p99_ms=float(p99), iqr_ms=float(p75 - p25),
                   mode_ms=float((x[i] + x[i + k - 1]) / 2), cv=std / mean if mean > 0 else float("nan"),
                   robust_cv=float((p75 - p25) / 1.349 / p50) if p50 > 0 else float("nan"), repeats=int(x.size))


def summarize(samples_ms, accelerator: str = "cpu") -> Stats:
    """Statistics of one run's samples (one round)."""
    return Stats.of(samples_ms, accelerator=accelerator)


def _ts(text) -> Optional[datetime]:
    """The agent's UTC timestamps ("...Z") as aware datetimes."""
    if text is None or isinstance(text, datetime):
        return text
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)


@dataclass(frozen=True)
class Measurement:
    """The outcome of one Job: status 'ok' with samples and stats, or 'error' with a kind and message.
    Raw samples are the truth; `stats` derives from them."""

    job: Job
    status: str
    samples_ms: tuple = ()
    stats: Optional[Stats] = None
    cpu_samples_ms: tuple = ()         # the calling thread's CPU time of each run (CPU, threads=1, agent >= 0.3.6)
    cpu_ms: Optional[float] = None     # their p10, the statistic latency_ms is on a CPU
    warmup: int = 0
    warmup_s: float = 0.0
    load_ms: Optional[float] = None    # model load and session set-up on the device
    first_ms: Optional[float] = None   # the first inference after load (cold caches, lazy init)
    runtime_version: str = ""
    agent_version: str = ""
    inputs: tuple = ()
    telemetry_before: dict = field(default_factory=dict)
    telemetry_after: dict = field(default_factory=dict)
    applied: dict = field(default_factory=dict)  # what the agent read back: threads, cores, dtype, cuda graphs...
    stopped_by: str = ""               # ci_target | max_time | max_count
    ci_rel: Optional[float] = None     # CI half-width of latency_ms's quantile / that quantile at the stop (worst round)
    cooldown_s: Optional[float] = None
    cooled: Optional[bool] = None
    throttle: Optional[str] = None
    peak_rss_mb: Optional[float] = None
    gpu_peak_mb: Optional[float] = None
    launch_ms: Optional[float] = None
    energy_method: str = ""            # rapl | nvml; "" when energy was not read
    energy_j: Optional[float] = None   # counter energy over the timed runs (and the runs that extended their span)
    energy_s: Optional[float] = None   # seconds that span took
    energy_runs: Optional[int] = None  # model runs in it
    idle_power_w: Optional[float] = None  # the counter's power over an idle span before warmup (not subtracted)
    energy_warning: str = ""           # why energy asked for is null ("energy: ...")
    round_ms: tuple = ()               # each round's median
    round_session_reused: tuple = ()   # per round: timed on a session the agent had loaded before
    round_started_at: tuple = ()
    round_finished_at: tuple = ()
    device_fingerprint: str = ""
    error_kind: str = ""
    error: str = ""
    measured_at: datetime = field(default_factory=lambda: datetime.now(timezone.utc))
    stored: bool = False               # read back from the dataset, not timed by this call (not a column)

    @classmethod
    def from_result(cls, job: Job, result: dict, fingerprint: str = "") -> "Measurement":
        samples, cpu = tuple(result["samples_ms"]), _thread_clock(job, result)
        return cls(job=job, status="ok", samples_ms=samples, stats=Stats.of(samples, accelerator=job.settings.accelerator),
                   cpu_samples_ms=cpu, cpu_ms=_p10(cpu),
                   warmup=result["warmup"],
                   warmup_s=result.get("warmup_s", 0.0), load_ms=result.get("load_s", 0.0) * 1e3,
                   first_ms=result.get("first_ms"), runtime_version=result["runtime_version"],
                   agent_version=result["agent_version"], inputs=tuple(result["inputs"]),
                   telemetry_before=result["telemetry_before"], telemetry_after=result["telemetry_after"],
                   applied=result.get("applied") or {}, stopped_by=result.get("stopped_by", ""),
                   ci_rel=result.get("ci_rel"), cooldown_s=result.get("cooldown_s"), cooled=result.get("cooled"),
                   throttle=result.get("throttle"), peak_rss_mb=result.get("peak_rss_mb"),
                   gpu_peak_mb=result.get("gpu_peak_mb"), launch_ms=result.get("launch_ms"),
                   energy_method=result.get("energy_method") or "", energy_j=result.get("energy_j"),
                   energy_s=result.get("energy_s"), energy_runs=result.get("energy_runs"),
                   idle_power_w=result.get("idle_power_w"), energy_warning=result.get("energy_warning") or "",
                   round_ms=(float(np.median(samples)),), round_session_reused=(bool(result.get("session_reused")),),
                   round_started_at=(_ts(result.get("started_at")),),
                   round_finished_at=(_ts(result.get("finished_at")),), device_fingerprint=fingerprint)

    @classmethod
    def failed(cls, job: Job, kind: str, message: str, fingerprint: str = "") -> "Measurement":
        return cls(job=job, status="error", error_kind=kind, error=message, device_fingerprint=fingerprint)

    @classmethod
    def from_row(cls, job: Job, row: dict) -> "Measurement":
        """The Measurement of a stored row of `job`, marked `stored` (its to_row() is that row)."""
        if row["status"] != "ok":
            m = cls.failed(job, row["error_kind"], row["error"], row["device_fingerprint"])
            return dataclasses.replace(m, measured_at=row["measured_at"], stored=True)
        samples = tuple(row["samples_ms"])
        stats = (Stats(**{f.name: row[f.name] for f in dataclasses.fields(Stats)}) if row["median_ms"] is not None
                 else Stats.of(samples))
        applied = {"threads": row["threads_applied"], "dtype": row["dtype"], "cuda_graphs": row["cuda_graphs"],
                   "graph_fallback": row["graph_fallback"], "cudnn_benchmark": row["cudnn_benchmark"],
                   "tf32": row["tf32"],
                   "cores": [int(c) for c in row["cores_applied"].split(",") if c] if row["cores_applied"] else None}
        reused = row["round_session_reused"] or ([row["session_reused"]] if row["session_reused"] is not None else [])
        return cls(
            job=job, status="ok", samples_ms=samples, stats=stats,
            cpu_samples_ms=tuple(row.get("cpu_samples_ms") or ()), cpu_ms=row.get("cpu_ms"), warmup=row["warmup"],
            load_ms=row["load_ms"],
            first_ms=row["first_ms"], runtime_version=row["runtime_version"], agent_version=row["agent_version"],
            inputs=tuple({"shape": [int(d) for d in s.split("x")]} for s in row["input_shape"].split(";") if s),
            telemetry_before={**{k: row[f"telemetry_before_{k}"] for k in TELEMETRY},
                              **({"gpu_clocks_locked": row["gpu_clocks_locked"]}
                                 if row["gpu_clocks_locked"] is not None else {})},
            telemetry_after={k: row[f"telemetry_after_{k}"] for k in TELEMETRY},
            applied={k: v for k, v in applied.items() if v is not None}, stopped_by=row["stopped_by"] or "",
            ci_rel=row["ci_rel"], cooldown_s=row["cooldown_s"], throttle=row["throttle"],
            cooled=None if row["cooldown_s"] is None else "did not cool to" not in (row["warnings"] or ""),
            peak_rss_mb=row["peak_rss_mb"],
            gpu_peak_mb=row["gpu_peak_mb"], launch_ms=row["launch_ms"], **_stored_energy(row),
            round_ms=tuple(row["round_ms"] or ()),
            round_session_reused=tuple(reused),
            round_started_at=tuple(row["round_started_at"] or ()),
            round_finished_at=tuple(row["round_finished_at"] or ()),
            device_fingerprint=row["device_fingerprint"], measured_at=row["measured_at"], stored=True)

    @classmethod
    def combine(cls, rounds: Sequence["Measurement"]) -> "Measurement":
        """One row from a job's shuffled rounds (all ok, in time order): samples pooled, latency_ms from
        the round medians, load and first inference of the session (the agent reports its fresh load's)."""
        if len(rounds) == 1:
            return rounds[0]
        first, samples = rounds[0], tuple(s for r in rounds for s in r.samples_ms)
        cpu = tuple(c for r in rounds for c in r.cpu_samples_ms) if all(r.cpu_samples_ms for r in rounds) else ()
        medians = tuple(m for r in rounds for m in r.round_ms)
        reasons = {r.stopped_by for r in rounds}
        return dataclasses.replace(
            first, samples_ms=samples, stats=Stats.of(samples, medians, first.job.settings.accelerator),
            cpu_samples_ms=cpu, cpu_ms=_p10(cpu), warmup=sum(r.warmup for r in rounds),
            warmup_s=sum(r.warmup_s for r in rounds), telemetry_after=rounds[-1].telemetry_after,
            stopped_by="ci_target" if reasons == {"ci_target"} else sorted(reasons - {"ci_target"})[0],
            ci_rel=max(r.ci_rel for r in rounds if r.ci_rel is not None) if any(r.ci_rel is not None for r in rounds)
            else None,
            cooldown_s=sum(r.cooldown_s or 0.0 for r in rounds) if first.cooldown_s is not None else None,
            cooled=None if first.cooled is None else all(r.cooled for r in rounds),
            throttle="; ".join(sorted({r.throttle for r in rounds if r.throttle})) or first.throttle,
            peak_rss_mb=max((r.peak_rss_mb for r in rounds if r.peak_rss_mb is not None), default=None),
            gpu_peak_mb=max((r.gpu_peak_mb for r in rounds if r.gpu_peak_mb is not None), default=None),
            **_energy_of(rounds), round_ms=medians,
            round_session_reused=tuple(u for r in rounds for u in r.round_session_reused),
            round_started_at=tuple(t for r in rounds for t in r.round_started_at),
            round_finished_at=tuple(t for r in rounds for t in r.round_finished_at),
            measured_at=rounds[-1].measured_at, stored=False)

    @property
    def energy_mj(self) -> Optional[float]:
        """Energy per inference: the counter's energy over the timed span / the runs in it."""
        return self.energy_j * 1e3 / self.energy_runs if self.energy_j is not None and self.energy_runs else None

    @property
    def power_w(self) -> Optional[float]:
        """Average power over the timed span (idle_power_w beside it says how much of it the device draws idle)."""
        return self.energy_j / self.energy_s if self.energy_j is not None and self.energy_s else None

    @property
    def latency_ms(self) -> Optional[float]:
        return self.stats.latency_ms if self.stats else None

    @property
    def contention(self) -> Optional[float]:
        """latency_ms / cpu_ms - 1: the share of wall time the host took away (other processes' slices)."""
        return self.stats.latency_ms / self.cpu_ms - 1.0 if self.cpu_ms and self.stats else None

    @property
    def launch_bound(self) -> Optional[bool]:
        """An eager CUDA forward whose host launch time is about its latency: the row timed the host CPU."""
        if self.launch_ms is None or self.stats is None:
            return None
        return not self.applied.get("cuda_graphs") and self.launch_ms >= LAUNCH_BOUND * self.stats.latency_ms

    @property
    def warnings(self) -> tuple:
        """What makes this row less trustworthy, in words (torch.utils.benchmark prints the like)."""
        if self.status != "ok":
            return ()
        s, out = self.stats, []
        if s.robust_cv > NOISY_ROBUST_CV:
            out.append(f"noisy: robust CV {s.robust_cv * 100:.1f} % (IQR/1.349/median); pin a core (--cores) "
                       "or measure when the device is idle")
        if self.stopped_by and self.stopped_by != "ci_target":
            out.append(f"missed the +-{self.job.settings.ci_target * 100:g} % CI target (stopped by "
                       f"{self.stopped_by}, +-{(self.ci_rel or 0) * 100:.2f} %)")
        if self.throttle:
            out.append(f"throttled: {self.throttle}")
        if self.cooled is False:
            out.append(f"did not cool to {self.job.settings.cooldown_temp_c} C within "
                       f"{self.job.settings.cooldown_max_s:g} s")
        if self.applied.get("graph_fallback"):
            out.append(self.applied["graph_fallback"])
        if self.launch_bound:
            out.append(f"launch-bound: the host takes {self.launch_ms:.3f} ms to launch a forward of "
                       f"{s.latency_ms:.3f} ms; time with CUDA graphs")
        if self.contention is not None and self.contention > CONTENDED:
            out.append(f"contended: wall clock {self.contention * 100:.0f} % above the thread's CPU time "
                       f"({s.latency_ms:.4g} vs cpu_ms {self.cpu_ms:.4g} ms); the host ran other work: measure when "
                       "it is idle, or use cpu_ms")
        if self.energy_warning:  # last: a stored row's energy reason is read back from here
            out.append(self.energy_warning)
        return tuple(out)

    def summary(self, warnings: bool = True) -> str:
        j = self.job
        head = f"{j.artifact.arch} on {j.device}/{j.settings.runtime} (threads={j.settings.threads})"
        if self.stored:
            head += f" (stored row of {self.measured_at:%Y-%m-%d %H:%M} UTC, not timed again; --force re-measures)"
        if self.status != "ok":
            return f"{head}: {self.error_kind}: {self.error}"
        s = self.stats
        return (f"{head}: {s.latency_ms:.4f} ms, median {s.median_ms:.4f}, p10-p90 {s.p10_ms:.4f}-{s.p90_ms:.4f} ms, "
                f"robust CV {s.robust_cv * 100:.2f}%, {s.repeats} repeats in {len(self.round_ms)} round(s), "
                f"input {self.input_shape or '?'}" + self._energy_text()
                + "".join(f"\n  warning: {w}" for w in (self.warnings if warnings else ())))

    def _energy_text(self) -> str:
        if self.energy_mj is None:
            return ""
        idle = f", idle {self.idle_power_w:.3g} W" if self.idle_power_w is not None else ""
        return f"\n  energy {self.energy_mj:.4g} mJ per inference at {self.power_w:.3g} W{idle} ({self.energy_method})"

    @property
    def input_shape(self) -> str:
        return ";".join("x".join(str(d) for d in i["shape"]) for i in self.inputs)

    def to_row(self) -> dict:
        """One store row; the columns are declared in collector/schema.py."""
        j, st, a = self.job, self.job.settings, self.applied
        first = self.inputs[0]["shape"] if self.inputs else None
        rounds_at = [t for t in self.round_started_at if t is not None]
        ends = [t for t in self.round_finished_at if t is not None]
        row = {
            "space": j.artifact.space, "arch": j.artifact.arch, "model_sha256": j.artifact.sha256,
            "model_format": j.artifact.format, "device": j.device, "device_fingerprint": self.device_fingerprint,
            "runtime": st.runtime, "runtime_version": self.runtime_version, "accelerator": st.accelerator,
            "batch_size": int(first[0]) if first else st.batch_size, "input_shape": self.input_shape,
            "threads": st.threads, "cores": ",".join(map(str, st.cores)) if st.cores else "",
            "threads_applied": a.get("threads"),
            "cores_applied": ",".join(map(str, a["cores"])) if a.get("cores") is not None else None,
            "dtype": a.get("dtype", st.dtype if st.accelerator == "cuda" else None) if self.status == "ok" else None,
            "cuda_graphs": a.get("cuda_graphs"), "graph_fallback": a.get("graph_fallback"),
            "cudnn_benchmark": a.get("cudnn_benchmark"), "tf32": a.get("tf32"),
            "launch_ms": self.launch_ms, "launch_bound": self.launch_bound,
            "settings": st.canonical(), "key": j.key, "sampler": j.sampler,
            "role": j.role, "role_round": j.role_round,
            "warmup": self.warmup, "samples_ms": list(self.samples_ms),
            "cpu_samples_ms": list(self.cpu_samples_ms) or None, "cpu_ms": self.cpu_ms, "contention": self.contention,
            "rounds": len(self.round_ms) if self.status == "ok" else None, "round_ms": list(self.round_ms) or None,
            "round_started_at": rounds_at or None, "round_finished_at": ends or None,
            "started_at": rounds_at[0] if rounds_at else None, "finished_at": ends[-1] if ends else None,
            "stopped_by": self.stopped_by or None, "ci_rel": self.ci_rel, "load_ms": self.load_ms,
            "first_ms": self.first_ms, "peak_rss_mb": self.peak_rss_mb, "gpu_peak_mb": self.gpu_peak_mb,
            "energy_mj": self.energy_mj, "power_w": self.power_w, "idle_power_w": self.idle_power_w,
            "energy_s": self.energy_s, "energy_runs": self.energy_runs, "energy_method": self.energy_method or None,
            "session_reused": self.round_session_reused[0] if self.round_session_reused else None,
            "round_session_reused": list(self.round_session_reused) or None,
            "cooldown_s": self.cooldown_s, "throttle": self.throttle, "warnings": "; ".join(self.warnings),
            "agent_version": self.agent_version, "measured_at": self.measured_at,
            "status": self.status, "error_kind": self.error_kind, "error": self.error,
        }
        for f in dataclasses.fields(Stats):
            row[f.name] = getattr(self.stats, f.name) if self.stats else None
        row["repeats"] = row["repeats"] or 0
        for when, tel in (("before", self.telemetry_before), ("after", self.telemetry_after)):
            for k in TELEMETRY:
                row[f"telemetry_{when}_{k}"] = tel.get(k)
        row["gpu_clocks_locked"] = self.telemetry_before.get("gpu_clocks_locked")
        return row


def _stored_energy(row: dict) -> dict:
    """A stored row's energy as Measurement fields (energy_j from energy_mj x energy_runs; the reason is the
    warnings' last part, from "energy:" on); rows from before the energy columns have none."""
    read = row.get("energy_mj") is not None and row.get("energy_runs")
    warnings = row["warnings"] or ""
    at = 0 if warnings.startswith("energy: ") else warnings.find("; energy: ")
    return {"energy_method": row.get("energy_method") or "",
            "energy_j": row["energy_mj"] * row["energy_runs"] / 1e3 if read else None,
            "energy_s": row.get("energy_s") if read else None, "energy_runs": row.get("energy_runs") if read else None,
            "idle_power_w": row.get("idle_power_w"),
            "energy_warning": warnings[at:].removeprefix("; ") if at >= 0 else ""}


def _thread_clock(job: Job, result: dict) -> tuple:
    """The reply's cpu_samples_ms where they time the model's work: on a CPU with one thread (with more, the
    pool's threads are not in the calling thread's clock: no figure rather than a misleading one)."""
    st = job.settings
    return tuple(result.get("cpu_samples_ms") or ()) if st.accelerator == "cpu" and st.threads == 1 else ()


def _p10(samples) -> Optional[float]:
    return float(np.percentile(np.asarray(samples, dtype=np.float64), 10)) if samples else None


def _energy_of(rounds: Sequence[Measurement]) -> dict:
    """The energy fields of one row from its rounds: energy, span and runs summed over the rounds that read the
    counter (so energy_mj stays energy per inference), their idle power averaged, each reason kept once."""
    read = [r for r in rounds if r.energy_j is not None]
    idle = [r.idle_power_w for r in read if r.idle_power_w is not None]
    return {"energy_method": read[0].energy_method if read else "",
            "energy_j": sum(r.energy_j for r in read) if read else None,
            "energy_s": sum(r.energy_s for r in read) if read else None,
            "energy_runs": sum(r.energy_runs for r in read) if read else None,
            "idle_power_w": sum(idle) / len(idle) if idle else None,
            "energy_warning": "; ".join(dict.fromkeys(r.energy_warning for r in rounds if r.energy_warning))}


def fingerprint(probe: dict) -> str:
    """Short hash of what makes a device's numbers comparable: hardware, OS kernel and runtime versions."""
    keys = ("machine", "cpu_model", "cpu_count", "cpu_affinity", "memory_mb", "kernel", "os_release", "gpus",
            "python")
    basis = {k: probe.get(k) for k in keys}
    basis["runtimes"] = {k: v.get("version") for k, v in (probe.get("runtimes") or {}).items()}
    return hashlib.sha256(json.dumps(basis, sort_keys=True).encode()).hexdigest()[:16]
