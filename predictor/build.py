"""`latkit predictor build`: a surrogate that builds itself on a live device, a closed measure-fit loop.

1. Held-out set: `heldout` archs drawn uniformly from the space's pool, measured first, never trained on;
   the loop's accuracy (share within +-10 %) and Spearman are read on them.
2. Round 0: a latency-balanced sample (FLOPs bins) of `batch` archs, measured, then the surrogate fitted: a
   bagged ensemble (predictor/ensemble.py) of the model that cross-validates best on round 0.
3. Round r: over the unmeasured pool, the ensemble predicts latency and its spread. The batch is split over
   bins of predicted latency in proportion to the relative error the surrogate made in each bin on the
   previous batch (measured before it joined training, as in ESM); within a bin, the archs where the
   members disagree most are taken (predictor/weakspots.py, the sampler `fit` uses too). Measure, refit,
   score on the held-out set. Each round records its measuring seconds and its `fit_s` (fitting, scoring and
   choosing the next batch: the loop's overhead).
4. Stop when the held-out +-10 % accuracy reaches `target_acc`, or when `max_archs` (held-out included)
   are measured.
Every row has the role "heldout", or "round" and its round number (predictor/live.py), and says how its
arch was chosen in `sampler`: uniform, balanced, weak-spots. Interrupted, the same call reads its rows back
(those of an older latkit by their "build(round=r)" sampler) and replays the rounds' fits, measuring only
archs that have no row yet.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import numpy as np

from latkit.collector import validate
from latkit.collector.dataset import save_png
from latkit.collector.devices import Registry
from latkit.collector.errors import LatkitError
from latkit.collector.job import Settings
from latkit.collector.samplers import pool, sample_from
from latkit.collector.spaces import arch_space

from .ensemble import Ensemble
from .esm import choose_model
from .live import job_settings, latencies, measure_archs, own_rows
from .metrics import relative_error, report
from .models import make_model
from .weakspots import N_BINS, bin_errors, weak_spots

MAX_CANDIDATES = 4000  # unmeasured archs scored per round: the ranking, not the pool size, is what matters


def build(space: str, device: str = "local", target_acc: float = 0.95, max_archs: int = 300, data="latkit-data",
          heldout: int = 30, batch: int = 20, settings: Optional[Settings] = None, seed: int = 0,
          members: int = 5, registry: Optional[Registry] = None, log=print) -> tuple:
    """Returns (fitted Ensemble, report dict). `data`: the dataset the loop measures into and resumes from."""
    sp = arch_space(space)
    validate.number(target_acc, "--target-acc", 0, 1, lo_open=True)
    validate.whole(batch, "--batch", lo=5)
    validate.whole(heldout, "--heldout", lo=5)
    validate.whole(max_archs, "--max-archs", lo=heldout + batch)
    settings = job_settings(settings)
    reg = registry or Registry()
    reg.get(device)  # unknown device: one line before anything is exported
    rng = np.random.default_rng(seed)
    candidates = pool(sp, max_archs, rng)
    if len(candidates) < max_archs:
        raise LatkitError(f"{space} has {len(candidates)} archs; --max-archs {max_archs} is more; lower it")
    own = _Own(space, device, settings, data, reg, seed)
    held = own.archs("heldout")
    if len(held) < heldout:
        order = [candidates[i] for i in rng.permutation(len(candidates))]
        held = own.take([a for a in order if a not in own.rows or a in held][:heldout], "uniform", "heldout")
    held_set, y_held = set(held), own.latencies(held)
    rounds = own.rounds()
    free = [a for a in candidates if a not in held_set]
    start = sample_from(sp, free, batch, "balanced", seed)
    train = own.take(start, "balanced", "round", 0) if 0 not in rounds else rounds[0]
    round_measure = own.measured[-1] if 0 not in rounds else 0.0
    t0 = time.perf_counter()
    name = choose_model(space, sorted(train), own.latencies(sorted(train)), seed, n_jobs=2)
    history, prev_err, r = [], None, 0
    while True:
        fit_on = sorted(train)  # the bagging draws by position: a resumed build, which reads the rows back in
        # another order, must fit the same models and so take the same decisions
        model = Ensemble(make_model(name, space, seed, n_jobs=2), members, seed).fit(fit_on, own.latencies(fit_on))
        m = report(model.predict(held), y_held)
        history.append({"round": r, "n_train": len(train), "n_measured": len(train) + len(held),
                        "acc10": m["acc10"], "spearman": m["spearman"], "mape": m["mape"], "bins": prev_err,
                        "measure_s": round_measure})
        r += 1
        done = m["acc10"] >= target_acc or len(train) + len(held) >= max_archs
        stop = done and r not in rounds
        if not stop:
            k = min(batch, max_archs - len(train) - len(held))
            present = rounds.get(r, [])
            taken = set(train) | held_set | set(present)
            rest = [a for a in candidates if a not in taken]
            pick = rest if len(rest) <= MAX_CANDIDATES else [
                rest[i] for i in np.sort(rng.choice(len(rest), MAX_CANDIDATES, replace=False))]
            mean, std = model.predict(pick, return_std=True)
            nxt = present + [pick[i] for i in weak_spots(mean, max(0, k - len(present)), history[-1]["bins"], rng,
                                                         spread=std / mean)]
        # the loop's own time between two measurements: fitting, scoring, choosing the next batch
        history[-1]["fit_s"] = time.perf_counter() - t0
        log(f"round {r - 1}: {len(train)} archs trained on, held-out ±10 % {m['acc10'] * 100:.1f} %, "
            f"spearman {m['spearman']:.3f} (measuring {round_measure:.1f} s, fitting {history[-1]['fit_s']:.1f} s)")
        if stop:
            break
        nxt = own.take(nxt, "weak-spots", "round", r)
        round_measure = own.measured[-1]
        t0 = time.perf_counter()
        pred = model.predict(nxt)
        prev_err = bin_errors(pred, relative_error(pred, own.latencies(nxt)), mean)
        train = train + [a for a in nxt if a not in set(train)]
    final = dict(m, model=name, members=members, n_train=len(train), n_heldout=len(held), rounds=history,
                 target_acc=target_acc, reached=m["acc10"] >= target_acc, max_archs=max_archs,
                 measure_s=float(sum(own.measured)), fit_s=float(sum(h["fit_s"] for h in history)),
                 bins_sampled=_bins_sampled(history))
    return model, final


class _Own:
    """The loop's rows in the dataset: read back at the start (resume), added to as batches are measured."""

    def __init__(self, space: str, device: str, settings: Settings, data, registry: Registry, seed: int):
        self.space, self.device, self.settings, self.data, self.registry = space, device, settings, data, registry
        self.seed = seed
        self.rows = own_rows(data, device, space, settings, ("heldout", "round"))
        self.measured = []  # seconds measuring each batch (0 for a batch read back from the dataset)

    def archs(self, role: str) -> list:
        return [a for a, row in self.rows.items() if row.role == role]

    def rounds(self) -> dict:
        """round -> the archs measured for it."""
        out = {}
        for a, row in self.rows.items():
            if row.role == "round":
                out.setdefault(row.round, []).append(a)
        return out

    def take(self, archs: list, sampler: str, role: str, round_: Optional[int] = None) -> list:
        """Measure the archs that have no row yet; the archs that have one now."""
        got, seconds = measure_archs(self.space, [a for a in archs if a not in self.rows], self.device,
                                     self.settings, self.data, f"{sampler}(seed={self.seed})", role, round_,
                                     self.registry)
        self.rows.update(got)
        self.measured.append(seconds)
        return [a for a in archs if a in self.rows]

    def latencies(self, archs: list) -> np.ndarray:
        return latencies(self.rows, archs)


