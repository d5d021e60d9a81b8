"""What the graph latency models share: X as ONNX files or encoded graphs, the model file, their ranges.

    from latkit.predictor.kernels import KernelAdditive
    m = KernelAdditive().fit(["a.onnx", "b.onnx", ...], latency_ms)     # or encoded Graphs (predictor/graphs.py)
    mean_ms, std_ms = m.predict(["mine.onnx"], return_std=True)
    m.save("graphs-local.latkit-model"); m2 = models.load("graphs-local.latkit-model")

X is a sequence of .onnx paths and/or `graphs.Graph` objects (one 1-D list, or a one-column 2-D array); y is
latency in ms (> 0). Paths are encoded once per (path, size, mtime) in a bounded cache. Models are
scikit-learn regressors (parameters in __init__ only, learned state ending in '_', `fit` starts afresh).

Model files: the data-only `.latkit-model` format of predictor/modelfile.py (JSON + .npy, read with its
bounds), kinds "graph-flops", "graph-kernels" and "graph-gnn", registered in predictor/models.py's KINDS, so
`models.load` (the CLI's `predict --model`) reads them like every other kind. Hyperparameters are checked
against `LIMITS` (as predictor/limits.py does for arch models) on save and before anything is built from a file.

Every model keeps the range of its training graphs (`domain_`: FLOPs, kernel count, kernel types seen; saved
in the file), and `outside(X)` says, per graph, where a graph lies beyond it: a prediction there is an
extrapolation, whatever its std says (the members of an ensemble can agree on a wrong extrapolation).
"""
from __future__ import annotations

import os
from collections import OrderedDict

import numpy as np
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.utils.validation import check_is_fitted

from latkit.collector.errors import LatkitError

from . import limits, modelfile
from .base import latencies
from .graphs import OPS, Graph, encode

KINDS = ("graph-flops", "graph-kernels", "graph-gnn")
_SEED = limits.whole(*limits.SEED)
LIMITS = {
    "graph-flops": {"random_state": limits.whole(*limits.SEED, none=True)},
    "graph-kernels": {"n_members": limits.whole(1, 100), "n_estimators": limits.whole(1, 20_000),
                      "learning_rate": limits.number(0, 10, lo_open=True), "num_leaves": limits.whole(2, 4096),
                      "backfit_rounds": limits.whole(0, 100), "random_state": _SEED,
                      "n_jobs": limits.THREADS},
    "graph-gnn": {"hidden": limits.whole(1, 1024), "layers": limits.whole(1, 16), "epochs": limits.whole(0, 100_000),
                  "lr": limits.number(0, 10, lo_open=True), "batch_size": limits.whole(1, 100_000),
                  "n_members": limits.whole(1, 100), "weight_decay": limits.number(0, 1e6),
                  "random_state": _SEED, "torch_threads": limits.whole(1, 1024, none=True)},
}
CACHE_SIZE = 4096
DOMAIN_SLACK = 2.0  # a graph with FLOPs or kernels up to this factor beyond the training range is inside it
_cache: "OrderedDict[tuple, Graph]" = OrderedDict()


def as_graph(x) -> Graph:
    """A Graph from a Graph or a path to an .onnx file (cached by path, size and mtime). Tensors kept in
    external data (torch's dynamo exporter, the export cache's weightless graphs) count by their declared
    shapes; the data file is never opened: a latency model needs no weight values."""
    if isinstance(x, Graph):
        return x
    if not isinstance(x, (str, os.PathLike)):
        raise LatkitError(f"X holds {str(x)[:60]!r}, which is neither an .onnx path nor an encoded graph")
    try:
        st = os.stat(x)
        key = (os.path.realpath(x), st.st_size, st.st_mtime_ns)
    except OSError as e:
        raise LatkitError(f"cannot read {x}: {e.strerror or e}; give an existing .onnx file") from None
    g = _cache.get(key)
    if g is None:
        g = encode(x, external="shapes")
        _cache[key] = g
        if len(_cache) > CACHE_SIZE:
            _cache.popitem(last=False)
    else:
        _cache.move_to_end(key)
    return g


def as_graphs(X) -> list:
    if isinstance(X, (str, os.PathLike, Graph)):
        raise LatkitError("X is one model; give a sequence of .onnx paths or graphs, e.g. [path]")
    items = list(X.ravel() if isinstance(X, np.ndarray) and X.ndim == 2 and X.shape[1] == 1 else X)
    return [as_graph(x) for x in items]


def training_data(X, y) -> tuple:
    """(graphs, latency_ms as float64), checked: one positive finite latency per graph."""
    graphs = as_graphs(X)
    y = latencies(y, len(graphs), "graph")
    if len(graphs) < 2:
        raise LatkitError("fitting needs at least 2 measured graphs")
    return graphs, y


