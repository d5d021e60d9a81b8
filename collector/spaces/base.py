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
    graph_vocab: tuple = ()  # node op names of `graph` (0 input, 1 output, then the space's ops)

    def options(self) -> dict:
        """The constructor options that make this space differ from `get_space(name)` (part of export keys)."""
        return {k: v for k, v in sorted(vars(self).items())}

    def __eq__(self, other) -> bool:
        return type(self) is type(other) and self.options() == other.options()

    def __hash__(self) -> int:
        return hash((type(self), tuple(self.options().items())))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.options().items())})"

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

    # -- encodings the predictors use (vectorised over archs in predictor/encodings.py) -------------------
    def analytic(self, arch: str) -> np.ndarray:
        """Log costs of one arch: total FLOPs, then per-layer where the space knows its layers."""
        return np.array([np.log(self.flops(arch))], dtype=np.float32)

    def proxies(self, arch: str) -> np.ndarray:
        """Hardware-agnostic cost proxies of one arch: log FLOPs, log activation traffic, kernel count,
        log parameters, then how many times each op occurs."""
        raise NotImplementedError

    def adjacency(self) -> np.ndarray:
        """The adjacency [N, N] of `graph`, shared by every arch of the space."""
        raise NotImplementedError

    def graph(self, arch: str) -> list:
        """Node op ids (indices into graph_vocab) of one arch, ops on nodes, in the order of `adjacency`."""
        raise NotImplementedError


def count_flops(module, input_shape) -> int:
    import torch
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        module(torch.empty(input_shape, device="meta"))
    return int(counter.get_total_flops())


def bad(space: str, what: str, allowed) -> LatkitError:
    allowed = ", ".join(map(str, allowed)) if not isinstance(allowed, str) else allowed
    return LatkitError(f"invalid {space} arch: {what}; allowed: {allowed}")
