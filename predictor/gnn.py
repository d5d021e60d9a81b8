"""NASFLAT-style graph network over the op-on-node graph; several devices share it through hardware embeddings.

Node features = op embedding ++ the device's hardware embedding; 3 graph-convolution layers over the
symmetric-normalised adjacency (both directions); mean readout ++ log FLOPs -> MLP -> log-latency; loss MSE +
pairwise ranking. `fit(X, y)` is one device, scikit-learn style (predictor/base.py); `fit_devices` trains on
(arch, device) pairs (transfer's pretraining) and `adapt` goes on training from the current weights (its
fine-tuning), the only way to warm-start: `fit` and `fit_devices` always start afresh.

`torch_threads` is 1 by default: the network's tensors are small, so more threads gain little on a free
machine and lose several-fold on a busy one (transfer's pretraining for fbnet task 0: 27-37 s on one thread,
157-187 s on two, on a 2-core VM loaded by other work).
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Sequence

import numpy as np
from sklearn.utils.validation import check_is_fitted

from latkit.collector.spaces import as_space

from .encodings import graphs
from .base import Surrogate, arch_list, training_data


@contextmanager
def threads(n):
    """torch threads = n for the block (None: as they are), restored after: the setting is process-wide and
    other code shares it."""
    import torch
    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class GNN(Surrogate):
    def __init__(self, space, hidden=64, hw_dim=16, epochs=150, lr=3e-3, batch_size=128, rank_weight=0.5,
                 weight_decay=1e-4, random_state=0, torch_threads=1):
        self.space, self.hidden, self.hw_dim, self.epochs, self.lr = space, hidden, hw_dim, epochs, lr
        self.batch_size, self.rank_weight, self.weight_decay = batch_size, rank_weight, weight_decay
        self.random_state, self.torch_threads = random_state, torch_threads

    # -- one device, scikit-learn style --------------------------------------------------------------
    def fit(self, X, y):
        archs, y = training_data(X, y)
        self.fit_devices(archs, np.zeros(len(archs), dtype=np.int64), (y - y.mean()) / (y.std() + 1e-9), 1)
        self.y_mean_, self.y_std_ = float(y.mean()), float(y.std() + 1e-9)
        return self

    def predict(self, X):
        check_is_fitted(self, "y_mean_")
        return np.exp(self.predict_device(arch_list(X), 0) * self.y_std_ + self.y_mean_)

    # -- several devices -----------------------------------------------------------------------------
    def fit_devices(self, archs: Sequence[str], device_ids, log_latency, n_devices: int) -> "GNN":
        """Train afresh on (arch, device) pairs; `log_latency` standardised per device by the caller."""
        for attr in [k for k in vars(self) if k.endswith("_")]:
            delattr(self, attr)
        _, _, extra = graphs(self.space, list(archs))
        self.extra_mean_, self.extra_std_ = extra.mean(0), extra.std(0) + 1e-6
        self.net_ = self._build(n_devices)
        return self.adapt(archs, device_ids, log_latency, self.epochs, self.lr, self.batch_size)

    def adapt(self, archs: Sequence[str], device_ids, log_latency, epochs: int, lr: float, batch_size: int) -> "GNN":
        """Go on training the current network for `epochs` (one-cycle learning rate peaking at `lr`)."""
        import torch
        _, ops, extra = graphs(self.space, list(archs))
        ops_t = torch.tensor(ops)
        extra_t = torch.tensor((extra - self.extra_mean_) / self.extra_std_, dtype=torch.float32)
        dev_t = torch.tensor(np.asarray(device_ids), dtype=torch.long)
        y_t = torch.tensor(np.asarray(log_latency), dtype=torch.float32)
        opt = torch.optim.AdamW(self.net_.parameters(), lr=lr, weight_decay=self.weight_decay)
        steps = max(1, epochs * int(np.ceil(len(y_t) / batch_size)))
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
        gen = torch.Generator().manual_seed(self.random_state)
        self.net_.train()
        with threads(self.torch_threads):
            for _ in range(epochs):
                perm = torch.randperm(len(y_t), generator=gen)
                for i in range(0, len(perm), batch_size):
                    b = perm[i:i + batch_size]
                    loss = self._loss(self.net_(ops_t[b], dev_t[b], extra_t[b]), y_t[b])
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                    sched.step()
        self.net_.eval()
        return self

    def _loss(self, pred, y):
        import torch.nn.functional as F
        loss = F.mse_loss(pred, y)
        if self.rank_weight and len(y) > 1:
            dp, dy = pred[:, None] - pred[None, :], y[:, None] - y[None, :]
            mask = dy.abs() > 1e-6
            loss = loss + self.rank_weight * F.softplus(-dp[mask] * dy[mask].sign()).mean()
        return loss

    def predict_device(self, archs: Sequence[str], device_id: int) -> np.ndarray:
        """Standardised log-latency predictions for one device; batched (all 15,625 nb201 archs in well under
        a second)."""
        import torch
        check_is_fitted(self, "net_")
        _, ops, extra = graphs(self.space, list(archs))
        with torch.no_grad(), threads(self.torch_threads):
            out = self.net_(torch.tensor(ops), torch.full((len(ops),), device_id, dtype=torch.long),
                            torch.tensor((extra - self.extra_mean_) / self.extra_std_, dtype=torch.float32))
        return out.numpy().astype(np.float64)

    # -- the network ---------------------------------------------------------------------------------
    def _build(self, n_devices: int):
        import torch
        nn = torch.nn
        space = as_space(self.space)
        adj = space.adjacency()
        a = adj + adj.T + np.eye(len(adj), dtype=np.float32)
        d = 1.0 / np.sqrt(a.sum(1))
        norm = torch.tensor(a * d[:, None] * d[None, :])
        vocab, hidden, hw_dim = len(space.graph_vocab), self.hidden, self.hw_dim

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

        with torch.random.fork_rng(devices=[]):  # seeded weights without touching the caller's torch RNG
            torch.manual_seed(self.random_state)
            return Net()

    # -- the model file ------------------------------------------------------------------------------
    def _kind(self) -> str:
        return "gnn"

    def _state(self) -> dict:
        state = {k: v for k, v in vars(self).items() if k.endswith("_") and k != "net_"}
        return dict(state, net_={k: v.numpy() for k, v in self.net_.state_dict().items()})

    def _restore(self, state: dict) -> None:
        import torch
        state = dict(state)
        net = state.pop("net_")
        extra = set(state) - {"extra_mean_", "extra_std_", "y_mean_", "y_std_"}
        if extra or not isinstance(net, dict) or getattr(net["hw.weight"], "ndim", 0) != 2:
            raise ValueError(f"its GNN state holds {sorted(extra)[:1] or 'no hardware embedding'}, not a GNN's")
        vars(self).update(state)
        self.net_ = self._build(len(net["hw.weight"]))
        self.net_.load_state_dict({k: torch.tensor(v) for k, v in net.items()})
        self.net_.eval()
