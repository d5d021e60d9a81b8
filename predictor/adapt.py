"""`latkit predictor adapt`: few-shot for a newly registered device, live.

1. Pretrain (predictor/transfer.py, source bank + proxies, no GNN so it fits in a minute) on every device of
   the shipped HELP table of the space and of any latkit datasets given as `sources` (their ok rows).
2. Choose `n` archs with the encoding-based sampler (k-means over the source bank and proxies): no latency
   of the new device exists yet. The choice is stable in `n` only up to k-means; rows already measured
   (role "adapt") are reused and count towards `n`, so a re-run with a larger n measures only new archs.
3. Measure them on the device (lease, store, resume), fit FewShot, save it; the expected accuracy is the
   out-of-fold Spearman and +-10 % accuracy of 5-fold cross-validation on the n measured archs.
"""
from __future__ import annotations

import time
from typing import Optional, Sequence

import numpy as np
from sklearn.frozen import FrozenEstimator
from sklearn.model_selection import KFold, cross_val_predict

from latkit.collector import validate
from latkit.collector.dataset import HELP_DIR
from latkit.collector.devices import Registry
from latkit.collector.errors import LatkitError
from latkit.collector.job import Settings

from .data import LatencyTable
from .live import job_settings, latencies, measure_archs, own_rows
from .metrics import report
from .transfer import FewShot, Pretrained

ROLE = "adapt"


def source_table(space: str, sources: Sequence = ()) -> tuple:
    """(the HELP table of `space` joined with the latkit datasets in `sources`, the HELP archs: the pool)."""
    table = LatencyTable(HELP_DIR / f"{space}_latency.parquet", space)
    pool = table.common_archs(table.devices)
    for path in sources:
        table = table.join(LatencyTable(path, space))
    return table, pool


def adapt(device: str, space: str = "nb201", n: int = 20, sources: Sequence = (), data="latkit-data",
          settings: Optional[Settings] = None, seed: int = 0, registry: Optional[Registry] = None) -> tuple:
    """Returns (fitted FewShot, report dict with the cross-validated expected accuracy)."""
    validate.whole(n, "--n", lo=5)
    settings = job_settings(settings)
    reg = registry or Registry()
    reg.get(device)
    t0 = time.perf_counter()
    table, pool = source_table(space, sources)
    names = [d for d in table.devices if d != device]
    pre = Pretrained(space, source_samples=900, use_gnn=False, random_state=seed, n_jobs=-1)
    pre.fit(table, names, pool)
    pretrain_s = time.perf_counter() - t0
    rows = own_rows(data, device, space, settings, (ROLE,))
    have = [a for a in rows if a in pre.pool_index_]
    chosen = have + [a for a in pre.choose(n + len(have)) if a not in rows][: max(0, n - len(have))]
    got, measure_s = measure_archs(space, [a for a in chosen if a not in rows], device, settings, data,
                                   f"diverse-bank(seed={seed})", ROLE, registry=reg)
    rows.update(got)
    archs = [a for a in chosen if a in rows]
    if len(archs) < 5:
        raise LatkitError(f"only {len(archs)} archs measured ok on {device}; see latkit data show {data}")
    y = latencies(rows, archs)
    model = FewShot(FrozenEstimator(pre))
    oof = cross_val_predict(model, archs, y, cv=KFold(min(5, len(archs)), shuffle=True, random_state=seed))
    cv = report(oof, y)
    model.fit(archs, y)
    return model, {"device": device, "space": space, "n": len(archs), "sources": names,
                   "cv_spearman": cv["spearman"], "cv_acc10": cv["acc10"], "cv_mape": cv["mape"],
                   "pretrain_s": pretrain_s, "measure_s": measure_s, "seconds": time.perf_counter() - t0}
