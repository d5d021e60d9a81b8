"""latkit's latency models by name: the one registry of model kinds (KINDS) that `make_model`, the model file
loader (`load`) and the CLI's --model choices read. Every kind's module sits below this one.

    m = make_model("gbdt", "nb201", random_state=0)      # ArchRegressor("nb201", GBDTRegressor(random_state=0))
    m.fit(archs, latency_ms).predict(other_archs)        # latency_ms
    cross_val_score(m, archs, latency_ms, cv=5)          # clone, get_params, Pipeline, GridSearchCV all work
    GridSearchCV(m, {"regressor__n_estimators": [300, 600], "encoding": ["features", "onehot"]})
    load("nb201-pi4.latkit-model").predict(archs)        # any kind, read as data

X is a list, a 1-D array or a one-column 2-D array of arch strings of `space` (the space is a parameter,
not part of X, because an arch string means nothing without it); y is latency in ms, > 0. Models learn
log-latency (latency spans orders of magnitude across a space, and its errors are relative) and predict
latency_ms; `score` is R² on latency_ms.
- ridge, gbdt (LightGBM), rf, mlp: an ArchRegressor (predictor/archregressor.py) around that regressor of
  predictor/regressors.py, on the encoded archs (by default one-hot + analytic costs + proxies).
- gnn (predictor/gnn.py): a NASFLAT-style graph network on the op graph; several devices at once.
- ensemble (predictor/ensemble.py) and fewshot (predictor/transfer.py): models made of models; they are
  read from files but not made by name.
- graph-flops, graph-kernels, graph-gnn (GRAPH_KINDS): models of whole ONNX graphs (predictor/kernels.py,
  predictor/graphnet.py); read from files by `load` too.
__init__ only stores hyperparameters, `fit` starts afresh, learned state ends in '_'. `save` and `load` use
the data-only model file of predictor/modelfile.py.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from functools import partial
from typing import Callable, Optional

import numpy as np

from latkit.collector.errors import LatkitError
from latkit.collector.spaces import as_space

from . import limits, modelfile
from .archregressor import ArchRegressor
from .base import Surrogate  # noqa: F401  (where users import it from, as before)
from .ensemble import Ensemble
from .gnn import GNN
from .graphmodel import restore
from .graphnet import GraphNet
from .kernels import FlopsLinear, KernelAdditive
from .regressors import REGRESSORS
from .transfer import FewShot


@dataclass(frozen=True)
class Kind:
    """How a model kind is made by name (`make(space, random_state, n_jobs)`; None: not by name) and read back
    from a model file (`from_file(params, state, build)`)."""
    make: Optional[Callable]
    from_file: Callable


def _regressor(name: str, space: str, random_state: int, n_jobs) -> ArchRegressor:
    reg = REGRESSORS[name]()
    reg.set_params(**{k: v for k, v in (("random_state", random_state), ("n_jobs", n_jobs)) if k in reg.get_params()})
    return ArchRegressor(space, reg)


KINDS = {
    **{name: Kind(partial(_regressor, name), partial(ArchRegressor.from_file, kind=name)) for name in REGRESSORS},
    "gnn": Kind(lambda space, random_state, n_jobs: GNN(space, random_state=random_state), GNN.from_file),
    "ensemble": Kind(None, Ensemble.from_file),
    "fewshot": Kind(None, FewShot.from_file),
}
# models of whole ONNX graphs (X: .onnx files or encoded graphs, predictor/graphs.py): read from files here,
# with their own ranges and probe (predictor/graphmodel.py)
GRAPH_KINDS = {"graph-flops": FlopsLinear, "graph-kernels": KernelAdditive, "graph-gnn": GraphNet}
MODELS = tuple(name for name, kind in KINDS.items() if kind.make)  # what make_model and `--model` take


def make_model(name: str, space, random_state: int = 0, n_jobs=None) -> Surrogate:
    """A model by name with latkit's defaults; `n_jobs`: workers of the models that have them (gbdt, rf).
    `space` (a Space or its name) becomes the model's `space` parameter as the name, which model files store."""
    space = as_space(space).name
    kind = KINDS.get(name)
    if kind is None or kind.make is None:
        raise LatkitError(f"unknown model {name!r}; choose one of {', '.join(MODELS)} (or auto)")
    return kind.make(space, random_state, n_jobs)


def build(kind, params: dict, state: dict) -> Surrogate:
    """A model from a file's data (predictor/modelfile.py); ValueError, TypeError or KeyError if it does not fit."""
    if kind not in KINDS:
        raise ValueError(f"it names an unknown model kind {kind!r}")
    return KINDS[kind].from_file(params, state, build)


def _checked(kind, params: dict, state: dict) -> Surrogate:
    """A model file's model: hyperparameters checked against their ranges before anything is built, then
    one arch of its space predicted, so that arrays which do not fit each other (or the space's encoding) are
    refused now, as a bad file, instead of failing at the first prediction."""
    if kind in GRAPH_KINDS:
        return restore(GRAPH_KINDS[kind], kind, params, state)
    limits.check(kind, params)
    model = build(kind, params, state)
    arch = as_space(limits.space_of(kind, params)).sample(1, np.random.default_rng(0))
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        pred = model.predict(arch)
    if np.shape(pred) != (1,):
        raise ValueError("it predicts no single latency per arch")
    return model


def load(path) -> Surrogate:
    """Read a model file as data; anything else is refused in one line and nothing in it is run."""
    return modelfile.read(path, _checked)
