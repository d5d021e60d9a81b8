"""Per-kernel additive latency (nn-Meter's idea) and the FLOPs-linear baseline, over ONNX graphs.

    m = KernelAdditive().fit(onnx_paths, latency_ms)           # X: .onnx paths or graphs.Graph objects
    mean_ms, std_ms = m.predict(["my.onnx"], return_std=True)

KernelAdditive: a graph's latency is an overhead plus the sum of its kernels' latencies (kernels as the
runtime fuses them, predictor/graphs.py). Only whole graphs are measured, so kernel latencies are learned
from sums, in two steps:
1. linear: a non-negative cost per kernel, per FLOP, per byte moved and per activated output element,
   shared by all kernels and again per kernel type (graphs.OPS: what that type costs more; a type never
   seen in training costs the shared rates), plus one per-graph overhead, by non-negative least squares on
   the relative error of the sums (scipy's nnls on rows divided by the measured latency). This part is
   physics-like and extrapolates to larger or unseen networks;
2. `backfit_rounds` rounds: each graph's measured latency (less the overhead) is shared among its kernels
   in proportion to their current predictions, and one gradient-boosted tree model (LightGBM, on the
   kernel features of graphs.FEATURES: type one-hots, kernel / stride / groups, shapes, FLOPs, bytes)
   learns the log ratio of those shares to the linear costs, weighted by each kernel's share of its graph
   (a kernel's latency = linear cost x exp(trees): outside the training range the trees' correction stays
   bounded and the linear costs carry on); a final line (overhead + scale x the sum) calibrates the sums
   on the training graphs.
`n_members` bootstrap copies over graphs give the standard deviation: the spread of their log-predictions
(as predictor/ensemble.py), combined with the out-of-bag error (each training graph predicted by the
members that did not draw it; `oob_std_`), without which the std covered a fifth of held-out graphs'
errors within 2 std (scripts/bench_graphs.py, `in ±2 std`). Trees are kept as node arrays (predictor/trees.py) and saved as data.

FlopsLinear: latency = a + b x FLOPs (non-negative, relative least squares); its std is the relative
residual spread on the training graphs times the prediction.
"""
from __future__ import annotations

import numpy as np
from sklearn.utils.validation import check_is_fitted

from latkit.collector.errors import need

from . import trees
from .graphmodel import GraphSurrogate, as_graphs, spread
from .graphs import FEATURES, OPS

_I_ACT_NONE = FEATURES.index("act=none")
_I_FLOPS, _I_MEM = FEATURES.index("log_flops"), FEATURES.index("log_mem_bytes")
_I_OUT = FEATURES.index("log_out_elems")
N_BASIS = 4  # per kernel type: 1, GFLOPs, MB moved, M activated outputs


def features(g) -> np.ndarray:
    """A graph's kernel features, computed once per Graph object."""
    f = g.__dict__.get("_features")
    if f is None:
        f = g.features()
        g.__dict__["_features"] = f
    return f


def stacked(graphs) -> tuple:
    """(kernel features [K, F] of all graphs, graph index of each kernel [K])."""
    fs = [features(g) for g in graphs]
    seg = np.repeat(np.arange(len(fs)), [len(f) for f in fs])
    return (np.concatenate(fs) if fs else np.zeros((0, len(FEATURES)), np.float32)), seg


def basis(F: np.ndarray) -> np.ndarray:
    """[K, (1 + len(OPS)) * N_BASIS] per-kernel linear basis: each kernel's costs in shared columns (what any
    kernel costs, so a type unseen in training still costs something) and again in its own type's columns
    (what that type costs more)."""
    op = F[:, :len(OPS)].argmax(1)
    raw = np.stack([np.ones(len(F)), np.expm1(F[:, _I_FLOPS]) / 1e9, np.expm1(F[:, _I_MEM]) / 1e6,
                    np.expm1(F[:, _I_OUT]) / 1e6 * (1 - F[:, _I_ACT_NONE])], 1)
    out = np.zeros((len(F), (1 + len(OPS)) * N_BASIS))
    out[:, :N_BASIS] = raw
    for j in range(N_BASIS):
        out[np.arange(len(F)), (1 + op) * N_BASIS + j] = raw[:, j]
    return out


def _segsum(values: np.ndarray, seg: np.ndarray, n: int) -> np.ndarray:
    if values.ndim == 1:
        return np.bincount(seg, weights=values, minlength=n)
    out = np.zeros((n, values.shape[1]))
    np.add.at(out, seg, values)
    return out


