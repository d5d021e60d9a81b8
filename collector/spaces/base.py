"""The interface every search space implements: arch strings in, structured forms and real networks out."""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from ..errors import LatkitError


class Space:
    """A NAS search space. Arch strings are canonical: parse(format(x)) == x and format(parse(a)) == a.

    Networks get random weights: latency does not depend on weight values, only on shapes and ops.
    """

    name = ""
    default_resolution = 32
    resolutions = range(16, 513, 4)  # input sides (pixels) a network of the space is built for
    num_classes = 10

    def parse(self, arch: str):
        raise NotImplementedError

    def format(self, structured) -> str:
        raise NotImplementedError

    def validate(self, arch: str) -> str:
        """The canonical form of `arch`, or a LatkitError naming the bad position and the allowed values."""
        return self.format(self.parse(arch))

    def sample(self, n: int, rng: np.random.Generator) -> list:
        """n archs drawn uniformly (with replacement across calls; distinct within one call where possible)."""
        raise NotImplementedError

    def enumerate(self) -> list:
        raise LatkitError(f"space {self.name} is too large to enumerate; sample from it instead")

    @property
    def size(self) -> int:
        raise NotImplementedError

    def build(self, arch: str, resolution: Optional[int] = None):
        """A torch nn.Module (eval mode, random weights) for `arch`."""
        raise NotImplementedError

    def resolution(self, arch: str, resolution: Optional[int] = None) -> int:
        """The input side `arch` is built and exported at: `resolution` (checked), else the default."""
        return self.default_resolution if resolution is None else self.check_resolution(resolution)

    def check_resolution(self, resolution) -> int:
        r = self.resolutions
        if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution not in r:
            raise LatkitError(f"resolution {resolution!r} is not an input side of {self.name}; choose {r.start} to "
                              f"{r[-1]} in steps of {r.step}")
        return resolution

    def at_resolution(self, resolution: int) -> "Space":
        """The space whose archs are all built at `resolution` (this one, where archs do not carry it)."""
        self.check_resolution(resolution)
        return self

    def input_shape(self, arch: str, batch_size: int = 1, resolution: Optional[int] = None) -> tuple:
        r = self.resolution(arch, resolution)
        return (batch_size, 3, r, r)

    def onehot(self, archs: Sequence[str]) -> np.ndarray:
        """One-hot encoding (n_archs x features), vectorised; used by the diverse sampler and predictors."""
        raise NotImplementedError

    def flops(self, arch: str, resolution: Optional[int] = None) -> int:
        """Multiply-accumulates x 2 for one image, counted by torch's FlopCounterMode on meta tensors."""
        return count_flops(self.build(arch, resolution, device="meta"), self.input_shape(arch, 1, resolution))

    def params(self, arch: str) -> int:
        return sum(p.numel() for p in self.build(arch, device="meta").parameters())


def count_flops(module, input_shape) -> int:
    import torch
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        module(torch.empty(input_shape, device="meta"))
    return int(counter.get_total_flops())


def bad(space: str, what: str, allowed) -> LatkitError:
    allowed = ", ".join(map(str, allowed)) if not isinstance(allowed, str) else allowed
    return LatkitError(f"invalid {space} arch: {what}; allowed: {allowed}")
