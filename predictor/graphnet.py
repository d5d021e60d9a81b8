"""A graph network over a whole ONNX graph's kernels (NNLQP / PerfSAGE's idea), scikit-learn style.

    m = GraphNet().fit(onnx_paths, latency_ms)                  # X: .onnx paths or graphs.Graph objects
    mean_ms, std_ms = m.predict(["my.onnx"], return_std=True)

Nodes are the fused kernels of predictor/graphs.py with their features (standardised on the training
graphs); `layers` rounds of message passing (a residual update from the node itself, the mean of its
producers and the mean of its consumers); each node then gives a latency share (exp of its output, a power
law in its log FLOPs and bytes) and
the graph's latency is their sum plus a learned overhead: additive like the runtime, but
every kernel's share sees its neighbourhood (a cheap elementwise op after a conv costs less than alone).
Loss: squared error of log-latency (relative errors). `n_members` networks from different seeds on
bootstrap resamples of the graphs give the standard deviation (spread of their log-predictions).
`adapt(X, y)` fine-tunes every member on a new device's few graphs (`finetune_epochs`), few-shot.

Torch on the CPU, `torch_threads` (1) threads: the graphs are small. The weights are saved as arrays in the
data-only model file (predictor/modelfile.py), never pickled.
"""
from __future__ import annotations

import numpy as np
from sklearn.utils.validation import check_is_fitted

from .gnn import threads as _threads
from .graphmodel import GraphSurrogate, as_graphs, spread
from .graphs import FEATURES
from .kernels import features


def _batch(graphs, mean, std) -> dict:
    """Concatenated node features, edges offset per graph, each node's graph index, as tensors."""
    import torch
    fs = [features(g) for g in graphs]
    sizes = [len(f) for f in fs]
    offsets = np.r_[0, np.cumsum(sizes)[:-1]]
    x = (np.concatenate(fs) - mean) / std if fs else np.zeros((0, len(FEATURES)), np.float32)
    edges = np.concatenate([g.edges.astype(np.int64) + o for g, o in zip(graphs, offsets)]) if graphs else \
        np.zeros((0, 2), np.int64)
    seg = np.repeat(np.arange(len(graphs)), sizes)
    n = len(x)
    indeg = np.bincount(edges[:, 1], minlength=n).clip(1) if len(edges) else np.ones(n)
    outdeg = np.bincount(edges[:, 0], minlength=n).clip(1) if len(edges) else np.ones(n)
    return {"x": torch.tensor(x, dtype=torch.float32), "src": torch.tensor(edges[:, 0]),
            "dst": torch.tensor(edges[:, 1]), "seg": torch.tensor(seg), "n_graphs": len(graphs),
            "indeg": torch.tensor(indeg, dtype=torch.float32)[:, None],
            "outdeg": torch.tensor(outdeg, dtype=torch.float32)[:, None]}


def _net(n_features: int, hidden: int, layers: int, seed: int):
    import torch
    nn = torch.nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.inp = nn.Sequential(nn.Linear(n_features, hidden), nn.ReLU(), nn.Linear(hidden, hidden))
            self.self_ = nn.ModuleList([nn.Linear(hidden, hidden) for _ in range(layers)])
            self.pred = nn.ModuleList([nn.Linear(hidden, hidden, bias=False) for _ in range(layers)])
            self.succ = nn.ModuleList([nn.Linear(hidden, hidden, bias=False) for _ in range(layers)])
            self.norm = nn.ModuleList([nn.LayerNorm(hidden) for _ in range(layers)])
            self.head = nn.Sequential(nn.Linear(hidden + n_features, hidden), nn.ReLU(), nn.Linear(hidden, 1))
            self.overhead = nn.Parameter(torch.tensor(-3.0))

        def forward(self, b):
            x, src, dst = b["x"], b["src"], b["dst"]
            h = self.inp(x)
            for s, p, c, norm in zip(self.self_, self.pred, self.succ, self.norm):
                from_pred = torch.zeros_like(h).index_add_(0, dst, h[src]) / b["indeg"]
                from_succ = torch.zeros_like(h).index_add_(0, src, h[dst]) / b["outdeg"]
                h = h + torch.relu(norm(s(h) + p(from_pred) + c(from_succ)))
            # log-space share: log latency is near-linear in log FLOPs / bytes, so exp extrapolates as a power law
            share = torch.exp(torch.clamp(self.head(torch.cat([h, x], 1)).squeeze(1) - 4.0, -30.0, 10.0))
            total = torch.zeros(b["n_graphs"]).index_add_(0, b["seg"], share)
            return torch.log(total + torch.nn.functional.softplus(self.overhead) + 1e-6)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return Net()


