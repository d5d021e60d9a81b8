"""ESM's "sample where the surrogate is weakest", one sampler for `predictor fit` (esm.py) and `predictor build`
(build.py): the candidates are split into bins of predicted latency; each bin gets a share of the batch in
proportion to the relative error the surrogate made there on the previous batch (measured before it joined
training), and within a bin the archs the ensemble's members dispute most are taken (a single model, which
has no spread: a random draw within the bin; and before any error is known, a uniform draw).

The binning is build's: N_BINS quantile bins of the candidates' predicted latency, the same edges for the
errors and the draw, so every bin holds archs to draw (edges from the batch's own predictions, as fit had,
leave bins of the pool with no error and skew the draw towards where the batch happened to fall). Five bins,
not eight: a bin's error is a mean over the batch archs in it, and at build's default batch of 20 five bins
keep 4 archs each where eight kept 2-3, often one or none; fit's batches (>= 30 archs) could afford more,
but one binning keeps the two loops' figures comparable.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

N_BINS = 5


def _edges(pred_pool: np.ndarray) -> np.ndarray:
    return np.quantile(pred_pool, np.linspace(0, 1, N_BINS + 1))


def _bin(pred: np.ndarray, edges: np.ndarray) -> np.ndarray:
    return np.clip(np.searchsorted(edges, pred, side="right") - 1, 0, N_BINS - 1)


def bin_errors(pred: np.ndarray, err: np.ndarray, pred_pool: np.ndarray) -> list:
    """Per bin of predicted latency (quantiles of `pred_pool`, the candidates the batch came from): [lo_ms,
    hi_ms, archs, mean relative error or None] of a measured batch predicted `pred` with errors `err`."""
    edges = _edges(pred_pool)
    idx = _bin(np.asarray(pred), edges)
    return [[float(edges[b]), float(edges[b + 1]), int(np.sum(idx == b)),
             float(err[idx == b].mean()) if np.any(idx == b) else None] for b in range(N_BINS)]


def _quota(k: int, bins: Optional[list]) -> np.ndarray:
    """Archs per bin: in proportion to the bin's error (a bin without one: the largest known), each bin keeping
    a little weight; without errors yet (the first weak-spot batch), equal shares."""
    errs = [b[3] for b in bins] if bins else []
    known = [e for e in errs if e is not None]
    w = np.array([(e if e is not None else (max(known) if known else 1.0)) for e in errs] or [1.0] * N_BINS)
    w = w + 0.1 * w.mean() + 1e-9
    quota = np.floor(k * w / w.sum()).astype(int)
    for b in np.argsort(-w)[: k - quota.sum()]:
        quota[b] += 1
    return quota


def weak_spots(pred: np.ndarray, k: int, bins: Optional[list], rng: np.random.Generator,
               spread: Optional[np.ndarray] = None) -> list:
    """Indices of k candidates, given their predicted latency `pred` (and, from an ensemble, the relative
    `spread` of its members), and the previous batch's `bin_errors` (None: none yet)."""
    pred = np.asarray(pred)
    if k <= 0 or not len(pred):
        return []
    if bins is None and spread is None:  # nothing yet says where the surrogate is weak: a uniform draw
        return rng.choice(len(pred), min(k, len(pred)), replace=False).tolist()
    # most disputed first; without a spread, a random order (the draw within each bin)
    order = np.argsort(-np.asarray(spread), kind="stable") if spread is not None else rng.permutation(len(pred))
    idx = _bin(pred, _edges(pred))[order]
    out = []
    for b, q in enumerate(_quota(k, bins)):
        out += order[idx == b][:q].tolist()
    if len(out) < k:  # a bin with fewer archs than its quota: fill in the same order from the others
        chosen = set(out)
        out += [int(i) for i in order if i not in chosen][: k - len(out)]
    return out