def _nnls_relative(A: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Non-negative w minimising sum ((A w - y) / y)^2, columns scaled for conditioning."""
    from scipy.optimize import nnls
    R = A / y[:, None]
    norm = np.linalg.norm(R, axis=0)
    norm[norm == 0] = 1
    w, _ = nnls(R / norm, np.ones(len(y)), maxiter=50 * R.shape[1])
    return w / norm


class FlopsLinear(GraphSurrogate):
    """The baseline: latency_ms = a + b x FLOPs of the graph (a, b >= 0)."""

    def __init__(self, random_state=None):
        self.random_state = random_state  # unused; the fit is deterministic (kept for a uniform interface)

    def fit(self, X, y):
        graphs, y = self._training_data(X, y)
        flops = np.array([g.totals()["flops"] for g in graphs]) / 1e9
        A = np.stack([np.ones(len(y)), flops], 1)
        self.coef_ = _nnls_relative(A, y)
        rel = np.log(np.maximum(A @ self.coef_, 1e-9) / y)
        self.rel_std_ = float(rel.std())
        return self

    def predict(self, X, return_std: bool = False):
        check_is_fitted(self, "coef_")
        flops = np.array([g.totals()["flops"] for g in as_graphs(X)]) / 1e9
        mean = np.maximum(self.coef_[0] + self.coef_[1] * flops, 1e-9)
        return (mean, mean * self.rel_std_) if return_std else mean

    def adapt(self, X, y) -> "FlopsLinear":
        """Few-shot to a new device: the line fitted again on its graphs (2 numbers)."""
        return self.fit(X, y)

    def _kind(self) -> str:
        return "graph-flops"

    def _state(self) -> dict:
        return {"coef_": self.coef_, "rel_std_": self.rel_std_}

    def _restore(self, state: dict) -> None:
        if set(state) != {"coef_", "rel_std_"} or np.shape(state["coef_"]) != (2,):
            raise ValueError("its state is not a FLOPs line's (coef_ of 2 numbers, rel_std_)")
        self.coef_ = np.asarray(state["coef_"], np.float64)
        self.rel_std_ = float(state["rel_std_"])


class KernelAdditive(GraphSurrogate):
    """Sum of per-kernel latencies + overhead; see the module docstring."""

    def __init__(self, n_members=5, n_estimators=300, learning_rate=0.05, num_leaves=31, backfit_rounds=3,
                 random_state=0, n_jobs=1):
        self.n_members, self.n_estimators, self.learning_rate = n_members, n_estimators, learning_rate
        self.num_leaves, self.backfit_rounds, self.random_state, self.n_jobs = num_leaves, backfit_rounds, \
            random_state, n_jobs

    def fit(self, X, y):
        graphs, y = self._training_data(X, y)
        F, seg = stacked(graphs)
        rng = np.random.default_rng(self.random_state)
        self.members_, drawn = [], np.zeros((self.n_members, len(y)), bool)
        for i in range(self.n_members):
            rows = rng.choice(len(y), len(y), replace=True) if self.n_members > 1 else np.arange(len(y))
            drawn[i, rows] = True
            # kernels of the resampled graphs, each graph as often as drawn
            starts = np.r_[0, np.cumsum(np.bincount(seg, minlength=len(y)))]
            idx = np.concatenate([np.arange(starts[r], starts[r + 1]) for r in rows])
            mseg = np.repeat(np.arange(len(rows)), [starts[r + 1] - starts[r] for r in rows])
            self.members_.append(self._fit_member(F[idx], mseg, y[rows], int(self.random_state) + i))
        self.oob_std_ = self._out_of_bag(self._logs(F, seg, len(y)), ~drawn, y)
        return self

    @staticmethod
    def _out_of_bag(logs: np.ndarray, unseen: np.ndarray, y: np.ndarray) -> float:
        """The RMS log error of each training graph predicted by the members that did not draw it: the error
        of a graph like the training ones, which the members' spread alone understates (they share their
        bias). `predict`'s std adds it (0 with one member)."""
        has = unseen.any(0)
        if not has.any():
            return 0.0
        oob = (logs * unseen).sum(0)[has] / unseen.sum(0)[has]
        return float(np.sqrt(np.mean((oob - np.log(y[has])) ** 2)))

    def _fit_member(self, F, seg, y, seed) -> dict:
        n = len(y)
        B = basis(F)
        A = np.hstack([np.ones((n, 1)), _segsum(B, seg, n)])
        w = _nnls_relative(A, y)
        overhead = min(float(w[0]), 0.5 * float(y.min()))
        kernel = np.maximum(B @ w[1:], 1e-7)
        member = {"linear": w, "trees": None, "calib": np.array([overhead, 1.0])}
        if self.backfit_rounds == 0:
            total = _segsum(kernel, seg, n)
            member["calib"] = _nnls_relative(np.stack([np.ones(n), total], 1), y)
            return member
        lgb = need("lightgbm", "predict", "the per-kernel latency model")
        linear = kernel
        for _ in range(self.backfit_rounds):
            total = _segsum(kernel, seg, n)
            share = np.clip((y - overhead) / np.maximum(total, 1e-9), 0.05, 20.0)[seg]
            target = kernel * share
            weight = target / y[seg] + 1e-3
            est = lgb.LGBMRegressor(n_estimators=self.n_estimators, learning_rate=self.learning_rate,
                                    num_leaves=self.num_leaves, min_child_samples=10, subsample=0.8,
                                    subsample_freq=1, colsample_bytree=0.8, random_state=seed,
                                    n_jobs=self.n_jobs, verbose=-1)
            est.fit(F, np.log(target / linear), sample_weight=weight)  # a correction of the linear costs
            member["trees"] = trees.from_lightgbm(est.booster_)
            kernel = linear * np.exp(trees.Boosted(member["trees"], F.shape[1]).predict(F))
        total = _segsum(kernel, seg, n)
        member["calib"] = _nnls_relative(np.stack([np.ones(n), total], 1), y)
        return member

    def _kernels(self, F) -> np.ndarray:
        """[members, kernels]: each member's uncalibrated kernel latencies, all members' trees in one pass."""
        B = basis(F)
        out = np.stack([np.maximum(B @ m["linear"][1:], 1e-7) for m in self.members_]) if len(F) else \
            np.zeros((len(self.members_), 0))
        for booster, counts, idx in self._boosters():
            out[idx] = out[idx] * np.exp(booster.predict(F, counts))
        return out

    def _boosters(self) -> list:
        """[(trees.Boosted, tree counts, member indices)]: the members' trees joined (trees.joined), up to
        trees.MAX_NODES nodes each; built once per set of members."""
        key = [m["trees"] for m in self.members_]
        cached = self.__dict__.get("_joined")
        if cached is not None and len(cached[0]) == len(key) and all(a is b for a, b in zip(cached[0], key)):
            return cached[1]
        groups, nodes = [], trees.MAX_NODES
        for i, t in enumerate(key):
            if t is None:
                continue
            if nodes + len(t["left"]) > trees.MAX_NODES:
                groups.append([])
                nodes = 0
            groups[-1].append(i)
            nodes += len(t["left"])
        built = []
        for idx in groups:
            arrays, counts = trees.joined([key[i] for i in idx])
            built.append((trees.Boosted(arrays, len(FEATURES)), counts, idx))  # checks the arrays
        self.__dict__["_joined"] = (key, built)
        return built

    def adapt(self, X, y, folds: int = 5) -> "KernelAdditive":
        """Few-shot to a new device from a few of its measured graphs. Two candidates: this model with each
        member's overhead and scale refitted (2 numbers: the kernel costs keep their shape), and a fresh
        model of the same hyperparameters fitted on the new graphs alone; the one with the lower
        cross-validated log error on those graphs (`folds` folds; decided on the new device's data only)
        replaces this model's members. `adapted_` says which won and the errors."""
        from sklearn.base import clone
        from sklearn.model_selection import KFold
        check_is_fitted(self, "members_")
        graphs, y = self._training_data(X, y, widen=True)
        F, seg = stacked(graphs)
        totals = [_segsum(k, seg, len(y)) for k in self._kernels(F)]

        def recalibrated(rows):
            return [_nnls_relative(np.stack([np.ones(len(rows)), t[rows]], 1), y[rows]) for t in totals]

        err = {"recalibrated": [], "fresh": []}
        k = min(folds, len(y))
        if k >= 2:
            for tr, te in KFold(k, shuffle=True, random_state=0).split(graphs):
                cal = recalibrated(tr)
                pred = np.exp(np.mean([np.log(np.maximum(c[0] + c[1] * t[te], 1e-9)) for c, t in zip(cal, totals)], 0))
                err["recalibrated"] += list(np.log(pred / y[te]) ** 2)
                if len(tr) >= 2:
                    fresh = clone(self).fit([graphs[i] for i in tr], y[tr])
                    err["fresh"] += list(np.log(fresh.predict([graphs[i] for i in te]) / y[te]) ** 2)
        rmse = {k_: float(np.sqrt(np.mean(v))) if v else float("inf") for k_, v in err.items()}
        if rmse["fresh"] < rmse["recalibrated"]:
            fresh = clone(self).fit(graphs, y)
            self.members_, self.domain_ = fresh.members_, fresh.domain_  # it knows the new graphs only
            choice = "fresh"
        else:
            for m, cal in zip(self.members_, recalibrated(np.arange(len(y)))):
                m["calib"] = cal
            choice = "recalibrated"
        self.adapted_ = {"choice": choice, "cv_log_rmse": rmse, "graphs": len(y)}
        return self

    def predict(self, X, return_std: bool = False):
        check_is_fitted(self, "members_")
        graphs = as_graphs(X)
        F, seg = stacked(graphs)
        mean, std = spread(self._logs(F, seg, len(graphs)), True)
        if not return_std:
            return mean
        oob = getattr(self, "oob_std_", 0.0)
        return mean, np.sqrt(std ** 2 + (mean * oob) ** 2)

    def _logs(self, F, seg, n: int) -> np.ndarray:
        """[members, graphs] log latencies."""
        return np.log(np.stack([np.maximum(m["calib"][0] + m["calib"][1] * _segsum(k, seg, n), 1e-9)
                                for m, k in zip(self.members_, self._kernels(F))]))

    def kernel_latency(self, graph) -> np.ndarray:
        """Predicted latency (ms) of each kernel of one graph (members' geometric mean, before calibration's
        overhead; the scale applied): where the time goes."""
        F = features(graph)
        out = [np.log(np.maximum(k * m["calib"][1], 1e-12)) for m, k in zip(self.members_, self._kernels(F))]
        return np.exp(np.mean(out, 0))

    # -- model file -------------------------------------------------------------------------------------------
    def _kind(self) -> str:
        return "graph-kernels"

    def _state(self) -> dict:
        flat = {}
        for i, m in enumerate(self.members_):
            flat[f"m{i}.linear"] = m["linear"]
            flat[f"m{i}.calib"] = m["calib"]
            if m["trees"] is not None:
                flat.update({f"m{i}.trees.{k}": v for k, v in m["trees"].items()})
        return {"members_": flat, "oob_std_": float(getattr(self, "oob_std_", 0.0))}

    def _restore(self, state: dict) -> None:
        if not {"members_"} <= set(state) <= {"members_", "oob_std_"} or not isinstance(state["members_"], dict):
            raise ValueError("its state is not a kernel-additive model's (members_, oob_std_)")
        oob = state.get("oob_std_", 0.0)  # files before it: the members' spread alone
        if isinstance(oob, bool) or not isinstance(oob, (int, float)) or not 0 <= oob < 10:
            raise ValueError(f"its out-of-bag error {oob!r} is not a number in 0-10")
        self.oob_std_ = float(oob)
        flat = state["members_"]
        members = []
        for i in range(self.n_members):
            lin, cal = flat.get(f"m{i}.linear"), flat.get(f"m{i}.calib")
            if not isinstance(lin, np.ndarray) or lin.shape != (1 + (1 + len(OPS)) * N_BASIS,) or \
                    not isinstance(cal, np.ndarray) or cal.shape != (2,):
                raise ValueError(f"its member {i} has no linear part of {1 + (1 + len(OPS)) * N_BASIS} numbers and "
                                 "calibration of 2")
            t = {k.split(".", 2)[2]: v for k, v in flat.items() if k.startswith(f"m{i}.trees.")}
            m = {"linear": lin.astype(np.float64), "calib": cal.astype(np.float64), "trees": t or None}
            if not t and self.backfit_rounds:
                raise ValueError(f"its member {i} has no trees, but backfit_rounds={self.backfit_rounds}")
            members.append(m)
        known = {f"m{i}.{a}" for i in range(self.n_members) for a in ("linear", "calib")}
        extra = [k for k in flat if k not in known and not any(k.startswith(f"m{i}.trees.")
                                                                for i in range(self.n_members))]
        if extra:
            raise ValueError(f"it holds {extra[0]!r}, which is no member of its {self.n_members}")
        self.members_ = members
        self._boosters()  # checks the trees' arrays
