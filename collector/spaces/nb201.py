"""NAS-Bench-201: one cell (4 nodes, 6 edges, 5 ops) repeated in the standard macro network.

Macro network (Dong & Yang, ICLR 2020): 3x3 conv stem (C=16) + BN; three stages of 5 cells with widths
16, 32, 64, joined by ResNet basic blocks with stride 2; BN, ReLU, global pooling, linear classifier.
A `none` edge contributes zero, so it is left out of its node's sum (a node with only `none` inputs is zero).
"""
from __future__ import annotations

import itertools
from functools import lru_cache
from typing import Optional, Sequence

import numpy as np

from .base import Space, bad

OPS = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
EDGES = ((1, 0), (2, 0), (2, 1), (3, 0), (3, 1), (3, 2))  # (to node, from node), in string order


_INDEX = {op: k for k, op in enumerate(OPS)}
# op on node form of the cell: node 0 input, 1..6 the edges (1<-0, 2<-0, 2<-1, 3<-0, 3<-1, 3<-2), 7 output
GRAPH_EDGES = ((0, 1), (0, 2), (1, 3), (0, 4), (1, 5), (2, 6), (3, 6), (4, 7), (5, 7), (6, 7))


@lru_cache(maxsize=1)
def _ids_by_arch() -> dict:
    """Op ids of every canonical arch string: the space is small enough to look them up (~2 MB, 20 ms once)."""
    return {NB201().format(ops): [_INDEX[o] for o in ops] for ops in itertools.product(OPS, repeat=6)}


