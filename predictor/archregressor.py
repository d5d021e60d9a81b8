"""ArchRegressor: arch strings -> an encoding (predictor/encodings.py) -> one of latkit's numeric regressors
(predictor/regressors.py) on log-latency. The model kinds ridge, gbdt, rf and mlp are this class around one
regressor each; the model file names the regressor's kind."""
from __future__ import annotations

import numpy as np
from sklearn.base import clone
from sklearn.utils.validation import check_is_fitted

from latkit.collector.errors import LatkitError
from latkit.collector.spaces import as_space

from .base import Surrogate, arch_list, training_data
from .encodings import encode
from .regressors import REGRESSORS, RidgeRegressor


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

    @classmethod
    def from_file(cls, params: dict, state: dict, build, kind: str = "ridge") -> "ArchRegressor":
        """The model a file describes around the regressor of `kind` (its key in REGRESSORS)."""
        params = dict(params)
        reg = params.pop("regressor", {})
        if not isinstance(reg, dict):
            raise ValueError("its regressor parameters are no JSON object")
        reg = {k: tuple(v) if isinstance(v, list) else v for k, v in reg.items()}  # JSON has no tuples
        return super().from_file(dict(params, regressor=REGRESSORS[kind](**reg)), state, build)
