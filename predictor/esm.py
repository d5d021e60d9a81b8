"""ESM-style surrogate fitting for one device: sample, fit, find where the surrogate is weak, sample there.

1. The candidate pool is the archs the dataset holds for the device; none of their latencies is read
   until an arch is chosen.
2. A first quarter of the budget is chosen with the sampler (balanced over FLOPs by default).
3. Rounds: the current surrogate predicts the pool; the next batch is drawn from bins of predicted
   latency, weighted by the relative error the surrogate made in each bin on the batch before (its
   latencies were read when it was chosen, before it joined the training set): predictor/weakspots.py,
   the sampler `build` uses too. Stops at the budget, or when the batch error stops improving (plateau:
   < 0.5 point of +-10 % accuracy over two rounds).
4. Model choice: `auto` takes the model with the best 5-fold cross-validated Spearman, on the first batch
   for the rounds and on the whole training set for the final surrogate.
5. Every arch never chosen is the test set: Spearman, Kendall, MAPE, RMSE, +-5 % and +-10 % accuracy.
"""
from __future__ import annotations

import time
import numpy as np

from latkit.collector.errors import LatkitError
from latkit.collector.samplers import SAMPLERS, sample_from
from latkit.collector.spaces import as_space

from .data import LatencyTable
from .ensemble import Ensemble
from .metrics import relative_error, report
from .models import MODELS, make_model
from .weakspots import bin_errors, weak_spots

AUTO_CANDIDATES = ("ridge", "gbdt", "rf", "mlp")


def auto_candidates() -> tuple:
    """The AUTO_CANDIDATES that can run here: gbdt needs LightGBM, whose wheel also needs the system's
    libgomp (absent from some bare machines); `auto` then chooses among the others."""
    try:
        import lightgbm  # noqa: F401
    except (ImportError, OSError):
        return tuple(c for c in AUTO_CANDIDATES if c != "gbdt")
    return AUTO_CANDIDATES


def _spearman(y, pred) -> float:
    """Spearman of a fold; a constant prediction has no rank and scores as the worst (-1)."""
    import warnings
    from scipy.stats import spearmanr
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(np.nan_to_num(spearmanr(pred, y).statistic, nan=-1.0))


def choose_model(space, archs: list, y: np.ndarray, seed: int, candidates=None, n_jobs=-1) -> str:
    """The candidate (default: auto_candidates()) with the best mean 5-fold Spearman over the training archs."""
    from sklearn.metrics import make_scorer
    from sklearn.model_selection import KFold, cross_val_score
    cv, scoring = KFold(5, shuffle=True, random_state=seed), make_scorer(_spearman)
    scores = {name: cross_val_score(make_model(name, space, seed, n_jobs), archs, y, cv=cv, scoring=scoring).mean()
              for name in candidates or auto_candidates()}
    return max(scores, key=scores.get)


def fit(data, space, device: str, budget: int = 500, sampler: str = "balanced", model: str = "auto",
        seed: int = 0, rounds: int = 4, min_test: int = 10, n_jobs=-1, members: int = 5, progress=None) -> tuple:
    """Returns (fitted surrogate, report dict, test archs). `data`'s target (a LatencyTable of energy_mj, say)
    is what is fitted, latency_ms for a path. Only the training archs' latencies are read
    before the final scoring on the test archs. `n_jobs`: workers of gbdt and rf (-1: every core). The rounds
    choose with one model; the surrogate returned (and scored) is a bagged Ensemble of `members`, so that
    `predict(X, return_std=True)` works on what `fit` saves, as on `build`'s. `progress`: called with each
    step's text (collector.progress.Steps), as a fit takes minutes."""
    say = progress or (lambda step: None)
    if model not in MODELS + ("auto",):
        raise LatkitError(f"unknown model {model!r}; choose auto or one of {', '.join(MODELS)}")
    if sampler not in SAMPLERS:
        raise LatkitError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
    sp = as_space(space)
    table = data if isinstance(data, LatencyTable) else LatencyTable(data, sp)
    pool = table.archs(device)
    if budget < 10:
        raise LatkitError(f"--budget {budget} is too small; use at least 10")
    if len(pool) < budget + min_test:
        raise LatkitError(f"{device} has {len(pool)} {sp.name} archs; a budget of {budget} leaves too few to test "
                          f"(need {budget + min_test}); lower --budget or collect more")
    t0 = time.time()
    rng = np.random.default_rng(seed)
    first = max(10, budget // rounds)
    train = sample_from(sp, pool, first, sampler, seed)
    y_train = table.latency(device, train)
    batch = (budget - first) // max(1, rounds - 1)
    history = []
    # auto: chosen by CV on the first batch for the rounds, and again on the full training set at the end
    if model == "auto":
        say(f"choosing a model by 5-fold CV on {len(train)} archs")
    name = choose_model(sp, train, y_train, seed, n_jobs=n_jobs) if model == "auto" else model
    while len(train) < budget:
        surrogate = make_model(name, sp, seed, n_jobs).fit(train, y_train)
        taken = set(train)
        rest = [a for a in pool if a not in taken]
        k = min(batch or budget - len(train), budget - len(train))
        pred_rest = surrogate.predict(rest)
        chosen = weak_spots(pred_rest, k, history[-1]["bins"] if history else None, rng)
        nxt, pred_nxt = [rest[i] for i in chosen], pred_rest[chosen]
        y_nxt = table.latency(device, nxt)
        err = relative_error(pred_nxt, y_nxt)
        history.append({"n_train": len(train), "acc10": float(np.mean(err <= 0.10)), "mape": float(err.mean() * 100),
                        "bins": bin_errors(pred_nxt, err, pred_rest)})
        train, y_train = train + nxt, np.concatenate([y_train, y_nxt])
        say(f"round {len(history)}: {len(train)} training archs (±10 % on the last batch: "
            f"{history[-1]['acc10'] * 100:.0f} %)")
        if len(history) >= 3 and history[-1]["acc10"] - history[-3]["acc10"] < 0.005:
            break
    if model == "auto":
        say(f"choosing the final model by 5-fold CV on {len(train)} archs")
    name = choose_model(sp, train, y_train, seed, n_jobs=n_jobs) if model == "auto" else model
    say(f"fitting {name} ({members} bagged members) on {len(train)} archs")
    surrogate = Ensemble(make_model(name, sp, seed, n_jobs), members, seed).fit(train, y_train)
    surrogate.target_ = table.target  # what y was: the model file records it
    taken = set(train)
    test = [a for a in pool if a not in taken]
    result = report(surrogate.predict(test), table.latency(device, test))
    result.update({"n_train": len(train), "n_test": len(test), "model": name, "members": members, "sampler": sampler,
                   "rounds": [{k: v for k, v in h.items() if k != "bins"} for h in history],
                   "seconds": time.time() - t0})
    return surrogate, result, test

