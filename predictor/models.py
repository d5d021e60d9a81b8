"""latkit's latency models: scikit-learn regressors whose X is a sequence of arch strings of one space.

    m = make_model("gbdt", "nb201", random_state=0)      # ArchRegressor("nb201", GBDTRegressor(random_state=0))
    m.fit(archs, latency_ms).predict(other_archs)        # latency_ms
    cross_val_score(m, archs, latency_ms, cv=5)          # clone, get_params, Pipeline, GridSearchCV all work
    GridSearchCV(m, {"regressor__n_estimators": [300, 600], "encoding": ["features", "onehot"]})

X is a list, a 1-D array or a one-column 2-D array of arch strings of `space` (the space is a parameter,
not part of X, because an arch string means nothing without it); y is latency in ms, > 0. Models learn
log-latency (latency spans orders of magnitude across a space, and its errors are relative) and predict
latency_ms; `score` is R² on latency_ms.
- ArchRegressor: encodes the archs (`encoding`; by default one-hot + analytic costs + proxies) and fits a
  numeric regressor: ridge, gbdt (LightGBM), rf or mlp from predictor/regressors.py.
- GNN (predictor/gnn.py): a NASFLAT-style graph network on the op graph; several devices at once.
__init__ only stores hyperparameters, `fit` starts afresh, learned state ends in '_'. `save` and
`Surrogate.load` use the data-only model file of predictor/modelfile.py.
"""
from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, RegressorMixin, clone
from sklearn.utils.validation import check_is_fitted

from latkit.collector.errors import LatkitError
from latkit.collector.spaces import as_space

from . import limits, modelfile
from .encodings import encode
from .regressors import REGRESSORS, RidgeRegressor

MODELS = ("ridge", "gbdt", "rf", "mlp", "gnn")


def arch_list(X) -> list:
    """X as a list of arch strings (a list, a 1-D array or a one-column 2-D array of str)."""
    if isinstance(X, str):
        raise LatkitError("X is one string; give a sequence of arch strings, e.g. [arch]")
    a = np.asarray(X, dtype=object)
    if a.ndim == 2 and a.shape[1] == 1:
        a = a[:, 0]
    if a.ndim != 1:
        raise LatkitError(f"X has shape {a.shape}; give a sequence of arch strings (one column)")
    archs = a.tolist()
    bad = next((x for x in archs if not isinstance(x, str)), None)
    if bad is not None:
        raise LatkitError(f"X holds {bad!r}, which is no arch string; give arch strings of the model's space")
    return archs


def training_data(X, y) -> tuple:
    """(archs, log-latency) from fit's X and y (latency_ms), checked: one positive finite latency per arch."""
    archs, y = arch_list(X), np.asarray(y, dtype=np.float64)
    if y.ndim != 1 or not np.all(np.isfinite(y)) or np.any(y <= 0):
        raise LatkitError("latencies must be one positive finite number per arch; drop NaN, zero or negative rows "
                          "first")
    if len(archs) != len(y):
        raise LatkitError(f"{len(archs)} archs but {len(y)} latencies; give one latency per arch")
    return archs, np.log(y)


class Surrogate(RegressorMixin, BaseEstimator):
    """Base of the arch-string models: the model file. Subclasses give `_kind`, `_params`, `_state`, `_restore`."""

    def save(self, path) -> None:
        """Write the data-only model file (predictor/modelfile.py), with the latkit version that wrote it."""
        check_is_fitted(self)
        kind, params = self._kind(), self._params()
        try:
            limits.check(kind, params)
        except ValueError as e:
            raise LatkitError(f"cannot save this model: {e}; latkit reads models only within these ranges "
                              "(predictor/limits.py)") from None
        modelfile.write(path, kind, params, self._state())

    @staticmethod
    def load(path) -> "Surrogate":
        """Read a model file as data; anything else is refused in one line and nothing in it is run."""
        return modelfile.read(path, _load)

    def _params(self) -> dict:
        return self.get_params(deep=False)


