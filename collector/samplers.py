"""Choosing which archs to measure, reproducibly from a seed.

- uniform: distinct archs drawn uniformly from the space.
- balanced: ESM-style latency-balanced sampling. A pool (the whole space where it is small, else 20 x n
  uniform draws) is cut into n equal-width bins of a cheap proxy of latency (FLOPs by default, or any
  function of the archs such as a predictor's estimate), and the bins are visited in turn, one random
  arch each, so the sample covers the latency range evenly instead of crowding the middle.
- diverse: k-means (n clusters) over the standardised one-hot encoding of the pool (or any features given);
  the pool arch nearest each centroid is taken, so the sample represents the space's structure. On
  nb201 and fbnet, uniform products of choices, this is no better than uniform; on OFA (depths mask
  blocks) and on continuous encodings it covers the pool markedly better.
"""
from __future__ import annotations

from typing import Callable, Optional

import numpy as np

from .errors import LatkitError, need
from .spaces import Space

SAMPLERS = ("uniform", "balanced", "diverse")
POOL_LIMIT = 20_000


def pool(space: Space, n: int, rng: np.random.Generator) -> list:
    """Candidate archs: the whole space if it is small enough, else distinct uniform draws."""
    if space.size <= POOL_LIMIT:
        return space.enumerate()
    return _distinct(space, min(max(20 * n, 5000), POOL_LIMIT), rng)


def _distinct(space: Space, n: int, rng: np.random.Generator) -> list:
    seen, out = set(), []
    while len(out) < n:
        for a in space.sample(n - len(out), rng):
            if a not in seen:
                seen.add(a)
                out.append(a)
    return out


def sample(space: Space, n: int, sampler: str = "uniform", seed: int = 0,
           proxy: Optional[Callable] = None) -> list:
    """n distinct archs of `space` chosen by `sampler`; the same arguments give the same archs."""
    if sampler not in SAMPLERS:
        raise LatkitError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
    if n < 1 or n > space.size:
        raise LatkitError(f"cannot draw {n} distinct archs from {space.name} ({space.size} archs); choose 1..{space.size}")
    rng = np.random.default_rng(seed)
    if sampler == "uniform" and space.size > POOL_LIMIT:
        return _distinct(space, n, rng)
    return sample_from(space, pool(space, n, rng), n, sampler, seed, proxy)


def sample_from(space: Space, candidates: list, n: int, sampler: str = "uniform", seed: int = 0,
                proxy: Optional[Callable] = None, features: Optional[np.ndarray] = None) -> list:
    """n distinct archs out of `candidates` (e.g. the archs a dataset holds). Only the archs' encodings are
    looked at, never a latency: `proxy` (default FLOPs) ranks them for balanced, `features` (default one-hot)
    places them for diverse."""
    if sampler not in SAMPLERS:
        raise LatkitError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
    if n > len(candidates):
        raise LatkitError(f"cannot choose {n} archs out of {len(candidates)}; lower the number")
    rng = np.random.default_rng(seed)
    if sampler == "uniform":
        return [candidates[i] for i in rng.choice(len(candidates), n, replace=False)]
    if sampler == "balanced":
        values = np.asarray(proxy(candidates) if proxy else [space.flops(a) for a in candidates], dtype=np.float64)
        return [candidates[i] for i in balanced_indices(values, n, rng)]
    KMeans = need("sklearn.cluster", "predict", "the diverse sampler").KMeans
    x = space.onehot(candidates) if features is None else np.asarray(features, dtype=np.float64)
    x = (x - x.mean(0)) / np.where(x.std(0) > 0, x.std(0), 1.0)  # every feature counts alike
    km = KMeans(n_clusters=n, n_init=1, random_state=seed).fit(x)
    return [candidates[i] for i in nearest_distinct(x, km.cluster_centers_)]


def balanced_indices(values: np.ndarray, n: int, rng: np.random.Generator) -> list:
    """n distinct indices spread evenly over the range of `values` (equal-width bins, visited in turn)."""
    edges = np.linspace(values.min(), values.max(), n + 1)
    bins = np.clip(np.searchsorted(edges, values, side="right") - 1, 0, n - 1)
    members = [list(rng.permutation(np.flatnonzero(bins == b))) for b in range(n)]
    chosen = []
    while len(chosen) < n:
        for m in members:
            if m and len(chosen) < n:
                chosen.append(int(m.pop()))
    return chosen


def nearest_distinct(x: np.ndarray, centers: np.ndarray) -> list:
    """For each centre in turn, the nearest row of x not already taken (ties: the lowest index). Distances
    come a block of centres at a time, so memory stays O(len(x)) however many centres there are."""
    pairwise_distances_chunked = need("sklearn.metrics", "predict", "the diverse sampler").pairwise_distances_chunked
    taken, out = np.zeros(len(x), dtype=bool), []
    for block in pairwise_distances_chunked(centers, x, working_memory=64):
        for dist in block:
            i = int(np.argmin(np.where(taken, np.inf, dist)))
            taken[i] = True
            out.append(i)
    return out
