"""The model zoo as a space to collect from: real networks of torchvision's families, varied in width, depth
and input resolution (collector/zoo.py names and builds them), so `latkit collect --space zoo` measures
thousands of distinct real graphs for the any-model predictor (`predictor fit --space onnx`).

An arch is a zoo name, e.g. `efficientnet_b0[depth=0.75,width=1.25]@160`; like an ofa arch it carries its
input side. The space is the grid below: every family with width / depth variants (zoo.VARIANTS) at each
multiplier it has, plus squeezenet and googlenet, at input sides 64-224 in steps of 16: 2,189 networks, no two
alike (tests/test_zoo_space.py builds them all on the meta device and compares their layers). Any other zoo name
(the detection backbones, vit, other multipliers) can be exported with `zoo.export` and
collected with `--models`.

It has no arch encoding (one-hot, proxies, cell graph): its archs differ in structure, not in choices
along one template, so predictors read their exported graphs instead (`--space onnx`).
"""
from __future__ import annotations

import itertools
from typing import Optional, Sequence

import numpy as np

from .. import zoo
from ..errors import LatkitError
from .base import Space, count_flops

WIDTHS = DEPTHS = (0.5, 0.75, 1.0, 1.25)
# resnet18 has 2 blocks per stage: 0.75 and 1.25 would round back to 2, the family itself
DEPTH_GRID = {"resnet18": (0.5, 1.0, 1.5, 2.0)}
RESOLUTIONS = range(64, 225, 16)
PLAIN = ("squeezenet1_0", "squeezenet1_1", "googlenet")  # resolution variants only
# variants of another family's: mnasnet0_5 is mnasnet1_0 at width 0.5, efficientnet_b1 is b0 at depth 1.1
# (b1 x 0.75 = b0, b1 = b0 x 1.25 once blocks are rounded); nameable, but not in the grid
ALIASED = ("mnasnet0_5", "efficientnet_b1")


def _family_names(family: str, resolution: int) -> list:
    keys = zoo.VARIANTS.get(family, ())
    widths = WIDTHS if "width" in keys else (1.0,)
    depths = DEPTH_GRID.get(family, DEPTHS) if "depth" in keys else (1.0,)
    return [zoo.ZooModel(family, tuple((k, v) for k, v in (("depth", d), ("width", w)) if v != 1.0), resolution).name
            for w in widths for d in depths]


class Zoo(Space):
    name = "zoo"
    default_resolution = zoo.RESOLUTION
    resolutions = range(32, 2049)  # what a named arch may carry; the sampled grid is RESOLUTIONS
    num_classes = 1000

    def __init__(self, resolution: Optional[int] = None):
        self.fixed = None if resolution is None else self.check_resolution(resolution)

    def options(self) -> dict:
        return {}  # `fixed` narrows sampling; an arch carries its resolution anyway

    def at_resolution(self, resolution: int) -> "Zoo":
        return Zoo(resolution)

    def parse(self, arch: str) -> zoo.ZooModel:
        if not isinstance(arch, str):
            raise LatkitError(f"invalid zoo arch: {type(arch).__name__}, expected a zoo name such as resnet18@160")
        return zoo.parse(arch)

    def format(self, structured: zoo.ZooModel) -> str:
        return structured.name

    def enumerate(self) -> list:
        sides = (self.fixed,) if self.fixed else RESOLUTIONS
        families = [f for f in zoo.ZOO if (f in zoo.VARIANTS or f in PLAIN) and f not in ALIASED]
        return [n for f, r in itertools.product(families, sides) for n in _family_names(f, r)]

    @property
    def size(self) -> int:
        return len(self.enumerate())

    def sample(self, n: int, rng: np.random.Generator) -> list:
        names = self.enumerate()
        return [names[int(i)] for i in rng.choice(len(names), size=n, replace=n > len(names))]

    def resolution(self, arch: str, resolution: Optional[int] = None) -> int:
        r, asked = self.parse(arch).resolution, resolution if resolution is not None else self.fixed
        if asked is not None and asked != r:
            raise LatkitError(f"zoo arch {arch} is built at {r} but resolution {asked} was asked; a zoo arch carries "
                              f"its input side (@{asked}), so leave the resolution out or name archs at @{asked}")
        return r

    def build(self, arch: str, resolution: Optional[int] = None, device: str = "cpu"):
        import torch
        with torch.device(device):
            return zoo.build(arch, self.resolution(arch, resolution))

    def flops(self, arch: str, resolution: Optional[int] = None) -> int:
        return count_flops(self.build(arch, resolution, device="meta"), self.input_shape(arch, 1, resolution))

    def onehot(self, archs: Sequence[str]) -> np.ndarray:
        """Family one-hot, then width, depth and input side (relative to 224): for the diverse sampler."""
        fams = list(zoo.ZOO)
        rows = []
        for a in archs:
            m = self.parse(a)
            kw = dict(m.kwargs)
            rows.append(np.concatenate([np.eye(len(fams), dtype=np.float32)[fams.index(m.family)],
                                        [kw.get("width", 1.0), kw.get("depth", 1.0), m.resolution / 224]]))
        return np.stack(rows).astype(np.float32) if rows else np.zeros((0, len(fams) + 3), np.float32)

    def _no_encoding(self, *_):
        raise LatkitError("zoo archs have no arch encoding (they differ in structure, not in choices on one "
                          "template); fit a graph model on their ONNX files: latkit predictor fit --space onnx")

    analytic = proxies = graph = _no_encoding

    def adjacency(self) -> np.ndarray:
        self._no_encoding()