class NB201(Space):
    name = "nb201"
    default_resolution = 32
    graph_vocab = ("input", "output") + OPS

    def __init__(self, num_classes: int = 10, channels: int = 16, cells_per_stage: int = 5):
        self.num_classes, self.channels, self.cells_per_stage = num_classes, channels, cells_per_stage

    def parse(self, arch: str) -> tuple:
        nodes = arch.strip().split("+")
        if len(nodes) != 3:
            raise bad(self.name, f"{arch!r} has {len(nodes)} node groups separated by '+', expected 3",
                      "|op~0|+|op~0|op~1|+|op~0|op~1|op~2|")
        ops = []
        for j, node in enumerate(nodes, start=1):
            edges = [e for e in node.split("|") if e]
            if not (node.startswith("|") and node.endswith("|")) or len(edges) != j:
                raise bad(self.name, f"node {j} is {node!r}, expected {j} edge(s) like |op~i|", "|op~i| with i < node")
            for i, edge in enumerate(edges):
                op, _, src = edge.partition("~")
                if op not in OPS:
                    raise bad(self.name, f"edge {len(ops) + 1} (node {j} <- node {i}) has unknown op {op!r}", OPS)
                if src != str(i):
                    raise bad(self.name, f"edge {len(ops) + 1} (node {j}) reads node {src!r}, expected {i}",
                              "edges listed in order ~0, ~1, ...")
                ops.append(op)
        return tuple(ops)

    def format(self, ops: Sequence[str]) -> str:
        if len(ops) != 6:
            raise bad(self.name, f"{len(ops)} ops given, expected 6", OPS)
        o = list(ops)
        return f"|{o[0]}~0|+|{o[1]}~0|{o[2]}~1|+|{o[3]}~0|{o[4]}~1|{o[5]}~2|"

    @property
    def size(self) -> int:
        return len(OPS) ** 6

    def enumerate(self) -> list:
        return [self.format(ops) for ops in itertools.product(OPS, repeat=6)]

    def sample(self, n: int, rng: np.random.Generator) -> list:
        idx = rng.choice(self.size, size=n, replace=n > self.size)
        return [self.format([OPS[(int(i) // 5 ** (5 - k)) % 5] for k in range(6)]) for i in idx]

    def onehot(self, archs: Sequence[str]) -> np.ndarray:
        table = _ids_by_arch()
        ids = np.array([table.get(a) or [_INDEX[op] for op in self.parse(a)] for a in archs],
                       dtype=np.int64).reshape(-1, 6)
        out = np.zeros((len(ids), 6, len(OPS)), dtype=np.float32)
        np.put_along_axis(out, ids[:, :, None], 1.0, axis=2)
        return out.reshape(len(ids), -1)

    def flops(self, arch: str, resolution: Optional[int] = None) -> int:
        """Analytic: 2 x the multiply-accumulates of every conv and linear layer (as torch's FlopCounterMode)."""
        ops, r, c = self.parse(arch), self.resolution(arch, resolution), self.channels
        macs = 3 * c * 9 * r * r
        per_op = {"nor_conv_3x3": 9, "nor_conv_1x1": 1}
        for stage in range(3):
            if stage:
                r = (r + 1) // 2
                macs += (c * 2 * c * 9 + 2 * c * 2 * c * 9 + c * 2 * c) * r * r  # conv a, conv b, 1x1 shortcut
                c *= 2
            macs += self.cells_per_stage * sum(per_op.get(op, 0) for op in ops) * c * c * r * r
        return 2 * (macs + c * self.num_classes)

    def proxies(self, arch: str) -> np.ndarray:
        ops = self.parse(arch)
        counts = [ops.count(o) for o in OPS[1:]]
        kernels = 15 * (counts[1] + counts[2] + counts[3]) + 15 * sum(o != "none" for o in ops)
        act = sum(15 * (o != "none") for o in ops)
        params = self.channels ** 2 * (counts[1] + 9 * counts[2])
        return np.array([np.log(self.flops(arch)), np.log1p(act), kernels, np.log1p(params)] + counts, np.float32)

    def adjacency(self) -> np.ndarray:
        a = np.zeros((8, 8), dtype=np.float32)
        for src, dst in GRAPH_EDGES:
            a[src, dst] = 1
        return a

    def graph(self, arch: str) -> list:
        return [0] + [2 + _INDEX[o] for o in self.parse(arch)] + [1]

    def build(self, arch: str, resolution: Optional[int] = None, device: str = "cpu"):
        import torch
        with torch.device(device):
            return _network(self.parse(arch), self.channels, self.cells_per_stage, self.num_classes).eval()


def _network(ops, channels, n_cells, num_classes):
    from torch import nn

    class ReLUConvBN(nn.Sequential):
        def __init__(self, cin, cout, k, stride):
            super().__init__(nn.ReLU(), nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout))

    def make_op(op, c):
        if op == "skip_connect":
            return nn.Identity()
        if op == "nor_conv_1x1":
            return ReLUConvBN(c, c, 1, 1)
        if op == "nor_conv_3x3":
            return ReLUConvBN(c, c, 3, 1)
        return nn.AvgPool2d(3, 1, 1, count_include_pad=False)

    class Cell(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.edges = nn.ModuleDict({f"{t}_{f}": make_op(op, c) for (t, f), op in zip(EDGES, ops) if op != "none"})

        def forward(self, x):
            nodes = [x]
            for t in (1, 2, 3):
                parts = [self.edges[f"{t}_{f}"](nodes[f]) for f in range(t) if f"{t}_{f}" in self.edges]
                nodes.append(sum(parts[1:], parts[0]) if parts else x * 0.0)
            return nodes[3]

    class Reduction(nn.Module):  # ResNet basic block, stride 2
        def __init__(self, cin, cout):
            super().__init__()
            self.a, self.b = ReLUConvBN(cin, cout, 3, 2), ReLUConvBN(cout, cout, 3, 1)
            self.down = nn.Sequential(nn.AvgPool2d(2, 2), nn.Conv2d(cin, cout, 1, bias=False))

        def forward(self, x):
            return self.b(self.a(x)) + self.down(x)

    layers = [nn.Conv2d(3, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels)]
    c = channels
    for stage in range(3):
        if stage:
            layers.append(Reduction(c, c * 2))
            c *= 2
        layers += [Cell(c) for _ in range(n_cells)]
    layers += [nn.BatchNorm2d(c), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, num_classes)]
    return nn.Sequential(*layers)
