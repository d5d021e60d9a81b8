"""OFA-MobileNetV3 (width 1.0, Cai et al., ICLR 2020): 5 stages x up to 4 blocks; per block a kernel size
(3, 5, 7) and expand ratio (3, 4, 6); per stage a depth (2, 3, 4); input resolution 128-224 step 4.

Arch: compact JSON, keys in order, e.g. {"ks":[...20],"e":[...20],"d":[...5],"r":224}. Blocks beyond a
stage's depth still carry values (as in OFA) but are not built. Macro network: 3x3 conv (16, stride 2,
h-swish); a 3x3 depthwise block 16->16; stages of widths [24, 40, 80, 112, 160], strides [2, 2, 2, 1, 2],
activations relu, relu, h-swish, h-swish, h-swish, squeeze-excite in stages 2, 4, 5; 1x1 conv to 960;
global pooling; 1x1 conv to 1280 (no BN); linear to 1000 classes.
"""
from __future__ import annotations

import json
from typing import Optional, Sequence

import numpy as np

from ..errors import LatkitError
from .base import bad
from .mobile import Layer, PlanSpace, make_divisible, out_side

KS, ES, DS = (3, 5, 7), (3, 4, 6), (2, 3, 4)
RESOLUTIONS = range(128, 225, 4)
WIDTHS = (24, 40, 80, 112, 160)
STRIDES = (2, 2, 2, 1, 2)
ACTS = ("relu", "relu", "h_swish", "h_swish", "h_swish")
SE = (False, True, False, True, True)
N_BLOCKS = 20


