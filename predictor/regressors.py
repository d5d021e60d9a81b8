"""Numeric regressors whose learned state is plain arrays, so that a saved model is data, never code.

Each is a scikit-learn estimator on a numeric X (n_samples x n_features) and any real y: it standardises X,
fits the library estimator (RidgeCV, LightGBM, a random forest, an L-BFGS MLP), keeps only the learned
arrays (trees as node arrays, predictor/trees.py) and predicts from them with numpy. `_restore` checks
arrays read from a model file against each other (shapes, tree structure) before anything uses them.
`ArchRegressor` (predictor/archregressor.py) puts one behind arch strings and log-latency. Every hyperparameter is a
keyword of __init__, which only stores it; `fit` starts afresh each time. They pass scikit-learn's `check_estimator` (tests/test_predictor.py).
"""
from __future__ import annotations

import warnings

import numpy as np
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.utils.validation import check_is_fitted, validate_data

from . import trees

RIDGE_ALPHAS = tuple(float(a) for a in np.logspace(-3, 3, 13))


class _Standardised(RegressorMixin, BaseEstimator):
    """Standardise X, fit `_make()` on it, keep what `_export` takes from it, predict with `_predict_scaled`."""

    def fit(self, X, y):
        from sklearn.preprocessing import StandardScaler
        X, y = validate_data(self, X, y, ensure_min_samples=2, y_numeric=True)
        scaler = StandardScaler().fit(X)
        self.mean_, self.scale_ = scaler.mean_, scaler.scale_
        self._export(self._make().fit(self._scaled(X), y))
        return self

    def predict(self, X):
        check_is_fitted(self)
        return self._predict_scaled(self._scaled(validate_data(self, X, reset=False)))

    def _scaled(self, X):
        return (X - self.mean_) / self.scale_

    def _state(self) -> dict:
        """Learned state for a model file: attribute -> array, number, str or dict of arrays."""
        check_is_fitted(self)
        return {k: v for k, v in vars(self).items() if k.endswith("_") and not k.startswith("_")}

    def _restore(self, state: dict) -> "_Standardised":
        """Take a model file's learned state: exactly the attributes this regressor learns, `mean_` and
        `scale_` as long as the features it was fitted on; `_check` checks the rest."""
        expected = set(self._STATE) | {"mean_", "scale_", "n_features_in_"}
        missing, extra = expected - set(state), set(state) - expected
        if missing:
            raise KeyError(sorted(missing)[0])
        if extra:
            raise ValueError(f"it holds learned state {sorted(extra)[0]!r}, which a {type(self).__name__} has not")
        n = state["n_features_in_"]
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 1_000_000:
            raise ValueError(f"its n_features_in_ {n!r} is no feature count")
        for k in ("mean_", "scale_"):
            if not _floats(state[k], (n,)):
                raise ValueError(f"its {k} is not {n} numbers")
        vars(self).update(state)
        self._check()
        return self

    def _check(self) -> None:
        """Subclasses: raise ValueError where the restored arrays do not fit together."""


def _floats(a, shape) -> bool:
    return isinstance(a, np.ndarray) and a.dtype.kind == "f" and a.shape == shape


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)


class RidgeRegressor(_Standardised):
    """Ridge regression; the penalty is chosen from `alphas` by efficient leave-one-out (RidgeCV)."""

    _STATE = ("coef_", "intercept_")

    def __init__(self, alphas=RIDGE_ALPHAS):
        self.alphas = alphas

    def _make(self):
        from sklearn.linear_model import RidgeCV
        return RidgeCV(alphas=np.asarray(self.alphas, dtype=np.float64))

    def _export(self, est):
        self.coef_, self.intercept_ = est.coef_, float(est.intercept_)

    def _predict_scaled(self, x):
        return x @ self.coef_ + self.intercept_

    def _check(self):
        if not _floats(self.coef_, (self.n_features_in_,)) or not _number(self.intercept_):
            raise ValueError("its coef_ and intercept_ are not one number per feature and one number")


class GBDTRegressor(_Standardised):
    """LightGBM gradient-boosted trees, kept as node arrays (`trees_`, predictor/trees.py) and evaluated with
    numpy, as LightGBM evaluates them: a model file never reaches LightGBM's parser. `n_jobs`: LightGBM
    threads while fitting (None or <= 0: its default, every core)."""

    _STATE = ("trees_",)

    def __init__(self, n_estimators=600, learning_rate=0.05, num_leaves=15, min_child_samples=5, subsample=0.8,
                 colsample_bytree=0.8, random_state=0, n_jobs=None):
        self.n_estimators, self.learning_rate, self.num_leaves = n_estimators, learning_rate, num_leaves
        self.min_child_samples, self.subsample, self.colsample_bytree = min_child_samples, subsample, colsample_bytree
        self.random_state, self.n_jobs = random_state, n_jobs

    def _make(self):
        import lightgbm
        return lightgbm.LGBMRegressor(
            n_estimators=self.n_estimators, learning_rate=self.learning_rate, num_leaves=self.num_leaves,
            min_child_samples=self.min_child_samples, subsample=self.subsample, subsample_freq=1,
            colsample_bytree=self.colsample_bytree, random_state=self.random_state, n_jobs=self.n_jobs, verbose=-1)

    def _export(self, est):
        self.trees_ = trees.from_lightgbm(est.booster_)
        self._boosted = trees.Boosted(self.trees_, est.n_features_in_)

    def _predict_scaled(self, x):
        return self._boosted.predict(x)

    def _check(self):
        self._boosted = trees.Boosted(self.trees_, self.n_features_in_)


