"""Surrogate models behind one scikit-learn-style interface: fit(archs, latency_ms), predict(archs), save/load.

All models learn log-latency (latency spans orders of magnitude across a space, and errors are relative).
ridge, gbdt (LightGBM), rf and mlp work on `features` (one-hot + analytic costs); gnn is a NASFLAT-style
graph network (op embeddings + a learned hardware embedding on every node, graph convolutions, an MLP head,
MSE + pairwise ranking loss) that can hold several devices at once.

Learned state is plain arrays (standardiser mean/scale, ridge coefficients, MLP weights, the forest's
trees as flat node arrays walked with numpy, the GNN's state_dict) or LightGBM's own text model, so a
model file is data only. A `.latkit-model` file is a zip archive of:
- `meta.json`: {"format": "latkit-model", "version": 1, "model": "ridge", "params": {hyperparameters}};
- `<attr>.npy`: a learned array (a number as a 0-d array), numpy's .npy format, read with allow_pickle=False;
- `<attr>.<key>.npy`: entry <key> of a learned dict of arrays (MLP layers, the GNN's state_dict);
- `<attr>.txt`: learned text (the LightGBM booster, `model_to_string` format).
Loading runs nothing from the file: pickles, object arrays, other member names (paths included) and
format versions newer than this code are refused in one line.
"""
from __future__ import annotations

import io
import json
import re
import zipfile
import zlib
from typing import Optional, Sequence

import numpy as np

from collector.errors import LatkitError

from .encodings import adjacency, encode, graph_vocab, graphs

MODELS = ("ridge", "gbdt", "rf", "mlp", "gnn")
FORMAT_VERSION = 1
_MEMBER = re.compile(r"([a-z][a-z0-9_]*_)(?:\.([A-Za-z0-9_.]+))?\.(npy|txt)")  # attr[.key].ext, no path


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

    def _state(self) -> dict:
        """Learned state: attribute -> array, number, str or dict of arrays (the attributes ending in '_')."""
        return {k: v for k, v in vars(self).items() if k.endswith("_")}

    def _restore(self, state: dict) -> None:
        vars(self).update(state)

    def save(self, path) -> None:
        """Write the model file described in the module docstring."""
        params = {k: v for k, v in vars(self).items() if not k.endswith("_")}
        meta = {"format": "latkit-model", "version": FORMAT_VERSION, "model": self.name, "params": params}
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
            z.writestr("meta.json", json.dumps(meta, indent=1))
            for attr, value in self._state().items():
                if isinstance(value, str):
                    z.writestr(f"{attr}.txt", value)
                elif isinstance(value, dict):
                    for key, arr in value.items():
                        z.writestr(f"{attr}.{key}.npy", _npy(arr))
                else:
                    z.writestr(f"{attr}.npy", _npy(value))

    @staticmethod
    def load(path) -> "Surrogate":
        """Read a model file as data; anything else is refused in one line and nothing in it is run."""
        try:
            with open(path, "rb") as f:
                pickled = f.read(1) == b"\x80"  # a pickle (protocol >= 2), as latkit wrote before format 1
        except OSError as e:
            raise LatkitError(f"cannot read predictor file {path}: {e.strerror}; give a file written by latkit "
                              "predictor fit") from None
        if pickled:
            raise LatkitError(f"{path} is an old pickle-based model file, which latkit no longer reads (it could "
                              "run code); re-fit with latkit predictor fit")
        try:
            with zipfile.ZipFile(path) as z:
                return _read(z, path)
        except (OSError, EOFError, zipfile.BadZipFile, zlib.error, NotImplementedError, ValueError, TypeError,
                RuntimeError) as e:
            raise LatkitError(f"cannot load a predictor from {path}: {e}; give a file written by latkit predictor "
                              "fit") from None


def _npy(arr) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.asarray(arr), allow_pickle=False)
    return buf.getvalue()


