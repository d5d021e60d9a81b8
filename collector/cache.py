"""Bounded model caches (the host's export cache, each device's model folder): least recently used first,
and before them the models already measured everywhere they are needed; never a model still to be timed."""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

from . import validate

log = logging.getLogger("latkit")
DEFAULT_CACHE = Path(os.environ.get("LATKIT_CACHE", Path.home() / ".cache" / "latkit" / "exports"))  # export cache


@dataclass(frozen=True)
class CachedFile:
    sha256: str
    size: int
    last_used: float  # seconds since the epoch


def max_bytes(max_gb: Optional[float]) -> Optional[int]:
    """--cache-max-gb as bytes (None: unbounded)."""
    if max_gb is None:
        return None
    validate.number(max_gb, "--cache-max-gb", 0.0)
    return int(max_gb * 2 ** 30)


def evictions(files: Iterable[CachedFile], limit: int, keep: set = frozenset(), first: set = frozenset()) -> list:
    """The files to delete to bring the total to `limit` bytes: those in `first` (done everywhere), then the
    rest, each least recently used first; `keep` (still to be timed) is never chosen, even over the limit."""
    files = list(files)
    total = sum(f.size for f in files)
    order = sorted((f for f in files if f.sha256 not in keep), key=lambda f: (f.sha256 not in first, f.last_used))
    out = []
    for f in order:
        if total <= limit:
            break
        out.append(f)
        total -= f.size
    if total > limit:
        log.warning("model cache holds %.2f GB of models still to be timed, over its bound of %.2f GB",
                    total / 2 ** 30, limit / 2 ** 30)
    return out


def host_files(cache: Path) -> list:
    """The export cache's model files; last use = the newest mtime of the index entries naming them."""
    used: dict = {}
    for index in (cache / "index").glob("*.json"):
        try:
            sha, t = json.loads(index.read_text())["sha256"], index.stat().st_mtime
        except (OSError, ValueError, KeyError, TypeError):
            continue
        used[sha] = max(used.get(sha, 0.0), t)
    out = []
    for path in cache.iterdir():
        sha = path.name.split(".")[0]
        if path.is_file() and not path.name.startswith(".") and len(sha) == 64:
            st = path.stat()
            out.append(CachedFile(sha, st.st_size, used.get(sha, st.st_mtime)))
    return out


def prune_host(cache: Path, max_gb: Optional[float], keep: set = frozenset(), first: set = frozenset()) -> int:
    """Bound the export cache at `cache` to `max_gb`; returns the bytes freed. An index entry whose file is
    gone is a miss, so an evicted arch is exported again when it is next asked for."""
    limit = max_bytes(max_gb)
    if limit is None or not cache.is_dir():
        return 0
    freed = 0
    for f in evictions(host_files(cache), limit, keep, first):
        for path in cache.glob(f"{f.sha256}.*"):
            path.unlink(missing_ok=True)
        freed += f.size
    if freed:
        log.info("export cache: evicted %.1f MB to stay under %.2f GB", freed / 2 ** 20, max_gb)
    return freed
