"""The hyperparameters a model may have, per model kind: checked on `save` and before a model file's are used.

A model file's `params` become constructor arguments, and some of them size what loading allocates (the
GNN's widths, thread counts) or what a prediction loops over: a 1 KB file asking for hidden=10**9 would have
torch allocate ~26 GB. Each is checked against a range wide enough for any model latkit fits, before
anything is built; `save` checks the same, so latkit never writes a model it would refuse to read.
Unknown parameters are refused by name.
"""
from __future__ import annotations

import math

from latkit.collector.spaces import SPACES

from .encodings import ENCODINGS

SEED = (0, 2 ** 32 - 1)


def whole(lo, hi, none=False):
    return ("whole", lo, hi, none)


def number(lo, hi, none=False, lo_open=False):
    return ("number", lo, hi, none, lo_open)


def choice(*values):
    return ("choice", values)


def either(*rules):
    return ("either", rules)


THREADS = whole(-1024, 1024, none=True)
REGRESSORS = {
    "ridge": {"alphas": ("numbers", 1, 1000, number(0, 1e12, lo_open=True))},
    "gbdt": {"n_estimators": whole(1, 100_000), "learning_rate": number(0, 10, lo_open=True),
             "num_leaves": whole(2, 131_072), "min_child_samples": whole(0, 10 ** 9),
             "subsample": number(0, 1, lo_open=True), "colsample_bytree": number(0, 1, lo_open=True),
             "random_state": whole(*SEED, none=True), "n_jobs": THREADS},
    "rf": {"n_estimators": whole(1, 100_000), "random_state": whole(*SEED, none=True), "n_jobs": THREADS,
           "max_features": either(choice(None, "sqrt", "log2"), number(0, 1, lo_open=True), whole(1, 10 ** 6)),
           "min_samples_leaf": either(whole(1, 10 ** 9), number(0, 1, lo_open=True))},
    "mlp": {"hidden_layer_sizes": ("numbers", 1, 32, whole(1, 4096)), "alpha": number(0, 1e12),
            "max_iter": whole(1, 10 ** 7), "random_state": whole(*SEED, none=True),
            "blas_threads": whole(1, 1024, none=True)},
}
SPACE = choice(*SPACES)
GNN = {"space": SPACE, "hidden": whole(1, 4096), "hw_dim": whole(1, 1024), "epochs": whole(0, 10 ** 6),
       "lr": number(0, 10, lo_open=True), "batch_size": whole(1, 10 ** 6), "rank_weight": number(0, 1e6),
       "weight_decay": number(0, 1e6), "random_state": whole(*SEED), "torch_threads": whole(1, 1024, none=True)}


def _fits(value, rule) -> bool:
    kind = rule[0]
    if kind == "whole":
        return (value is None and rule[3]) or (isinstance(value, int) and not isinstance(value, bool)
                                                and rule[1] <= value <= rule[2])
    if kind == "number":
        if value is None:
            return rule[3]
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        return ok and (value > rule[1] if rule[4] else value >= rule[1]) and value <= rule[2]
    if kind == "choice":
        return any(value is v or (isinstance(value, str) and value == v) for v in rule[1])
    if kind == "either":
        return any(_fits(value, r) for r in rule[1])
    _, lo, hi, each = rule  # "numbers": a list (JSON) or tuple of lo..hi values, each fitting `each`
    return isinstance(value, (list, tuple)) and lo <= len(value) <= hi and all(_fits(v, each) for v in value)


def _table(what: str, params, table: dict) -> None:
    if not isinstance(params, dict):
        raise ValueError(f"its {what} parameters are no JSON object")
    for key, value in params.items():
        if key not in table:
            raise ValueError(f"it has the {what} parameter {key!r}, which latkit does not know")
        if not _fits(value, table[key]):
            raise ValueError(f"its {what} parameter {key}={str(value)[:40]} is out of range or of the wrong type")


def check(kind, params) -> None:
    """ValueError naming the first hyperparameter of a `kind` model outside its range (nested models too)."""
    if not isinstance(params, dict):
        raise ValueError(f"its {kind} parameters are no JSON object")
    if kind in REGRESSORS:
        _table(kind, {k: v for k, v in params.items() if k != "regressor"},
               {"space": SPACE, "encoding": choice(*ENCODINGS)})
        _table(kind, params.get("regressor", {}), REGRESSORS[kind])
    elif kind == "gnn":
        _table(kind, params, GNN)
    elif kind == "ensemble":
        _table(kind, {k: v for k, v in params.items() if k != "base"},
               {"n_members": whole(1, 1000), "random_state": whole(*SEED, none=True)})
        base = params.get("base")
        if not isinstance(base, dict) or set(base) != {"kind", "params"} or base["kind"] in ("ensemble", "fewshot"):
            raise ValueError("its ensemble base is no {kind, params} of a single model")
        check(base["kind"], base["params"])
    elif kind == "fewshot":
        _table(kind, {k: v for k, v in params.items() if k not in ("bank", "gnn")},
               {"space": SPACE, "finetune_epochs": whole(0, 10 ** 6), "n_sources": whole(1, 10_000)})
        bank = params.get("bank")
        if not isinstance(bank, list) or not 1 <= len(bank) <= 10_000 or any(
                not isinstance(b, dict) or set(b) != {"kind", "params"} or b["kind"] not in REGRESSORS for b in bank):
            raise ValueError("its few-shot source bank is no list of {kind, params} of regressors")
        for b in bank:
            check(b["kind"], b["params"])
        if params.get("gnn") is not None:
            check("gnn", params["gnn"])
    else:
        raise ValueError(f"it names an unknown model kind {str(kind)[:40]!r}")


def space_of(kind, params) -> str:
    """The space a checked model predicts."""
    space = params["base"]["params"].get("space") if kind == "ensemble" else params.get("space")
    if space is None:
        raise ValueError("its parameters name no space")
    return space