def _read(z: zipfile.ZipFile, path) -> Surrogate:
    names = z.namelist()
    stray = [n for n in names if n != "meta.json" and not _MEMBER.fullmatch(n)]
    if stray:
        raise ValueError(f"it holds {stray[0]!r}, which is no member of a model file")
    if "meta.json" not in names:
        raise ValueError("it has no meta.json")
    meta = json.loads(z.read("meta.json"))
    if not isinstance(meta, dict) or meta.get("format") != "latkit-model":
        raise ValueError("its meta.json does not describe a latkit model")
    version = meta.get("version")
    if not isinstance(version, int) or version < 1:
        raise ValueError(f"its format version {version!r} is not one latkit ever wrote")
    if version > FORMAT_VERSION:
        raise LatkitError(f"{path} is model format {version}, newer than this latkit reads ({FORMAT_VERSION}); "
                          "upgrade latkit, or re-fit the model with this one")
    if meta.get("model") not in REGISTRY:
        raise ValueError(f"it names an unknown model kind {meta.get('model')!r}")
    model = REGISTRY[meta["model"]](**meta.get("params", {}))
    state = {}
    for name in names:
        if name == "meta.json":
            continue
        attr, key, ext = _MEMBER.fullmatch(name).groups()
        if ext == "txt":
            value = z.read(name).decode()
        else:
            arr = np.lib.format.read_array(io.BytesIO(z.read(name)), allow_pickle=False)
            value = arr.item() if arr.ndim == 0 else arr
        if key:
            state.setdefault(attr, {})[key] = value
        else:
            state[attr] = value
    try:
        model._restore(state)
    except KeyError as e:
        raise ValueError(f"it lacks learned state {e.args[0]!r}") from None
    return model


def _check_latency(latency_ms) -> np.ndarray:
    y = np.asarray(latency_ms, dtype=np.float64)
    if not np.all(np.isfinite(y)) or np.any(y <= 0):
        raise LatkitError("latencies must be positive finite numbers; drop NaN, zero or negative rows first")
    return y


class _Tabular(Surrogate):
    """Models on the `features` encoding, standardised. Each fits a library estimator (_make) and keeps
    only its learned arrays (_export), which _predict_scaled evaluates with numpy (or LightGBM)."""

    def _x(self, archs):
        return encode(self.space, archs, "features")

    def _fit(self, archs, y):
        from sklearn.preprocessing import StandardScaler
        x = self._x(archs)
        scaler = StandardScaler().fit(x)
        self.mean_, self.scale_ = scaler.mean_, scaler.scale_
        self._export(self._make().fit(scaler.transform(x), y))

    def _predict(self, archs):
        return self._predict_scaled((self._x(archs) - self.mean_) / self.scale_)


class Ridge(_Tabular):
    name = "ridge"

    def _make(self):
        from sklearn.linear_model import RidgeCV
        return RidgeCV(alphas=np.logspace(-3, 3, 13))

    def _export(self, est):
        self.coef_, self.intercept_ = est.coef_, float(est.intercept_)

    def _predict_scaled(self, x):
        return x @ self.coef_ + self.intercept_


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

    def _export(self, est):
        self.booster_ = est.booster_

    def _predict_scaled(self, x):
        return self.booster_.predict(x)

    def _state(self):
        return dict(super()._state(), booster_=self.booster_.model_to_string())

    def _restore(self, state):
        import lightgbm
        text = state.pop("booster_")
        super()._restore(state)
        try:
            self.booster_ = lightgbm.Booster(model_str=text)
        except lightgbm.basic.LightGBMError as e:
            raise ValueError(f"its LightGBM model does not parse ({e})") from None


class RF(_Tabular):
    """scikit-learn's random forest, kept as its trees' node arrays (all trees end to end, a leaf's children
    being itself) and walked with numpy: every tree at once, one level per step."""

    name = "rf"

    def _make(self):
        from sklearn.ensemble import RandomForestRegressor
        return RandomForestRegressor(n_estimators=300, min_samples_leaf=1, max_features=0.5, n_jobs=2,
                                     random_state=self.seed)

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

    def _export(self, est):
        self.layers_ = {**{f"w{i}": w for i, w in enumerate(est.coefs_)},
                        **{f"b{i}": b for i, b in enumerate(est.intercepts_)}}

    def _predict_scaled(self, x):
        n = len(self.layers_) // 2
        for i in range(n):  # ReLU hidden layers, identity output, as MLPRegressor
            x = x @ self.layers_[f"w{i}"] + self.layers_[f"b{i}"]
            if i < n - 1:
                x = np.maximum(x, 0)
        return x[:, 0]


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

    def _state(self):
        return dict(super()._state(), net_={k: v.numpy() for k, v in self.net_.state_dict().items()})

    def _restore(self, state):
        torch = _torch()
        net = state.pop("net_")
        super()._restore(state)
        self.net_ = self._build(len(net["hw.weight"]))
        self.net_.load_state_dict({k: torch.tensor(v) for k, v in net.items()})
        self.net_.eval()


REGISTRY = {"ridge": Ridge, "gbdt": GBDT, "rf": RF, "mlp": MLP, "gnn": GNN}


def make_model(name: str, space: str, seed: int = 0) -> Surrogate:
    if name not in REGISTRY:
        raise LatkitError(f"unknown model {name!r}; choose one of {', '.join(MODELS)} (or auto)")
    return REGISTRY[name](space, seed=seed)
