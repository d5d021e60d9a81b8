"""The base of latkit's models: `Surrogate` (a scikit-learn regressor on arch strings that saves as data) and
the checks of fit's X and y. Every model kind builds on this module; it imports none of them, so the kinds,
their registry (predictor/models.py) and the file loader stand in one direction above it."""
from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.utils.validation import check_is_fitted

from latkit.collector.errors import LatkitError

from . import limits, modelfile


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


def latencies(y, n: int, what: str) -> np.ndarray:
    """fit's y (latency_ms) as float64, checked: one positive finite latency per each of the `n` `what`s."""
    y = np.asarray(y, dtype=np.float64)
    if y.ndim != 1 or not np.all(np.isfinite(y)) or np.any(y <= 0):
        raise LatkitError(f"latencies must be one positive finite number per {what}; drop NaN, zero or negative "
                          "rows first")
    if n != len(y):
        raise LatkitError(f"{n} {what}s but {len(y)} latencies; give one latency per {what}")
    return y


def training_data(X, y) -> tuple:
    """(archs, log-latency) from fit's X and y (latency_ms), checked: one positive finite latency per arch."""
    archs = arch_list(X)
    return archs, np.log(latencies(y, len(archs), "arch"))


class Surrogate(RegressorMixin, BaseEstimator):
    """Base of the arch-string models and their model file. Subclasses give `_kind`, `_params`, `_state` and,
    unless `from_file` is their own, `_restore`; reading a file is predictor/models.py's `load`, which knows
    every kind."""

    def save(self, path) -> None:
        """Write the data-only model file (predictor/modelfile.py), with the latkit version that wrote it and the
        column it predicts (`target_`, set by predictor fit and by loading; latency_ms where unset)."""
        check_is_fitted(self)
        kind, params = self._kind(), self._params()
        try:
            limits.check(kind, params)
        except ValueError as e:
            raise LatkitError(f"cannot save this model: {e}; latkit reads models only within these ranges "
                              "(predictor/limits.py)") from None
        modelfile.write(path, kind, params, self._state(), getattr(self, "target_", "latency_ms"))

    @classmethod
    def from_file(cls, params: dict, state: dict, build) -> "Surrogate":
        """The model a file's data describes; `build(kind, params, state)` makes any model it is made of."""
        model = cls(**params)
        model._restore(state)
        return model

    def _params(self) -> dict:
        return self.get_params(deep=False)
