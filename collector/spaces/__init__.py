"""Search spaces: nb201, fbnet, ofa (`SPACES`: arch encodings for predictors of a space), and zoo (real
networks varied in width, depth and resolution: collected, then predicted as ONNX graphs). Each turns
canonical arch strings into real torch networks."""
from ..errors import LatkitError
from .base import Space, count_flops
from .fbnet import FBNet
from .nb201 import NB201
from .ofa import OFA
from .zoo import Zoo

SPACES = {"nb201": NB201, "fbnet": FBNet, "ofa": OFA}
COLLECTABLE = {**SPACES, "zoo": Zoo}  # what `collect --space` samples from


def get_space(name: str, **options) -> Space:
    """The space called `name` (options such as num_classes go to its constructor)."""
    if not isinstance(name, str) or name not in COLLECTABLE:
        raise LatkitError(f"unknown space {name!r}; known spaces: {', '.join(COLLECTABLE)}")
    return COLLECTABLE[name](**options)


def arch_space(space) -> Space:
    """`as_space`, for a predictor of arch strings: refuses a space without an arch encoding (zoo) in one line
    that says what to fit instead, before any data is read."""
    sp = as_space(space)
    if sp.name not in SPACES:
        raise LatkitError(f"{sp.name} archs have no arch encoding (they differ in structure, not in choices on one "
                          "template); fit a graph model on their ONNX files: latkit predictor fit --space onnx "
                          "--data DIR --device D")
    return sp


def as_space(space) -> Space:
    """`space` itself when it is a Space, else the space of that name: APIs take either, resolve once."""
    return space if isinstance(space, Space) else get_space(space)


__all__ = ["SPACES", "COLLECTABLE", "Zoo", "Space", "arch_space", "as_space", "get_space", "count_flops", "NB201", "FBNet", "OFA"]