class GraphNet(GraphSurrogate):
    def __init__(self, hidden=64, layers=3, epochs=150, lr=3e-3, batch_size=32, n_members=3, weight_decay=1e-4,
                 random_state=0, torch_threads=1):
        self.hidden, self.layers, self.epochs, self.lr, self.batch_size = hidden, layers, epochs, lr, batch_size
        self.n_members, self.weight_decay, self.random_state = n_members, weight_decay, random_state
        self.torch_threads = torch_threads

    def fit(self, X, y):
        graphs, y = self._training_data(X, y)
        F = np.concatenate([features(g) for g in graphs])
        self.feat_mean_ = F.mean(0).astype(np.float32)
        self.feat_std_ = (F.std(0) + 1e-3).astype(np.float32)
        self.y_scale_ = float(np.median(y))
        rng = np.random.default_rng(self.random_state)
        self.nets_ = []
        for i in range(self.n_members):
            rows = rng.choice(len(y), len(y), replace=True) if self.n_members > 1 else np.arange(len(y))
            net = _net(len(FEATURES), self.hidden, self.layers, int(self.random_state) + i)
            self._train(net, [graphs[r] for r in rows], y[rows], self.epochs, self.lr, int(self.random_state) + i)
            self.nets_.append(net)
        return self

    def adapt(self, X, y, finetune_epochs: int = 60, lr: float = 1e-3) -> "GraphNet":
        """Few-shot: go on training every member on a new device's graphs (the scale y_scale_ kept)."""
        check_is_fitted(self, "nets_")
        graphs, y = self._training_data(X, y, widen=True)
        for i, net in enumerate(self.nets_):
            self._train(net, graphs, y, finetune_epochs, lr, int(self.random_state) + 1000 + i)
        return self

    def _train(self, net, graphs, y, epochs, lr, seed):
        import torch
        target = torch.tensor(np.log(y / self.y_scale_), dtype=torch.float32)
        batches_per_epoch = max(1, int(np.ceil(len(graphs) / self.batch_size)))
        opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=self.weight_decay)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(1, epochs * batches_per_epoch))
        gen = np.random.default_rng(seed)
        # batches are made once per epoch order; encoding graphs to tensors once per graph chunk is cheap
        net.train()
        with _threads(self.torch_threads):
            for _ in range(epochs):
                perm = gen.permutation(len(graphs))
                for k in range(batches_per_epoch):
                    idx = perm[k * self.batch_size:(k + 1) * self.batch_size]
                    if len(idx) == 0:
                        continue
                    b = _batch([graphs[i] for i in idx], self.feat_mean_, self.feat_std_)
                    loss = torch.nn.functional.mse_loss(net(b), target[idx])
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                    sched.step()
        net.eval()

    def predict(self, X, return_std: bool = False):
        import torch
        check_is_fitted(self, "nets_")
        graphs = as_graphs(X)
        b = _batch(graphs, self.feat_mean_, self.feat_std_)
        with torch.no_grad(), _threads(self.torch_threads):
            logs = np.stack([net(b).numpy().astype(np.float64) for net in self.nets_]) + np.log(self.y_scale_)
        return spread(logs, return_std)

    # -- model file -------------------------------------------------------------------------------------------
    def _kind(self) -> str:
        return "graph-gnn"

    def _state(self) -> dict:
        nets = {f"m{i}.{k}": v.detach().numpy() for i, net in enumerate(self.nets_) for k, v in net.state_dict().items()}
        return {"feat_mean_": self.feat_mean_, "feat_std_": self.feat_std_, "y_scale_": self.y_scale_, "nets_": nets}

    def _restore(self, state: dict) -> None:
        import torch
        if set(state) != {"feat_mean_", "feat_std_", "y_scale_", "nets_"} or not isinstance(state["nets_"], dict):
            raise ValueError("its state is not a graph network's (feat_mean_, feat_std_, y_scale_, nets_)")
        for k in ("feat_mean_", "feat_std_"):
            if np.shape(state[k]) != (len(FEATURES),):
                raise ValueError(f"its {k} is not {len(FEATURES)} numbers")
        if not isinstance(state["y_scale_"], float) or not state["y_scale_"] > 0:
            raise ValueError("its y_scale_ is no positive number")
        self.feat_mean_ = state["feat_mean_"].astype(np.float32)
        self.feat_std_ = state["feat_std_"].astype(np.float32)
        self.y_scale_ = state["y_scale_"]
        nets = []
        for i in range(self.n_members):
            net = _net(len(FEATURES), self.hidden, self.layers, 0)
            want = net.state_dict()
            got = {k.split(".", 1)[1]: v for k, v in state["nets_"].items() if k.startswith(f"m{i}.")}
            if set(got) != set(want) or any(np.shape(got[k]) != tuple(want[k].shape) for k in want):
                raise ValueError(f"its member {i} weights do not fit a GraphNet(hidden={self.hidden}, "
                                 f"layers={self.layers})")
            net.load_state_dict({k: torch.tensor(v, dtype=torch.float32) for k, v in got.items()})
            net.eval()
            nets.append(net)
        if len(state["nets_"]) != sum(len(n.state_dict()) for n in nets):
            raise ValueError("it holds weights of more members than its n_members")
        self.nets_ = nets