def spread(logs: np.ndarray, return_std: bool):
    """Members' log-predictions [n_members, n] -> geometric mean (and std by the delta method, as
    predictor/ensemble.py)."""
    mean = np.exp(logs.mean(0))
    return (mean, mean * logs.std(0)) if return_std else mean


def domain(graphs) -> np.ndarray:
    """[FLOPs min, max, kernels min, max, then 1 per kernel type of OPS seen] of `graphs`."""
    flops = [g.totals()["flops"] for g in graphs]
    kernels = [len(g) for g in graphs]
    seen = {k.op for g in graphs for k in g.kernels}
    return np.array([min(flops), max(flops), min(kernels), max(kernels), *(o in seen for o in OPS)], np.float64)


def _beyond(what: str, value: float, lo: float, hi: float) -> str:
    if value > hi * DOMAIN_SLACK:
        return f"{what} {value / max(hi, 1e-30):.3g}x the largest trained"
    if value * DOMAIN_SLACK < lo:
        return f"{what} 1/{lo / max(value, 1e-30):.3g} of the smallest trained"
    return ""


class GraphSurrogate(RegressorMixin, BaseEstimator):
    """Base of the graph models: `_kind`, `_state`, `_restore` give the model file; `_training_data` (which
    fit and adapt call) records the training graphs' range for `outside`."""

    def _training_data(self, X, y, widen: bool = False) -> tuple:
        """training_data(X, y), and `domain_` set to these graphs' range (`widen`: joined to the one kept)."""
        graphs, y = training_data(X, y)
        d = domain(graphs)
        old = getattr(self, "domain_", None)
        if widen and old is not None:
            d = np.r_[min(d[0], old[0]), max(d[1], old[1]), min(d[2], old[2]), max(d[3], old[3]),
                      np.maximum(d[4:], old[4:])]
        self.domain_ = d
        return graphs, y

    def outside(self, X) -> list:
        """Per graph, "" if it lies within the training graphs' range, else where it lies beyond it (FLOPs or
        kernel count more than DOMAIN_SLACK times beyond, kernel types never trained); "" for all where the
        model file predates the range."""
        d = getattr(self, "domain_", None)
        out = []
        for g in as_graphs(X):
            if d is None:
                out.append("")
                continue
            new = sorted({k.op for k in g.kernels if not d[4 + OPS.index(k.op)]}, key=OPS.index)
            why = [_beyond("FLOPs", g.totals()["flops"], d[0], d[1]), _beyond("kernels", len(g), d[2], d[3]),
                   f"kernel types never trained: {' '.join(new)}" if new else ""]
            out.append("; ".join(w for w in why if w))
        return out

    def save(self, path) -> None:
        check_is_fitted(self)
        kind, params = self._kind(), self.get_params(deep=False)
        try:
            check(kind, params)
        except ValueError as e:
            raise LatkitError(f"cannot save this model: {e}; latkit reads graph models only within these ranges "
                              "(predictor/graphmodel.py LIMITS)") from None
        state = self._state()
        if getattr(self, "domain_", None) is not None:
            state = {**state, "domain_": self.domain_}
        modelfile.write(path, kind, params, state)


def check(kind, params) -> None:
    if kind not in LIMITS:
        raise ValueError(f"it names an unknown graph model kind {str(kind)[:40]!r}")
    limits._table(kind, params, LIMITS[kind])


def restore(cls, kind: str, params: dict, state: dict) -> GraphSurrogate:
    """A graph model of class `cls` from a model file's data (predictor/models.py's registry calls it);
    ValueError, TypeError or KeyError where it does not fit: ranges first, then one graph predicted."""
    check(kind, params)
    model = cls(**params)
    state = dict(state)
    dom = state.pop("domain_", None)  # files written before the range was kept have none
    if dom is not None and (not isinstance(dom, np.ndarray) or dom.shape != (4 + len(OPS),)):
        raise ValueError(f"its domain_ is not {4 + len(OPS)} numbers")
    model._restore(state)
    model.domain_ = None if dom is None else dom.astype(np.float64)
    probe = _probe_graph()
    with np.errstate(all="ignore"):
        pred = model.predict([probe])
    if np.shape(pred) != (1,):
        raise ValueError("it predicts no single latency per graph")
    return model


def _probe_graph() -> Graph:
    """A one-kernel graph to try a loaded model on (no file, no onnx needed)."""
    from .graphs import Kernel
    k = Kernel(op="conv", onnx_ops=["Conv"], kernel=(3, 3), in_shapes=[(1, 16, 8, 8)], out_shape=(1, 16, 8, 8),
               flops=2.0 * 16 * 16 * 9 * 64, mac_flops=2.0 * 16 * 16 * 9 * 64, mem_bytes=4.0 * (2 * 1024 + 2304),
               param_bytes=4.0 * 2304)
    return Graph([k], np.zeros((0, 2), np.int32), {"input_0": (1, 16, 8, 8)})
