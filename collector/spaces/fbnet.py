"""The FBNet space as HW-NAS-Bench, HELP and NASFLAT use it on CIFAR-100: 22 searchable layers, 9 ops each.

Macro network (FBNet-v1 widths, the CIFAR strides of HW-NAS-Bench): 3x3 conv stem (16, stride 1); stages
of [1, 4, 4, 4, 4, 4, 1] layers with widths [16, 24, 32, 64, 112, 184, 352] and first-layer strides
[1, 1, 2, 2, 1, 2, 1]; 1x1 conv to 1504; global pooling; linear to 100 classes. kK_eE[_g2] is an
inverted-residual block (1x1 group conv expanding by E, channel shuffle when grouped, KxK depthwise,
1x1 group conv), residual when shapes allow; skip is identity, or 1x1 conv where shape changes.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from .base import bad
from .mobile import Layer, PlanSpace, out_side

OPS = ("k3_e1", "k3_e1_g2", "k3_e3", "k3_e6", "k5_e1", "k5_e1_g2", "k5_e3", "k5_e6", "skip")
LAYERS = (1, 4, 4, 4, 4, 4, 1)
WIDTHS = (16, 24, 32, 64, 112, 184, 352)
STRIDES = (1, 1, 2, 2, 1, 2, 1)
N_LAYERS = sum(LAYERS)


class FBNet(PlanSpace):
    name = "fbnet"
    default_resolution = 32
    num_classes = 100
    graph_vocab = ("input", "output") + OPS

    def parse(self, arch: str) -> tuple:
        ops = tuple(o.strip() for o in arch.split(","))
        if len(ops) != N_LAYERS:
            raise bad(self.name, f"{len(ops)} layers given, expected {N_LAYERS} ops joined by ','", OPS)
        for i, op in enumerate(ops):
            if op not in OPS:
                raise bad(self.name, f"layer {i} has unknown op {op!r}", OPS)
        return ops

    def format(self, ops: Sequence[str]) -> str:
        return ",".join(self.parse(",".join(ops)))

    @property
    def size(self) -> int:
        return len(OPS) ** N_LAYERS

    def sample(self, n: int, rng: np.random.Generator) -> list:
        return [",".join(OPS[i] for i in row) for row in rng.integers(0, len(OPS), size=(n, N_LAYERS))]

    def onehot(self, archs: Sequence[str]) -> np.ndarray:
        index = {op: k for k, op in enumerate(OPS)}
        ids = np.array([[index[o] for o in self.parse(a)] for a in archs], dtype=np.int64).reshape(-1, N_LAYERS)
        out = np.zeros((len(ids), N_LAYERS, len(OPS)), dtype=np.float32)
        np.put_along_axis(out, ids[:, :, None], 1.0, axis=2)
        return out.reshape(len(ids), -1)

    def graph(self, arch: str) -> list:
        return [0] + [2 + OPS.index(o) for o in self.parse(arch)] + [1]

    def plan(self, arch: str, resolution: Optional[int] = None) -> list:
        ops, side = self.parse(arch), self.resolution(arch, resolution)
        plan = [Layer("conv", 3, WIDTHS[0], k=3, hw_in=side, hw=side)]
        cin, i = WIDTHS[0], 0
        for n, width, stride in zip(LAYERS, WIDTHS, STRIDES):
            for j in range(n):
                s = stride if j == 0 else 1
                new = out_side(side, 3, s)
                op = ops[i]
                if op == "skip":
                    plan.append(Layer("skip", cin, width, stride=s, hw_in=side, hw=new))
                else:
                    k, e = int(op[1]), int(op.split("_")[1][1:])
                    plan.append(Layer("mbconv", cin, width, k=k, stride=s, expand=e, groups=2 if op.endswith("g2") else 1,
                                      hw_in=side, hw=new))
                cin, side, i = width, new, i + 1
        plan.append(Layer("conv", cin, 1504, hw_in=side, hw=side))
        plan.append(Layer("linear", 1504, self.num_classes))
        return plan