class ArchRegressor(Surrogate):
    """Arch strings -> `encoding` -> a numeric `regressor` (default RidgeRegressor) on log-latency."""

    def __init__(self, space, regressor=None, encoding="features"):
        self.space, self.regressor, self.encoding = space, regressor, encoding

    def fit(self, X, y):
        archs, y = training_data(X, y)
        self.regressor_ = clone(RidgeRegressor() if self.regressor is None else self.regressor).fit(self._x(archs), y)
        return self

    def predict(self, X):
        check_is_fitted(self)
        return np.exp(self.regressor_.predict(self._x(X)))

    def _x(self, X):
        return encode(self.space, arch_list(X), self.encoding)

    def _kind(self) -> str:
        kind = {cls: name for name, cls in REGRESSORS.items()}.get(type(self.regressor_))
        if kind is None:
            raise LatkitError(f"cannot save a model around {type(self.regressor_).__name__}: only latkit's "
                              f"regressors ({', '.join(REGRESSORS)}) save as data")
        return kind

    def _params(self) -> dict:
        return {"space": as_space(self.space).name, "encoding": self.encoding, "regressor": self.regressor_.get_params()}

    def _state(self) -> dict:
        return self.regressor_._state()

    def _restore(self, state: dict) -> None:
        self.regressor_ = clone(self.regressor)._restore(state)


def _load(kind, params: dict, state: dict) -> Surrogate:
    """A model file's model: hyperparameters checked against their ranges before anything is built, then
    one arch of its space predicted, so that arrays which do not fit each other (or the space's encoding) are
    refused now, as a bad file, instead of failing at the first prediction."""
    import warnings
    limits.check(kind, params)
    model = _build(kind, params, state)
    arch = as_space(limits.space_of(kind, params)).sample(1, np.random.default_rng(0))
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        pred = model.predict(arch)
    if np.shape(pred) != (1,):
        raise ValueError("it predicts no single latency per arch")
    return model


def _build(kind, params: dict, state: dict) -> Surrogate:
    """A model from a file's data (predictor/modelfile.py); ValueError, TypeError or KeyError if it does not fit."""
    if kind == "ensemble":
        from .ensemble import Ensemble  # ensemble.py builds on this module
        return Ensemble.from_file(params, state, _build)
    if kind == "fewshot":
        from .transfer import FewShot  # transfer.py builds on this module
        return FewShot.from_file(params, state, _build)
    if kind == "gnn":
        from .gnn import GNN  # gnn.py builds on this module
        model = GNN(**params)
    elif kind in REGRESSORS:
        params = dict(params)
        reg = params.pop("regressor", {})
        if not isinstance(reg, dict):
            raise ValueError("its regressor parameters are no JSON object")
        reg = {k: tuple(v) if isinstance(v, list) else v for k, v in reg.items()}  # JSON has no tuples
        model = ArchRegressor(regressor=REGRESSORS[kind](**reg), **params)
    else:
        raise ValueError(f"it names an unknown model kind {kind!r}")
    model._restore(state)
    return model


def make_model(name: str, space, random_state: int = 0, n_jobs=None) -> Surrogate:
    """A model by name with latkit's defaults; `n_jobs`: workers of the models that have them (gbdt, rf).
    `space` (a Space or its name) becomes the model's `space` parameter as the name, which model files store."""
    space = as_space(space).name
    if name == "gnn":
        from .gnn import GNN
        return GNN(space, random_state=random_state)
    if name not in REGRESSORS:
        raise LatkitError(f"unknown model {name!r}; choose one of {', '.join(MODELS)} (or auto)")
    reg = REGRESSORS[name]()
    reg.set_params(**{k: v for k, v in (("random_state", random_state), ("n_jobs", n_jobs)) if k in reg.get_params()})
    return ArchRegressor(space, reg)
