"""Arch encodings, vectorised over archs; what each means for a space is the space's own (collector.spaces).

- onehot: the space's one-hot op encoding.
- analytic: log FLOPs and per-layer log MACs (the plan every mobile space is built from), so a model sees
  where in the network the work is.
- features: onehot + analytic + proxies, the default for tree, linear and MLP models.
- proxies: hardware-agnostic costs (FLOPs, activation traffic, kernel count, parameters, op counts).
- graph: (adjacency [N, N], node op ids [N]) with ops on nodes: nb201's cell as an 8-node DAG (input,
  6 edge ops, output), fbnet's 22 layers and ofa's 20 blocks (plus the resolution) as chains.

`space` is a Space or its name (resolved once per call); per-arch encodings are cached by (space, arch).
"""
from __future__ import annotations

from functools import lru_cache
from typing import Sequence

import numpy as np

from latkit.collector.spaces import Space, as_space

ENCODINGS = ("onehot", "analytic", "features", "proxies")


def encode(space, archs: Sequence[str], kind: str = "features") -> np.ndarray:
    sp = as_space(space)
    if kind == "onehot":
        return sp.onehot(archs)
    if kind == "analytic":
        return np.stack([_analytic(sp, a) for a in archs]) if len(archs) else np.zeros((0, 1), np.float32)
    if kind == "features":
        extra = np.stack([_extra(sp, a) for a in archs]) if len(archs) else np.zeros((0, 0), np.float32)
        return np.hstack([sp.onehot(archs), extra.reshape(len(archs), -1)])
    if kind == "proxies":
        return np.stack([_proxies(sp, a) for a in archs]) if len(archs) else np.zeros((0, 1), np.float32)
    raise ValueError(f"unknown encoding {kind!r}; choose one of {', '.join(ENCODINGS)}")


@lru_cache(maxsize=200_000)
def _extra(space: Space, arch: str) -> np.ndarray:
    """analytic ++ proxies of one arch, cached together: one lookup per arch on the prediction path."""
    return np.concatenate([_analytic(space, arch), _proxies(space, arch)])


@lru_cache(maxsize=200_000)
def _analytic(space: Space, arch: str) -> np.ndarray:
    return space.analytic(arch)


@lru_cache(maxsize=200_000)
def _proxies(space: Space, arch: str) -> np.ndarray:
    return space.proxies(arch)


def graphs(space, archs: Sequence[str]) -> tuple:
    """(adjacency [N, N] shared by all archs, op ids [n_archs, N], extra [n_archs, k] scalar features)."""
    sp = as_space(space)
    adj = sp.adjacency()
    ops = np.array([sp.graph(a) for a in archs], dtype=np.int64).reshape(len(archs), len(adj))
    extra = encode(sp, archs, "analytic")[:, :1] if len(archs) else np.zeros((0, 1), np.float32)
    return adj, ops, extra
