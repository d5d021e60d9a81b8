"""Surrogate models behind one scikit-learn-style interface: fit(archs, latency_ms), predict(archs), save/load.

All models learn log-latency (latency spans orders of magnitude across a space, and errors are relative).
ridge, gbdt (LightGBM), rf and mlp work on `features` (one-hot + analytic costs); gnn is a NASFLAT-style
graph network (op embeddings + a learned hardware embedding on every node, graph convolutions, an MLP head,
MSE + pairwise ranking loss) that can hold several devices at once.
"""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from collector.errors import LatkitError

from .encodings import adjacency, encode, graph_vocab, graphs

MODELS = ("ridge", "gbdt", "rf", "mlp", "gnn")


class Surrogate:
    """Base: hyperparameters in __init__, learned state in attributes ending in '_'."""

    name = ""

    def __init__(self, space: str, seed: int = 0):
        self.space, self.seed = space, seed

    def fit(self, archs: Sequence[str], latency_ms) -> "Surrogate":
        y = np.log(_check_latency(latency_ms))
        self._fit(list(archs), y)
        return self

    def predict(self, archs: Sequence[str]) -> np.ndarray:
        return np.exp(self._predict(list(archs)))

    def save(self, path) -> None:
        Path(path).write_bytes(pickle.dumps(self))

    @staticmethod
    def load(path) -> "Surrogate":
        try:
            obj = pickle.loads(Path(path).read_bytes())
        except (OSError, pickle.UnpicklingError, EOFError) as e:
            raise LatkitError(f"cannot load a predictor from {path}: {e}; give a file written by latkit predictor fit")
        if not isinstance(obj, Surrogate):
            raise LatkitError(f"{path} is not a latkit predictor")
        return obj


def _check_latency(latency_ms) -> np.ndarray:
    y = np.asarray(latency_ms, dtype=np.float64)
    if not np.all(np.isfinite(y)) or np.any(y <= 0):
        raise LatkitError("latencies must be positive finite numbers; drop NaN, zero or negative rows first")
    return y


class _Tabular(Surrogate):
    """Models on the `features` encoding, standardised."""

    def _x(self, archs):
        return encode(self.space, archs, "features")

    def _fit(self, archs, y):
        from sklearn.preprocessing import StandardScaler
        x = self._x(archs)
        self.scaler_ = StandardScaler().fit(x)
        self.model_ = self._make().fit(self.scaler_.transform(x), y)

    def _predict(self, archs):
        return self.model_.predict(self.scaler_.transform(self._x(archs)))


class Ridge(_Tabular):
    name = "ridge"

    def _make(self):
        from sklearn.linear_model import RidgeCV
        return RidgeCV(alphas=np.logspace(-3, 3, 13))


class GBDT(_Tabular):
    name = "gbdt"

    def __init__(self, space: str, seed: int = 0, n_estimators: int = 600, learning_rate: float = 0.05):
        super().__init__(space, seed)
        self.n_estimators, self.learning_rate = n_estimators, learning_rate

    def _make(self):
        import lightgbm
        return lightgbm.LGBMRegressor(n_estimators=self.n_estimators, learning_rate=self.learning_rate, num_leaves=15,
                                      min_child_samples=5, subsample=0.8, subsample_freq=1, colsample_bytree=0.8,
                                      random_state=self.seed, n_jobs=2, verbose=-1)


class RF(_Tabular):
    name = "rf"

    def _fit(self, archs, y):
        super()._fit(archs, y)
        self.model_.set_params(n_jobs=1)  # threaded prediction sums trees in varying order: not reproducible

    def _make(self):
        from sklearn.ensemble import RandomForestRegressor
        return RandomForestRegressor(n_estimators=300, min_samples_leaf=1, max_features=0.5, n_jobs=2,
                                     random_state=self.seed)


class MLP(_Tabular):
    name = "mlp"

    def _make(self):
        from sklearn.neural_network import MLPRegressor
        # L-BFGS: full-batch and reliable on the few hundred samples a latency budget buys; its iteration cap
        # doubles as early stopping (the convergence warning it raises there is expected)
        return MLPRegressor(hidden_layer_sizes=(64, 64), alpha=1.0, solver="lbfgs", max_iter=500,
                            random_state=self.seed)

    def _fit(self, archs, y):
        import warnings
        from sklearn.exceptions import ConvergenceWarning
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            super()._fit(archs, y)


def _torch():
    import torch
    return torch


