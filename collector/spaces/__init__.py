"""Search spaces: nb201, fbnet, ofa. Each turns canonical arch strings into real torch networks."""
from ..errors import LatkitError
from .base import Space, count_flops
from .fbnet import FBNet
from .nb201 import NB201
from .ofa import OFA

SPACES = {"nb201": NB201, "fbnet": FBNet, "ofa": OFA}


def get_space(name: str, **options) -> Space:
    """The space called `name` (options such as num_classes go to its constructor)."""
    if name not in SPACES:
        raise LatkitError(f"unknown space {name!r}; known spaces: {', '.join(SPACES)}")
    return SPACES[name](**options)


__all__ = ["SPACES", "Space", "get_space", "count_flops", "NB201", "FBNet", "OFA"]