class ForestRegressor(_Standardised):
    """scikit-learn's random forest, kept as its trees' node arrays (all trees end to end, a leaf's children
    being itself) and walked with numpy: every tree at once, one level per step. `n_jobs` as scikit-learn's."""

    _STATE = ("left_", "right_", "feature_", "threshold_", "value_", "roots_", "depth_")

    def __init__(self, n_estimators=300, max_features=0.5, min_samples_leaf=1, random_state=0, n_jobs=None):
        self.n_estimators, self.max_features, self.min_samples_leaf = n_estimators, max_features, min_samples_leaf
        self.random_state, self.n_jobs = random_state, n_jobs

    def _make(self):
        from sklearn.ensemble import RandomForestRegressor
        return RandomForestRegressor(n_estimators=self.n_estimators, max_features=self.max_features,
                                     min_samples_leaf=self.min_samples_leaf, random_state=self.random_state,
                                     n_jobs=self.n_jobs)

    def _export(self, est):
        trees = [e.tree_ for e in est.estimators_]
        sizes = [t.node_count for t in trees]
        start = np.cumsum([0] + sizes)[:-1]

        def cat(name):
            return np.concatenate([getattr(t, name) for t in trees])

        node, offset, leaf = np.arange(sum(sizes)), np.repeat(start, sizes), cat("children_left") < 0
        self.left_ = np.where(leaf, node, cat("children_left") + offset).astype(np.int32)
        self.right_ = np.where(leaf, node, cat("children_right") + offset).astype(np.int32)
        self.feature_ = np.where(leaf, 0, cat("feature")).astype(np.int32)
        self.threshold_, self.value_ = cat("threshold"), cat("value")[:, 0, 0]
        self.roots_, self.depth_ = start.astype(np.int32), max(t.max_depth for t in trees)

    def _predict_scaled(self, x, chunk: int = 1024):
        x = x.astype(np.float32)  # the trees split float32 features, as scikit-learn does
        out = []
        for part in np.array_split(x, max(1, -(-len(x) // chunk))):  # chunks that stay in cache
            flat, first = part.ravel(), (np.arange(len(part), dtype=np.int32) * x.shape[1])[None, :]
            node = np.repeat(self.roots_[:, None], len(part), 1)
            for _ in range(self.depth_):
                node = np.where(flat[first + self.feature_[node]] <= self.threshold_[node], self.left_[node],
                                self.right_[node])
            out.append(self.value_[node].mean(0))
        return np.concatenate(out)

    def _check(self):
        depth = trees.check(self.left_, self.right_, self.feature_, self.threshold_, self.value_, self.roots_,
                            self.n_features_in_)
        if self.depth_ != depth:
            raise ValueError(f"its depth_ {self.depth_!r} is not the depth of its trees ({depth})")


class MLPRegressor(_Standardised):
    """scikit-learn's MLP trained with L-BFGS: full-batch and reliable on the few hundred samples a latency
    budget buys; its iteration cap doubles as early stopping (the convergence warning there is expected and
    silenced). Kept as its layers' weights, evaluated with numpy. `blas_threads`: threads numpy's BLAS may
    use while fitting (None: as set); 1 by default, because L-BFGS on small matrices gains nothing from more
    and loses much when cores are busy (150 archs: 0.3 s on one thread, 17 s on two of a loaded 2-core VM)."""

    _STATE = ("n_iter_", "layers_")

    def __init__(self, hidden_layer_sizes=(64, 64), alpha=1.0, max_iter=500, random_state=0, blas_threads=1):
        self.hidden_layer_sizes, self.alpha, self.max_iter = hidden_layer_sizes, alpha, max_iter
        self.random_state, self.blas_threads = random_state, blas_threads

    def _make(self):
        from sklearn.neural_network import MLPRegressor as SkMLP
        return SkMLP(hidden_layer_sizes=tuple(self.hidden_layer_sizes), alpha=self.alpha, solver="lbfgs",
                     max_iter=self.max_iter, random_state=self.random_state)

    def fit(self, X, y):
        from sklearn.exceptions import ConvergenceWarning
        from threadpoolctl import threadpool_limits
        with warnings.catch_warnings(), threadpool_limits(self.blas_threads, user_api="blas"):
            warnings.simplefilter("ignore", ConvergenceWarning)
            return super().fit(X, y)

    def _export(self, est):
        self.n_iter_ = est.n_iter_
        self.layers_ = {**{f"w{i}": w for i, w in enumerate(est.coefs_)},
                        **{f"b{i}": b for i, b in enumerate(est.intercepts_)}}

    def _predict_scaled(self, x):
        n = len(self.layers_) // 2
        for i in range(n):  # ReLU hidden layers, identity output, as MLPRegressor
            x = x @ self.layers_[f"w{i}"] + self.layers_[f"b{i}"]
            if i < n - 1:
                x = np.maximum(x, 0)
        return x[:, 0]

    def _check(self):
        layers, width = self.layers_, self.n_features_in_
        n = len(layers) // 2 if isinstance(layers, dict) else 0
        if not n or set(layers) != {f"{p}{i}" for p in "wb" for i in range(n)}:
            raise ValueError("its layers_ are not weights w0.. and biases b0.. of the same layers")
        for i in range(n):
            w, b = layers[f"w{i}"], layers[f"b{i}"]
            if not (isinstance(w, np.ndarray) and w.ndim == 2 and _floats(w, (width, w.shape[1]))
                    and _floats(b, (w.shape[1],))):
                raise ValueError(f"its layer {i} does not take {width} inputs or has no bias per output")
            width = w.shape[1]
        if width != 1:
            raise ValueError("its last layer has no single output")


REGRESSORS = {"ridge": RidgeRegressor, "gbdt": GBDTRegressor, "rf": ForestRegressor, "mlp": MLPRegressor}