class GNN(Surrogate):
    """NASFLAT-style GNN over the op-on-node graph; several devices share it through hardware embeddings.

    Node features = op embedding ++ the device's hardware embedding; 3 graph-convolution layers over the
    symmetric-normalised adjacency (both directions); mean readout ++ log FLOPs -> MLP -> log-latency.
    """

    name = "gnn"

    def __init__(self, space: str, seed: int = 0, hidden: int = 64, hw_dim: int = 16, epochs: int = 150,
                 lr: float = 3e-3, batch_size: int = 128, rank_weight: float = 0.5):
        super().__init__(space, seed)
        self.hidden, self.hw_dim, self.epochs, self.lr = hidden, hw_dim, epochs, lr
        self.batch_size, self.rank_weight = batch_size, rank_weight

    # -- the network ---------------------------------------------------------------------------------
    def _build(self, n_devices: int):
        torch = _torch()
        nn = torch.nn
        torch.manual_seed(self.seed)
        adj = adjacency(self.space)
        a = adj + adj.T + np.eye(len(adj), dtype=np.float32)
        d = 1.0 / np.sqrt(a.sum(1))
        norm = torch.tensor(a * d[:, None] * d[None, :])
        vocab, hidden, hw_dim = len(graph_vocab(self.space)), self.hidden, self.hw_dim

        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.register_buffer("norm", norm)
                self.op = nn.Embedding(vocab, hidden)
                self.hw = nn.Embedding(n_devices, hw_dim)
                self.layers = nn.ModuleList([nn.Linear(hidden + hw_dim, hidden) for _ in range(3)])
                self.head = nn.Sequential(nn.Linear(hidden + hw_dim + 1, hidden), nn.ReLU(), nn.Linear(hidden, 1))

            def forward(self, ops, device, extra):
                hw = self.hw(device)[:, None, :].expand(-1, ops.shape[1], -1)
                h = self.op(ops)
                for layer in self.layers:
                    h = torch.relu(self.norm @ layer(torch.cat([h, hw], -1))) + h
                return self.head(torch.cat([h.mean(1), self.hw(device), extra], -1)).squeeze(-1)

        return Net()

    # -- multi-device training -----------------------------------------------------------------------
    def fit_devices(self, archs: Sequence[str], device_ids, log_latency, n_devices: int,
                    epochs: Optional[int] = None, params=None) -> "GNN":
        """Train on (arch, device) pairs; y is log-latency, standardised per device inside."""
        torch = _torch()
        torch.set_num_threads(2)
        _, ops, extra = graphs(self.space, list(archs))
        if not hasattr(self, "net_"):
            self.net_ = self._build(n_devices)
            self.extra_mean_, self.extra_std_ = extra.mean(0), extra.std(0) + 1e-6
        ops_t = torch.tensor(ops)
        extra_t = torch.tensor((extra - self.extra_mean_) / self.extra_std_, dtype=torch.float32)
        dev_t = torch.tensor(np.asarray(device_ids), dtype=torch.long)
        y_t = torch.tensor(np.asarray(log_latency), dtype=torch.float32)
        opt = torch.optim.AdamW(params if params is not None else self.net_.parameters(), lr=self.lr, weight_decay=1e-4)
        epochs = epochs or self.epochs
        steps = max(1, epochs * int(np.ceil(len(y_t) / self.batch_size)))
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=self.lr, total_steps=steps)
        gen = torch.Generator().manual_seed(self.seed)
        self.net_.train()
        for _ in range(epochs):
            perm = torch.randperm(len(y_t), generator=gen)
            for i in range(0, len(perm), self.batch_size):
                b = perm[i:i + self.batch_size]
                pred = self.net_(ops_t[b], dev_t[b], extra_t[b])
                loss = torch.nn.functional.mse_loss(pred, y_t[b])
                if self.rank_weight and len(b) > 1:
                    dp, dy = pred[:, None] - pred[None, :], y_t[b][:, None] - y_t[b][None, :]
                    mask = dy.abs() > 1e-6
                    loss = loss + self.rank_weight * torch.nn.functional.softplus(-dp[mask] * torch.sign(dy[mask])).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
        self.net_.eval()
        return self

    def predict_device(self, archs: Sequence[str], device_id: int) -> np.ndarray:
        """Log-latency predictions for one device; batched (all 15,625 nb201 archs in well under a second)."""
        torch = _torch()
        _, ops, extra = graphs(self.space, list(archs))
        with torch.no_grad():
            out = self.net_(torch.tensor(ops), torch.full((len(ops),), device_id, dtype=torch.long),
                            torch.tensor((extra - self.extra_mean_) / self.extra_std_, dtype=torch.float32))
        return out.numpy().astype(np.float64)

    # -- single-device interface ---------------------------------------------------------------------
    def _fit(self, archs, y):
        self.y_mean_, self.y_std_ = float(y.mean()), float(y.std() + 1e-9)
        self.fit_devices(archs, np.zeros(len(archs), dtype=np.int64), (y - self.y_mean_) / self.y_std_, 1)

    def _predict(self, archs):
        return self.predict_device(archs, 0) * self.y_std_ + self.y_mean_

    def __getstate__(self):
        state = dict(self.__dict__)
        if "net_" in state:
            state["net_"] = (state["net_"].state_dict(), state["net_"].hw.num_embeddings)
        return state

    def __setstate__(self, state):
        net = state.pop("net_", None)
        self.__dict__.update(state)
        if net is not None:
            self.net_ = self._build(net[1])
            self.net_.load_state_dict(net[0])
            self.net_.eval()


REGISTRY = {"ridge": Ridge, "gbdt": GBDT, "rf": RF, "mlp": MLP, "gnn": GNN}


def make_model(name: str, space: str, seed: int = 0) -> Surrogate:
    if name not in REGISTRY:
        raise LatkitError(f"unknown model {name!r}; choose one of {', '.join(MODELS)} (or auto)")
    return REGISTRY[name](space, seed=seed)
