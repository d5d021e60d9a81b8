"""NASFLAT-style few-shot transfer: pretrain on many source devices, adapt to a new one from ~20 samples.

Per seed:
1. Each source device gives at most `source_samples` archs (uniform draw; only those latencies are read).
2. Pretraining: a multi-device GNN (op embeddings + one hardware embedding per device on every node) on
   all (arch, source) pairs, and one gradient-boosted surrogate per source that predicts that source's
   latency for every arch of the space (the "source bank").
3. Target samples: k-means ("diverse") over an encoding made only of things known without the target:
   the standardised source-bank predictions and hardware-agnostic cost proxies (FLOPs, memory traffic,
   kernel count, op counts). Only the chosen archs' target latencies are ever read.
4. Adaptation, two views, averaged in standardised log space:
   - the GNN: the target's hardware embedding starts as the embedding of the source whose latencies
     correlate best (Spearman) with the target's samples, then the network is fine-tuned on the samples;
   - a ridge regression (leave-one-out chosen penalty) of the target's log-latency on the source bank and
     the proxies: a device is modelled as a mix of known devices and of the ways hardware can be bound.
5. Scored on every arch of the space the targets have: Spearman, Kendall, MAPE.
Nothing is tuned per task or per device name: the same defaults run every task.
"""
from __future__ import annotations

import copy
import time
from typing import Sequence

import numpy as np
from scipy.stats import spearmanr

from collector.errors import LatkitError
from collector.samplers import sample_from
from collector.spaces import get_space

from .data import LatencyTable
from .encodings import encode
from .metrics import report
from .models import GNN, GBDT


def _z(x: np.ndarray, axis=0) -> np.ndarray:
    return (x - x.mean(axis)) / (x.std(axis) + 1e-12)


class Pretrained:
    """Everything learned from the sources: the bank's predictions for every arch, the proxies, the GNN."""

    def __init__(self, table: LatencyTable, sources: Sequence[str], archs: Sequence[str], source_samples: int,
                 seed: int, use_gnn: bool = True, steps: int = 1500):
        space, rng = table.space, np.random.default_rng(seed)
        self.space, self.archs, self.n_sources = space, list(archs), len(sources)
        bank, pair_archs, pair_dev, pair_y = [], [], [], []
        for d, src in enumerate(sources):
            pool = table.archs(src)
            chosen = [pool[i] for i in rng.choice(len(pool), min(source_samples, len(pool)), replace=False)]
            y = table.latency(src, chosen)
            bank.append(np.log(GBDT(space, seed=seed, n_estimators=300, learning_rate=0.08).fit(chosen, y)
                               .predict(self.archs)))
            pair_archs += chosen
            pair_dev += [d] * len(chosen)
            pair_y += list(_z(np.log(y)))
        self.bank = _z(np.stack(bank, 1))
        self.features = np.hstack([self.bank, _z(encode(space, self.archs, "proxies"))])
        self.gnn = None
        if use_gnn:  # a fixed budget of optimiser steps, however many source pairs there are
            batch = 256
            epochs = int(np.clip(round(steps * batch / len(pair_y)), 5, 100))
            self.gnn = GNN(space, seed=seed, epochs=epochs, batch_size=batch)
            self.gnn.fit_devices(pair_archs, pair_dev, pair_y, n_devices=len(sources) + 1)

    def choose(self, n: int, seed: int) -> list:
        """The target samples: diverse over (source bank, proxies); no target latency exists here."""
        return sample_from(get_space(self.space), self.archs, n, "diverse", seed, features=self.features)

    def predict_target(self, chosen: Sequence[str], log_y: np.ndarray, finetune_epochs: int = 60) -> np.ndarray:
        """Log-latency of every arch on the target, from the chosen archs' log-latencies alone."""
        from sklearn.linear_model import RidgeCV
        index = {a: i for i, a in enumerate(self.archs)}
        sel = np.array([index[a] for a in chosen])
        ridge = RidgeCV(alphas=np.logspace(-2, 3, 11)).fit(self.features[sel], log_y)
        pred = ridge.predict(self.features)
        if self.gnn is None:
            return pred
        g = finetune(self.gnn, chosen, log_y, self.bank[sel], self.n_sources, finetune_epochs)
        z = (_z(pred) + _z(g.predict_device(self.archs, self.n_sources))) / 2
        return pred.mean() + pred.std() * _z(z)


def run_seed(table: LatencyTable, sources: Sequence[str], targets: Sequence[str], target_samples: int,
             source_samples: int, seed: int, use_gnn: bool = True) -> dict:
    archs = table.common_archs(targets)
    pre = Pretrained(table, sources, archs, source_samples, seed, use_gnn)
    chosen = pre.choose(target_samples, seed)
    per_target = {}
    for tgt in targets:
        pred = pre.predict_target(chosen, np.log(table.latency(tgt, chosen)))  # the only target latencies read
        r = report(np.exp(pred), table.latency(tgt, archs))
        per_target[tgt] = {"spearman": r["spearman"], "kendall": r["kendall"], "mape": r["mape"]}
    return per_target


def finetune(pretrained: GNN, archs: Sequence[str], log_y: np.ndarray, bank_at_samples: np.ndarray,
             slot: int, epochs: int) -> GNN:
    """A copy of the pretrained GNN adapted to the target: its hardware embedding (slot) starts as that of
    the best-correlated source, then every weight is fine-tuned on the samples."""
    import torch
    g = copy.deepcopy(pretrained)
    rho = [spearmanr(bank_at_samples[:, j], log_y).statistic for j in range(bank_at_samples.shape[1])]
    best = int(np.nanargmax(rho))
    with torch.no_grad():
        g.net_.hw.weight[slot] = g.net_.hw.weight[best]
    g.lr, g.batch_size = pretrained.lr / 3, len(archs)
    g.fit_devices(archs, [slot] * len(archs), _z(log_y), n_devices=slot + 1, epochs=epochs)
    return g


def transfer(data, space: str, sources: Sequence[str], targets: Sequence[str], target_samples: int = 20,
             source_samples: int = 900, seeds: int = 3, use_gnn: bool = True) -> dict:
    """`latkit predictor transfer`: per-target and mean Spearman over all archs, mean +- std over seeds."""
    table = data if isinstance(data, LatencyTable) else LatencyTable(data, space)
    if not sources or not targets:
        raise LatkitError("give at least one --source and one --target device")
    table.check_devices(list(sources) + list(targets))
    if target_samples < 3:
        raise LatkitError(f"--target-samples {target_samples} is too few; use at least 3")
    overlap = set(sources) & set(targets)
    if overlap:
        raise LatkitError(f"device(s) {', '.join(sorted(overlap))} are both source and target; keep them apart")
    t0 = time.time()
    runs = [run_seed(table, sources, targets, target_samples, source_samples, seed, use_gnn) for seed in range(seeds)]
    per_target = {}
    for tgt in targets:
        vals = {k: [r[tgt][k] for r in runs] for k in ("spearman", "kendall", "mape")}
        per_target[tgt] = {k: float(np.mean(v)) for k, v in vals.items()}
        per_target[tgt]["spearman_std"] = float(np.std(vals["spearman"]))
    seed_means = [np.mean([r[t]["spearman"] for t in targets]) for r in runs]
    return {"per_target": per_target, "mean_spearman": float(np.mean(seed_means)),
            "mean_spearman_std": float(np.std(seed_means)), "seeds": seeds, "seconds": time.time() - t0}