def _bins_sampled(history: list) -> list:
    """Archs each bin of predicted latency received after round 0, most first (the last round's bin edges)."""
    counts = np.zeros(N_BINS, dtype=int)
    for h in history:
        for b, (_, _, n, _) in enumerate(h["bins"] or []):
            counts[b] += n
    last = next((h["bins"] for h in reversed(history) if h["bins"]), None)
    if last is None:
        return []
    return sorted(({"lo_ms": last[b][0], "hi_ms": last[b][1], "archs": int(counts[b])} for b in range(N_BINS)),
                  key=lambda x: -x["archs"])


def write_build_report(out_dir, space: str, device: str, result: dict) -> list:
    """learning_curve.png (held-out ±10 % accuracy and Spearman vs measured archs) and summary.md."""
    import json

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    h = result["rounds"]
    n = [x["n_measured"] for x in h]
    fig, ax = plt.subplots(figsize=(5, 3.6))
    ax.plot(n, [x["acc10"] for x in h], "o-", label="±10 % accuracy (held-out)")
    ax.plot(n, [x["spearman"] for x in h], "s-", label="Spearman ρ (held-out)")
    ax.axhline(result["target_acc"], color="k", ls=":", lw=0.8, label="target")
    ax.set_xlabel("archs measured (held-out included)")
    ax.set_ylim(min(0.0, min(x["spearman"] for x in h)), 1.02)
    ax.set_title(f"{space} on {device}: {result['model']} ensemble", fontsize=9)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    png = save_png(fig, out / "learning_curve.png", dpi=120)
    bins = "\n".join(f"| {b['lo_ms']:.4g}-{b['hi_ms']:.4g} | {b['archs']} |" for b in result["bins_sampled"])
    figures = {k: result[k] for k in ("acc10", "acc5", "spearman", "kendall", "mape", "n_train", "n_heldout",
                                      "reached", "measure_s", "fit_s")}
    md = validate.write_atomic(out / "summary.md", f"# predictor build: {space} on {device}\n\n| figure (held-out) | value |\n|---|---|\n"
                  + "\n".join(f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |"
                              for k, v in figures.items())
                  + f"\n\n![learning curve](learning_curve.png)\n\n## Archs measured per bin of predicted latency "
                    f"(after round 0)\n\n| bin (ms) | archs |\n|---|---|\n{bins}\n")
    js = validate.write_atomic(out / "build.json", json.dumps(result, indent=1))
    return [png, md, js]
