"""Accuracy of latency predictions: rank agreement (what NAS needs) and relative error (what budgets need)."""
from __future__ import annotations

import numpy as np
from scipy.stats import kendalltau, spearmanr

# The keys of `report`, in its order: what `predictor fit` prints and saves, and scripts/gpu_e2e.py reports.
METRICS = ("spearman", "kendall", "mape", "rmse", "acc5", "acc10")


def relative_error(pred, true) -> np.ndarray:
    pred, true = np.asarray(pred, dtype=np.float64), np.asarray(true, dtype=np.float64)
    return np.abs(pred - true) / true


def report(pred, true) -> dict:
    """spearman, kendall, mape (%), rmse (ms), acc5 / acc10 (share within +-5 % / +-10 %)."""
    pred, true = np.asarray(pred, dtype=np.float64), np.asarray(true, dtype=np.float64)
    rel = relative_error(pred, true)
    return {"spearman": float(spearmanr(pred, true).statistic), "kendall": float(kendalltau(pred, true).statistic),
            "mape": float(rel.mean() * 100), "rmse": float(np.sqrt(np.mean((pred - true) ** 2))),
            "acc5": float(np.mean(rel <= 0.05)), "acc10": float(np.mean(rel <= 0.10))}