class OFA(PlanSpace):
    """The arch string carries the input side (r), so the exported input always agrees with the stored arch:
    a resolution that contradicts an arch's r is refused, and `at_resolution(R)` is the space of archs with
    r = R (what `latkit collect --space ofa --resolution R` samples from)."""

    name = "ofa"
    default_resolution = 224
    resolutions = RESOLUTIONS
    num_classes = 1000
    graph_vocab = ("input", "output", "absent") + tuple(f"k{k}_e{e}" for k in KS for e in ES)

    def __init__(self, num_classes: Optional[int] = None, resolution: Optional[int] = None):
        super().__init__(num_classes)
        self.fixed = None if resolution is None else self.check_resolution(resolution)

    def options(self) -> dict:
        """num_classes only: `fixed` narrows sampling, and an arch carries its resolution anyway."""
        return {"num_classes": self.num_classes}

    def at_resolution(self, resolution: int) -> "OFA":
        return OFA(self.num_classes, resolution)

    def parse(self, arch: str) -> dict:
        try:
            d = json.loads(arch)
        except ValueError as e:
            raise bad(self.name, f"not JSON ({e})", '{"ks":[20 x 3|5|7],"e":[20 x 3|4|6],"d":[5 x 2|3|4],"r":128-224}')
        if not isinstance(d, dict) or set(d) != {"ks", "e", "d", "r"}:
            raise bad(self.name, f"keys {sorted(d) if isinstance(d, dict) else type(d).__name__}, expected ks, e, d, r",
                      "ks, e, d, r")
        for key, n, allowed in (("ks", N_BLOCKS, KS), ("e", N_BLOCKS, ES), ("d", 5, DS)):
            v = d[key]
            if not isinstance(v, list) or len(v) != n:
                raise bad(self.name, f"{key} has {len(v) if isinstance(v, list) else 'no'} values, expected {n}", allowed)
            for i, x in enumerate(v):
                if x not in allowed:
                    raise bad(self.name, f"{key}[{i}] = {x!r} is out of range", allowed)
        if isinstance(d["r"], bool) or not isinstance(d["r"], int) or d["r"] not in RESOLUTIONS:
            raise bad(self.name, f"r = {d['r']!r} is out of range", "128 to 224 in steps of 4")
        return {"ks": list(d["ks"]), "e": list(d["e"]), "d": list(d["d"]), "r": d["r"]}

    def format(self, s: dict) -> str:
        return json.dumps({"ks": s["ks"], "e": s["e"], "d": s["d"], "r": s["r"]}, separators=(",", ":"))

    @property
    def size(self) -> int:
        # distinct networks: per stage sum over depth of (3 x 3)^depth, times the resolutions
        per_stage = sum(9 ** d for d in DS)
        return per_stage ** 5 * (1 if self.fixed else len(RESOLUTIONS))

    def sample(self, n: int, rng: np.random.Generator) -> list:
        return [self.format({"ks": [int(x) for x in rng.choice(KS, N_BLOCKS)], "e": [int(x) for x in rng.choice(ES, N_BLOCKS)],
                             "d": [int(x) for x in rng.choice(DS, 5)], "r": self.fixed or int(rng.choice(RESOLUTIONS))})
                for _ in range(n)]

    def resolution(self, arch: str, resolution: Optional[int] = None) -> int:
        r, asked = self.parse(arch)["r"], resolution if resolution is not None else self.fixed
        if asked is not None and asked != r:
            raise LatkitError(f"ofa arch has r={r} but resolution {asked} was asked; an ofa arch carries its input "
                              f"side, so leave the resolution out or give archs with r={asked}")
        return r

    def onehot(self, archs: Sequence[str]) -> np.ndarray:
        """ks and e one-hot per block (all zero for blocks beyond the stage's depth: they are not built),
        depth one-hot per stage, resolution one-hot."""
        rows = []
        for a in archs:
            s = self.parse(a)
            active = np.array([j < s["d"][i] for i in range(5) for j in range(4)], dtype=np.float32)[:, None]
            ks = np.eye(3, dtype=np.float32)[[KS.index(k) for k in s["ks"]]] * active
            e = np.eye(3, dtype=np.float32)[[ES.index(x) for x in s["e"]]] * active
            d = np.eye(3, dtype=np.float32)[[DS.index(x) for x in s["d"]]]
            r = np.eye(len(RESOLUTIONS), dtype=np.float32)[RESOLUTIONS.index(s["r"])]
            rows.append(np.concatenate([ks.ravel(), e.ravel(), d.ravel(), r]))
        return np.stack(rows) if rows else np.zeros((0, 2 * 3 * N_BLOCKS + 15 + len(RESOLUTIONS)), np.float32)

    def layer_flops(self, arch: str) -> list:
        """Blocks beyond a stage's depth are absent: zero FLOPs at their place (20 blocks, in stage order)."""
        per_layer, blocks = super().layer_flops(arch), []
        it = iter(per_layer[2:-3])
        for depth in self.parse(arch)["d"]:
            blocks += [next(it) for _ in range(depth)] + [0] * (4 - depth)
        return per_layer[:2] + blocks + per_layer[-3:]

    def graph(self, arch: str) -> list:
        p, vocab = self.parse(arch), self.graph_vocab
        return [0] + [vocab.index(f"k{p['ks'][b]}_e{p['e'][b]}") if b % 4 < p["d"][b // 4] else 2
                      for b in range(N_BLOCKS)] + [1]

    def plan(self, arch: str, resolution: Optional[int] = None) -> list:
        s = self.parse(arch)
        side = out_side(self.resolution(arch, resolution), 3, 2)
        plan = [Layer("conv", 3, 16, k=3, stride=2, act="h_swish", hw=side),
                Layer("mbconv", 16, 16, k=3, mid=16, expand_conv=False, act="relu", hw_in=side, hw=side)]
        cin = 16
        for i, (width, stride, act, se) in enumerate(zip(WIDTHS, STRIDES, ACTS, SE)):
            for j in range(s["d"][i]):
                b, st = 4 * i + j, stride if j == 0 else 1
                new = out_side(side, s["ks"][b], st)
                plan.append(Layer("mbconv", cin, width, k=s["ks"][b], stride=st, mid=make_divisible(cin * s["e"][b]),
                                  se=se, act=act, hw_in=side, hw=new))
                cin, side = width, new
        plan += [Layer("conv", cin, 960, act="h_swish", hw_in=side, hw=side),
                 Layer("conv", 960, 1280, act="h_swish", bn=False, hw_in=1, hw=1),
                 Layer("linear", 1280, self.num_classes)]
        return plan
