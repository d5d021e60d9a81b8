"""Arch encodings, vectorised per space: one-hot ops, analytic costs, and graphs for the GNN.

- onehot: the space's one-hot op encoding.
- analytic: log FLOPs and per-layer log MACs (the plan every mobile space is built from; per-edge costs for
  nb201), so a model sees where in the network the work is.
- features: onehot + analytic, the default for tree, linear and MLP models.
- graph: (adjacency [N, N], node op ids [N]) with ops on nodes: nb201's cell as an 8-node DAG (input,
  6 edge ops, output), fbnet's 22 layers and ofa's 20 blocks (plus the resolution) as chains.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Sequence

import numpy as np

from latkit.collector.spaces import get_space
from latkit.collector.spaces.mobile import plan_flops

ENCODINGS = ("onehot", "analytic", "features", "proxies")


def encode(space: str, archs: Sequence[str], kind: str = "features") -> np.ndarray:
    if kind == "onehot":
        return get_space(space).onehot(archs)
    if kind == "analytic":
        return np.stack([_analytic(space, a) for a in archs]) if len(archs) else np.zeros((0, 1), np.float32)
    if kind == "features":
        extra = np.stack([_extra(space, a) for a in archs]) if len(archs) else np.zeros((0, 0), np.float32)
        return np.hstack([encode(space, archs, "onehot"), extra.reshape(len(archs), -1)])
    if kind == "proxies":
        return np.stack([_proxies(space, a) for a in archs]) if len(archs) else np.zeros((0, 1), np.float32)
    raise ValueError(f"unknown encoding {kind!r}; choose one of {', '.join(ENCODINGS)}")


@lru_cache(maxsize=200_000)
def _extra(space: str, arch: str) -> np.ndarray:
    """analytic ++ proxies of one arch, cached together: one lookup per arch on the prediction path."""
    return np.concatenate([_analytic(space, arch), _proxies(space, arch)])


@lru_cache(maxsize=200_000)
def _analytic(space: str, arch: str) -> np.ndarray:
    s = get_space(space)
    if space == "nb201":
        return np.array([np.log(s.flops(arch))], dtype=np.float32)
    plan = s.plan(arch)
    per_layer = [plan_flops([layer]) for layer in plan]
    if space == "ofa":  # blocks beyond a stage's depth are absent: pad to 20 blocks, in stage order
        d = s.parse(arch)["d"]
        blocks, it = [], iter(per_layer[2:-3])
        for depth in d:
            stage = [next(it) for _ in range(depth)]
            blocks += stage + [0] * (4 - depth)
        per_layer = per_layer[:2] + blocks + per_layer[-3:]
    return np.log1p(np.array([sum(per_layer)] + per_layer, dtype=np.float64)).astype(np.float32)


@lru_cache(maxsize=200_000)
def _proxies(space: str, arch: str) -> np.ndarray:
    """Hardware-agnostic cost proxies, one per way a device can be bound: log FLOPs (compute), log
    activation traffic (memory), kernel count (launch overhead, which rules GPUs at small batch), log
    parameters, and how many times each op type occurs."""
    s = get_space(space)
    if space == "nb201":
        ops = s.parse(arch)
        counts = [ops.count(o) for o in ("skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")]
        kernels = 15 * (counts[1] + counts[2] + counts[3]) + 15 * sum(o != "none" for o in ops)
        act = sum(15 * (o != "none") for o in ops)
        params = s.channels ** 2 * (counts[1] + 9 * counts[2])
        return np.array([np.log(s.flops(arch)), np.log1p(act), kernels, np.log1p(params)] + counts, np.float32)
    plan = s.plan(arch)
    kernels = act = params = 0
    for L in plan:
        if L.kind == "conv":
            kernels, act, params = kernels + 1, act + L.cout * L.hw ** 2, params + L.cin * L.cout * L.k ** 2
        elif L.kind == "linear":
            kernels, params = kernels + 1, params + L.cin * L.cout
        elif L.kind == "skip":
            if L.stride > 1 or L.cin != L.cout:
                kernels, act, params = kernels + 1, act + L.cout * L.hw ** 2, params + L.cin * L.cout
        else:
            m = L.mid_channels
            kernels += 2 + L.expand_conv + 2 * L.se + (L.groups > 1) + L.residual
            act += (m * L.hw_in ** 2 if L.expand_conv else 0) + m * L.hw ** 2 + L.cout * L.hw ** 2
            params += (L.cin * m // L.groups if L.expand_conv else 0) + m * L.k ** 2 + m * L.cout // L.groups
    vocab = graph_vocab(space)[2:]
    ops = graphs(space, [arch])[1][0]
    counts = [int(np.sum(ops == i + 2)) for i in range(len(vocab))]
    return np.array([np.log(s.flops(arch)), np.log(act), kernels, np.log(params)] + counts, np.float32)


# ------------------------------------------------------------------------------------------- graphs

NB201_OPS = ("input", "output", "none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
FBNET_OPS = ("input", "output", "k3_e1", "k3_e1_g2", "k3_e3", "k3_e6", "k5_e1", "k5_e1_g2", "k5_e3", "k5_e6", "skip")
OFA_OPS = ("input", "output", "absent") + tuple(f"k{k}_e{e}" for k in (3, 5, 7) for e in (3, 4, 6))


def _nb201_adjacency() -> np.ndarray:
    """Op-on-node form of the cell: node 0 input, 1..6 the edges (1<-0, 2<-0, 2<-1, 3<-0, 3<-1, 3<-2), 7 output."""
    a = np.zeros((8, 8), dtype=np.float32)
    for src, dst in [(0, 1), (0, 2), (1, 3), (0, 4), (1, 5), (2, 6), (3, 6), (4, 7), (5, 7), (6, 7)]:
        a[src, dst] = 1
    return a


def graph_vocab(space: str) -> tuple:
    return {"nb201": NB201_OPS, "fbnet": FBNET_OPS, "ofa": OFA_OPS}[space]


def adjacency(space: str) -> np.ndarray:
    """The adjacency shared by every arch of the space (absent blocks stay as 'absent' nodes)."""
    if space == "nb201":
        return _nb201_adjacency()
    return np.eye({"fbnet": 24, "ofa": 22}[space], k=1, dtype=np.float32)


def graphs(space: str, archs: Sequence[str]) -> tuple:
    """(adjacency [N, N] shared by all archs, op ids [n_archs, N], extra [n_archs, k] scalar features)."""
    s = get_space(space)
    vocab = {op: i for i, op in enumerate(graph_vocab(space))}
    if space in ("nb201", "fbnet"):
        ops = np.array([[0] + [vocab[o] for o in s.parse(a)] + [1] for a in archs], dtype=np.int64)
    else:
        rows = []
        for a in archs:
            p = s.parse(a)
            blocks = [vocab[f"k{p['ks'][b]}_e{p['e'][b]}"] if b % 4 < p["d"][b // 4] else vocab["absent"]
                      for b in range(20)]
            rows.append([0] + blocks + [1])
        ops = np.array(rows, dtype=np.int64)
    extra = encode(space, archs, "analytic")[:, :1] if len(archs) else np.zeros((0, 1), np.float32)
    adj = adjacency(space)
    return adj, ops.reshape(len(archs), len(adj)), extra
