"""Building blocks shared by the mobile spaces (FBNet, OFA-MobileNetV3): a network is first a plan, a list of
Layer values with every shape resolved, then either built as torch modules or costed analytically, so the
FLOPs a sampler uses come from the same description as the network that is timed."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from .base import Space


@dataclass(frozen=True)
class Layer:
    """One block: a plain conv (kind='conv'), an inverted-residual block ('mbconv'), FBNet's skip ('skip'),
    or the classifier ('linear'). hw is the output side length."""

    kind: str
    cin: int
    cout: int
    k: int = 1
    stride: int = 1
    expand: int = 1  # mid channels = cin * expand (fbnet) or given by `mid` (ofa)
    mid: Optional[int] = None
    groups: int = 1  # groups of the 1x1 convs (fbnet's _g2 ops)
    expand_conv: bool = True  # the 1x1 expansion exists (OFA's first block, at ratio 1, has none)
    se: bool = False
    act: str = "relu"
    bn: bool = True
    bias: bool = False
    hw_in: int = 1
    hw: int = 1

    @property
    def mid_channels(self) -> int:
        return self.mid if self.mid is not None else self.cin * self.expand

    @property
    def residual(self) -> bool:
        return self.kind == "mbconv" and self.stride == 1 and self.cin == self.cout


def out_side(side: int, k: int, stride: int) -> int:
    return (side + 2 * (k // 2) - k) // stride + 1


def make_divisible(v: float, divisor: int = 8) -> int:
    new = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * v else new


def se_channels(mid: int) -> int:
    return make_divisible(mid // 4)


def plan_flops(plan) -> int:
    """2 x multiply-accumulates of every conv and linear layer (what torch's FlopCounterMode counts)."""
    macs = 0
    for L in plan:
        if L.kind == "conv":
            macs += L.cin * L.cout * L.k * L.k * L.hw * L.hw // L.groups
        elif L.kind == "linear":
            macs += L.cin * L.cout
        elif L.kind == "skip":
            macs += L.cin * L.cout * L.hw * L.hw if (L.stride > 1 or L.cin != L.cout) else 0
        else:
            m = L.mid_channels
            if L.expand_conv:
                macs += L.cin * m * L.hw_in * L.hw_in // L.groups
            macs += m * L.k * L.k * L.hw * L.hw
            if L.se:
                macs += 2 * m * se_channels(m)
            macs += m * L.cout * L.hw * L.hw // L.groups
    return 2 * macs


def build_plan(plan):
    """torch modules for a plan (global pooling goes before the first linear or 1x1 conv on a 1x1 map)."""
    import torch
    from torch import nn

    acts = {"relu": nn.ReLU, "h_swish": nn.Hardswish, "none": nn.Identity}

    class SE(nn.Module):
        def __init__(self, c):
            super().__init__()
            r = se_channels(c)
            self.body = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(c, r, 1), nn.ReLU(), nn.Conv2d(r, c, 1),
                                      nn.Hardsigmoid())

        def forward(self, x):
            return x * self.body(x)

    class Shuffle(nn.Module):
        def __init__(self, g):
            super().__init__()
            self.g = g

        def forward(self, x):
            n, c, h, w = x.shape
            return x.view(n, self.g, c // self.g, h, w).transpose(1, 2).reshape(n, c, h, w)

    class Block(nn.Module):
        def __init__(self, L: Layer):
            super().__init__()
            m, layers = L.mid_channels, []
            if L.kind == "skip":
                if L.stride > 1 or L.cin != L.cout:
                    layers = [nn.Conv2d(L.cin, L.cout, 1, L.stride, bias=False), nn.BatchNorm2d(L.cout), nn.ReLU()]
            else:
                if L.expand_conv:
                    layers += [nn.Conv2d(L.cin, m, 1, groups=L.groups, bias=False), nn.BatchNorm2d(m), acts[L.act]()]
                    if L.groups > 1:
                        layers.append(Shuffle(L.groups))
                layers += [nn.Conv2d(m, m, L.k, L.stride, L.k // 2, groups=m, bias=False), nn.BatchNorm2d(m),
                           acts[L.act]()]
                if L.se:
                    layers.append(SE(m))
                layers += [nn.Conv2d(m, L.cout, 1, groups=L.groups, bias=False), nn.BatchNorm2d(L.cout)]
            self.body = nn.Sequential(*layers)
            self.residual = L.residual

        def forward(self, x):
            y = self.body(x)
            return x + y if self.residual else y

    modules, pooled = [], False
    for L in plan:
        if L.kind in ("mbconv", "skip"):
            modules.append(Block(L))
            continue
        if L.hw == 1 and not pooled:
            modules.append(nn.AdaptiveAvgPool2d(1))
            pooled = True
        if L.kind == "linear":
            modules += [nn.Flatten(), nn.Linear(L.cin, L.cout)]
        else:
            modules.append(nn.Conv2d(L.cin, L.cout, L.k, L.stride, L.k // 2, bias=L.bias))
            modules += [nn.BatchNorm2d(L.cout)] if L.bn else []
            modules.append(acts[L.act]())
    return torch.nn.Sequential(*modules)


class PlanSpace(Space):
    """A space whose networks are plans of Layers: FLOPs and modules both come from `plan(arch)`."""

    def __init__(self, num_classes: Optional[int] = None):
        self.num_classes = num_classes or type(self).num_classes

    def plan(self, arch: str, resolution: Optional[int] = None) -> list:
        raise NotImplementedError

    def flops(self, arch: str, resolution: Optional[int] = None) -> int:
        return plan_flops(self.plan(arch, resolution))

    def layer_flops(self, arch: str) -> list:
        """FLOPs of each layer of the plan, at fixed positions across the space's archs."""
        return [plan_flops([layer]) for layer in self.plan(arch)]

    def analytic(self, arch: str) -> np.ndarray:
        per_layer = self.layer_flops(arch)
        return np.log1p(np.array([sum(per_layer)] + per_layer, dtype=np.float64)).astype(np.float32)

    def proxies(self, arch: str) -> np.ndarray:
        kernels = act = params = 0
        for L in self.plan(arch):
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
        ops = np.array(self.graph(arch))
        counts = [int(np.sum(ops == i)) for i in range(2, len(self.graph_vocab))]
        return np.array([np.log(self.flops(arch)), np.log(act), kernels, np.log(params)] + counts, np.float32)

    def adjacency(self) -> np.ndarray:
        """A chain: input, one node per searchable layer, output."""
        n = len(self.graph(self.sample(1, np.random.default_rng(0))[0]))
        return np.eye(n, k=1, dtype=np.float32)

    def build(self, arch: str, resolution: Optional[int] = None, device: str = "cpu"):
        import torch
        with torch.device(device):
            return build_plan(self.plan(arch, resolution)).eval()
