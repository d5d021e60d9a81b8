"""How far a host drifted during a collection, against its own noise, from the reference's A/A checks.

A check (collector/reference.py) times twins "a" and "b" of one network, a round each in the order a b b a. Two
numbers follow:
- the A/A floor: the median over checks of |b - a| / a, what two timings of the same network at the same
  moment disagree by (the host's own noise, at this protocol);
- the drift: how far the reference moved over the run, (max - min) / min of the checks' mean of a and b,
  with its span (from the start of the earlier of the two checks to the end of the later: the host may have
  changed while a check ran), and the largest change between neighbouring checks with its span.
The noise a drift is held against is the larger of the A/A floor and the median ci_rel of the reference rows
(the precision the protocol reached). A drift above DRIFT_FACTOR x that noise warns: the rows timed in the
span may be off by as much. Three, because the range of many checks' means exceeds one noise unit on a host
that does not drift at all (about 2.3 floors over 10 checks of Gaussian noise, 3 over 30).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Optional, Sequence

import numpy as np

from .reference import side_store
from .store import Store

DRIFT_FACTOR = 3.0


@dataclass(frozen=True)
class Check:
    """One A/A check: when it started (twin a) and ended (its last round), both latencies, and the worse ci_rel
    of the two."""

    at: datetime
    a_ms: float
    b_ms: float
    ci_rel: Optional[float] = None
    end: Optional[datetime] = None

    @property
    def until(self) -> datetime:
        """When the check ended (its start where the rows do not say): a host that changed while it ran changed
        before this."""
        return self.end or self.at

    @property
    def ms(self) -> float:
        return (self.a_ms + self.b_ms) / 2


@dataclass(frozen=True)
class Drift:
    """The reference of one device (and runtime, settings) over its checks."""

    device: str
    runtime: str
    checks: int
    start: datetime
    end: datetime
    first_ms: float
    last_ms: float
    min_ms: float
    max_ms: float
    aa_floor: float      # median |b - a| / a over the checks
    noise: float         # max(aa_floor, median ci_rel)
    drift: float         # (max - min) / min of the checks' means
    drift_from: datetime
    drift_to: datetime
    step: float          # the largest |change| / earlier between neighbouring checks (0 with one check)
    step_from: datetime
    step_to: datetime

    @property
    def drifted(self) -> bool:
        return self.checks > 1 and self.drift > DRIFT_FACTOR * self.noise

    def as_dict(self) -> dict:
        return dict(asdict(self), drifted=self.drifted)

    def line(self) -> str:
        """One line: the reference, its drift and the floor."""
        head = (f"reference on {self.device} ({self.runtime}): {self.first_ms:.4g} -> {self.last_ms:.4g} ms over "
                f"{self.checks} check(s) {_stamp(self.start)}-{_hm(self.end)} UTC")
        if self.checks < 2:
            return f"{head}, A/A floor {self.aa_floor * 100:.2f} % (one check: no drift to tell)"
        return (f"{head}, drift {self.drift * 100:.2f} % (range), largest step {self.step * 100:.2f} %, "
                f"A/A floor {self.aa_floor * 100:.2f} %, noise {self.noise * 100:.2f} %")

    def warning(self) -> Optional[str]:
        """The warning naming the span the host drifted in, or None."""
        if not self.drifted:
            return None
        step = self.step > DRIFT_FACTOR * self.noise
        a, b = (self.step_from, self.step_to) if step else (self.drift_from, self.drift_to)
        what = f"changed by {self.step * 100:.1f} % in one step" if step else f"drifted {self.drift * 100:.1f} %"
        return (f"{self.device}'s reference {what} between {_stamp(a)} and {_stamp(b)} UTC, over {DRIFT_FACTOR:g}x "
                f"its noise ({self.noise * 100:.2f} %): rows timed then may be off by as much; measure them again "
                "(latkit data retest) or on a quieter host")


def _hm(t: datetime) -> str:
    return t.strftime("%H:%M:%S")


def _stamp(t: datetime) -> str:
    return t.strftime("%Y-%m-%d %H:%M:%S")


def of_checks(device: str, runtime: str, checks: Sequence[Check]) -> Optional[Drift]:
    """The Drift of a device's checks (in any order); None without checks."""
    cs = sorted(checks, key=lambda c: c.at)
    if not cs:
        return None
    ms = np.array([c.ms for c in cs])
    floor = float(np.median([abs(c.b_ms - c.a_ms) / c.a_ms for c in cs]))
    cis = [c.ci_rel for c in cs if c.ci_rel is not None]
    lo, hi = int(np.argmin(ms)), int(np.argmax(ms))
    steps = np.abs(np.diff(ms)) / ms[:-1] if len(cs) > 1 else np.zeros(1)
    k = int(np.argmax(steps))
    return Drift(device, runtime, len(cs), cs[0].at, cs[-1].at, float(ms[0]), float(ms[-1]), float(ms[lo]),
                 float(ms[hi]), floor, max(floor, float(np.median(cis)) if cis else 0.0),
                 float(ms[hi] / ms[lo] - 1), cs[min(lo, hi)].at, cs[max(lo, hi)].until, float(steps[k]), cs[k].at,
                 cs[min(k + 1, len(cs) - 1)].until)


def checks_of_rows(rows: Sequence[dict]) -> dict:
    """(device, runtime, settings, run) -> Checks from reference rows (dicts with device, runtime, settings,
    sampler, arch, status, latency_ms, ci_rel, started_at): a twin-a row followed, on its device, by a twin-b row
    of the same run (the sampler names it; "" in rows of latkit before it). A lone twin (the other failed, or the
    run stopped between them) is left out."""
    ok = sorted((r for r in rows if r["status"] == "ok" and r["started_at"] is not None),
                key=lambda r: (r["device"], r["started_at"]))
    out: dict = {}
    for a, b in zip(ok, ok[1:]):
        if a["device"] == b["device"] and a["arch"].endswith("-a") and b["arch"].endswith("-b") \
                and (a["runtime"], a["settings"], a["sampler"]) == (b["runtime"], b["settings"], b["sampler"]):
            ci = [x for x in (a["ci_rel"], b["ci_rel"]) if x is not None]
            ends = [x for x in (a.get("finished_at"), b.get("finished_at")) if x is not None]
            out.setdefault((a["device"], a["runtime"], a["settings"], a["sampler"]), []).append(
                Check(a["started_at"], a["latency_ms"], b["latency_ms"], max(ci) if ci else None,
                      max(ends) if ends else None))
    return out


COLUMNS = ["device", "runtime", "settings", "sampler", "arch", "status", "latency_ms", "ci_rel", "started_at",
           "finished_at"]


def dataset_drift(path) -> list:
    """The Drift of every collection run of each (device, runtime, settings) in the reference side table of the
    dataset at `path`, in time order (none: an empty list)."""
    side = side_store(Store(path))
    if not side.exists() or not side.files():
        return []
    found = checks_of_rows(side.read(columns=COLUMNS).to_pylist())
    return sorted((of_checks(dev, rt, cs) for (dev, rt, _, _), cs in found.items()), key=lambda d: (d.start, d.device))
