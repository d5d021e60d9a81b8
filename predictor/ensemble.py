"""Uncertainty: a bagged ensemble of any latkit model, whose spread is the prediction's standard deviation.

    model = Ensemble(make_model("gbdt", "nb201"), n_members=5).fit(archs, latency_ms)
    mean_ms, std_ms = model.predict(archs, return_std=True)

Each member is a clone of `base` fitted on a bootstrap resample of the training archs (its own seed). The
prediction is the members' geometric mean (they learn log-latency); the standard deviation in ms is the
spread of the members' log-predictions times that mean (the delta method), so it is relative, as latency
errors are. Disagreement is high where the training archs say little: the build loop measures there next.
"""
from __future__ import annotations

import numpy as np
from sklearn.base import clone
from sklearn.utils.validation import check_is_fitted

from .base import Surrogate, arch_list, training_data
from .state import flatten, nest


class Ensemble(Surrogate):
    """`n_members` bootstrap copies of `base` (any latkit Surrogate): predict(X, return_std=True) gives the
    latency_ms and its standard deviation."""

    def __init__(self, base, n_members=5, random_state=0):
        self.base, self.n_members, self.random_state = base, n_members, random_state

    @property
    def space(self) -> str:
        return self.base.space

    def fit(self, X, y):
        archs, log_y = training_data(X, y)
        rng = np.random.default_rng(self.random_state)
        y = np.exp(log_y)
        self.members_ = []
        for i in range(self.n_members):
            rows = rng.choice(len(archs), len(archs), replace=True) if self.n_members > 1 else np.arange(len(archs))
            member = clone(self.base)
            if "random_state" in member.get_params():
                member.set_params(random_state=int(self.random_state) + i)
            self.members_.append(member.fit([archs[r] for r in rows], y[rows]))
        return self

    def predict(self, X, return_std: bool = False):
        check_is_fitted(self, "members_")
        logs = np.log(np.stack([m.predict(arch_list(X)) for m in self.members_]))
        mean = np.exp(logs.mean(0))
        return (mean, mean * logs.std(0)) if return_std else mean

    # -- the model file: the members' kind, hyperparameters and state, flattened -----------------------------
    def _kind(self) -> str:
        return "ensemble"

    def _params(self) -> dict:
        m = self.members_[0]
        return {"n_members": self.n_members, "random_state": self.random_state,
                "base": {"kind": m._kind(), "params": m._params()}}

    def _state(self) -> dict:
        return {"members_": flatten({str(i): m._state() for i, m in enumerate(self.members_)})}

    @classmethod
    def from_file(cls, params: dict, state: dict, build) -> "Ensemble":
        """The ensemble a model file describes; `build(kind, params, state)` makes each member."""
        params = dict(params)
        base = params.pop("base")
        states = nest(state["members_"])
        if sorted(states) != sorted(str(i) for i in range(params.get("n_members", 5))):
            raise ValueError(f"it holds {len(states)} ensemble members, not its n_members")
        members = [build(base["kind"], base["params"], states[str(i)]) for i in range(len(states))]
        model = cls(members[0], **params)
        model.members_ = members
        return model
