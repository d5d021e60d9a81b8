"""Decision trees as flat node arrays, checked and evaluated with numpy, so that a model file's trees are data.

Both tree models keep all their trees end to end in one set of node arrays: `left` and `right` (a leaf's
children are itself), `feature`, `threshold`, `value` (a leaf's output) and `roots` (each tree's first node).
ForestRegressor walks scikit-learn's trees with them. GBDTRegressor keeps LightGBM's boosted trees the same
way, with LightGBM's rule for missing values per node (`missing`: 0 none, 1 zero, 2 NaN; `default_left`),
taken from `booster.dump_model()`: loading a model never hands file contents to LightGBM's native parser
(which aborts or segfaults the process on crafted text), and prediction sums leaf values with numpy.

`check` is what makes arrays from a file safe to walk: every index in range, every child a later node of its
own tree with exactly one parent (so no cycles, and a walk ends), depth at most MAX_DEPTH.
"""
from __future__ import annotations

import numpy as np

MAX_NODES = 1 << 24  # all trees together; a 300-tree forest on 15,625 archs has ~6M nodes
MAX_DEPTH = 512
MISSING = ("None", "Zero", "NaN")  # LightGBM's missing_type, by the index stored in `missing`
ZERO = float(np.float32(1e-35))  # LightGBM's kZeroThreshold: |x| <= it counts as zero
BOOSTED_KEYS = ("left", "right", "feature", "threshold", "value", "roots", "missing", "default_left")


def _ints(a, what: str) -> np.ndarray:
    if not isinstance(a, np.ndarray) or a.ndim != 1 or a.dtype.kind not in "iu":
        raise ValueError(f"its tree array {what} is not a 1-D integer array")
    return a.astype(np.int64)


def check(left, right, feature, threshold, value, roots, n_features: int) -> int:
    """The depth of the trees (the steps a walk takes), or a ValueError naming what is inconsistent."""
    left, right, feature, roots = (_ints(a, w) for a, w in ((left, "left"), (right, "right"),
                                                              (feature, "feature"), (roots, "roots")))
    for a, w in ((threshold, "threshold"), (value, "value")):
        if not isinstance(a, np.ndarray) or a.ndim != 1 or a.dtype.kind != "f":
            raise ValueError(f"its tree array {w} is not a 1-D float array")
    n = len(left)
    if not 1 <= n <= MAX_NODES or any(len(a) != n for a in (right, feature, threshold, value)):
        raise ValueError(f"its tree arrays have {n} nodes or differ in length (1 to {MAX_NODES} nodes, all alike)")
    if not 1 <= len(roots) <= n or roots[0] != 0 or np.any(np.diff(roots) <= 0) or roots[-1] >= n:
        raise ValueError("its tree roots are not increasing node indices starting at 0")
    node = np.arange(n)
    leaf = (left == node) & (right == node)
    inner = ~leaf
    end = np.repeat(np.r_[roots[1:], n], np.diff(np.r_[roots, n]))  # where each node's tree ends
    for child in (left, right):
        if np.any(inner & ((child <= node) | (child >= end))):
            raise ValueError("a tree node's child is not a later node of its tree (an index out of range or a cycle)")
    parents = np.bincount(np.r_[left[inner], right[inner]], minlength=n)
    is_root = np.zeros(n, bool)
    is_root[roots] = True
    if np.any(parents != ~is_root):
        raise ValueError("a tree node has more or fewer than one parent")
    if np.any(inner & ((feature < 0) | (feature >= n_features))):
        raise ValueError(f"a tree splits on a feature outside 0..{n_features - 1}")
    if np.isnan(threshold[inner]).any() or not np.isfinite(value).all():
        raise ValueError("a tree has a NaN threshold or a non-finite value")
    return len(levels(left, right, roots, inner))


def levels(left, right, roots, inner) -> list:
    """The parents of each level's children, root level first (checked arrays: each node is visited once)."""
    out, level = [], roots
    while True:
        level = level[inner[level]]
        if not len(level):
            return out
        if len(out) == MAX_DEPTH:
            raise ValueError(f"its trees are deeper than {MAX_DEPTH}")
        out.append(level)
        level = np.r_[left[level], right[level]]


def from_lightgbm(booster) -> dict:
    """A LightGBM regression booster's trees as node arrays (BOOSTED_KEYS), from the text model of the booster
    just fitted in this process (never from a file). LightGBM numbers a tree's splits in the order it makes
    them, so a split's children come after it; its leaves are put after its splits. Categorical splits,
    multi-output and averaged (random-forest mode) boosters are refused: latkit fits none of them."""
    text = booster.model_to_string()
    head, _, body = text.partition("\nTree=")
    if "num_tree_per_iteration=1\n" not in head or "average_output" in head or "\nTree=" not in text:
        raise ValueError("only a single-output LightGBM booster with trees saves as arrays")
    cols = {k: [] for k in BOOSTED_KEYS}
    start = 0
    for block in ("Tree=" + body).split("\nend of trees")[0].split("\n\n"):
        block = block.strip()
        if not block.startswith("Tree="):
            continue
        f = dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
        n_leaves = int(f["num_leaves"])
        if int(f.get("num_cat", 0)) or f.get("is_linear", "0") != "0":
            raise ValueError("categorical splits and linear trees do not save as arrays")
        leaf = np.array(f["leaf_value"].split(), dtype=np.float64)
        n_in = n_leaves - 1
        num = (lambda k, t: np.array(f[k].split(), dtype=t)) if n_in else (lambda k, t: np.zeros(0, t))
        dt = num("decision_type", np.int64)
        kids = [np.where(c >= 0, c, n_in + ~c) + start  # leaf j (stored as ~j) goes after the splits
                for c in (num("left_child", np.int64), num("right_child", np.int64))]
        own = start + np.arange(n_in + n_leaves)
        cols["left"].append(np.r_[kids[0], own[n_in:]])
        cols["right"].append(np.r_[kids[1], own[n_in:]])
        cols["feature"].append(np.r_[num("split_feature", np.int64), np.zeros(n_leaves, np.int64)])
        cols["threshold"].append(np.r_[num("threshold", np.float64), np.zeros(n_leaves)])
        cols["value"].append(np.r_[np.zeros(n_in), leaf])
        cols["missing"].append(np.r_[(dt >> 2) & 3, np.zeros(n_leaves, np.int64)])
        cols["default_left"].append(np.r_[(dt & 2) > 0, np.zeros(n_leaves, bool)])
        cols["roots"].append([start])
        if np.any(dt & 1):
            raise ValueError("categorical splits do not save as arrays")
        start += n_in + n_leaves
    types = dict(left=np.int32, right=np.int32, feature=np.int32, threshold=np.float64, value=np.float64,
                 missing=np.int8, default_left=np.bool_, roots=np.int32)
    return {k: np.concatenate(v).astype(types[k]) for k, v in cols.items()}


class Boosted:
    """Checked boosted trees, ready to predict: per row, the sum of each tree's leaf value, as LightGBM does.

    Every split is one of few distinct conditions (feature, threshold, missing rule: ~100 among the 8,400
    splits of a default nb201 model), so a chunk of rows first evaluates each distinct condition once, with
    LightGBM's missing-value rules, as bits (one per row, packed 64 to a word). Then each level of every tree
    at once gives each child the set of rows that reach it (its parent's set AND the condition, or the rest
    of the parent's set) and each tree's leaf index is assembled from bit planes: a few whole-array
    operations per level, instead of one walk step per (tree, row). Nodes are renumbered level by level
    (roots, then each level's left children, then its right children), so that a level's children are one
    contiguous block of the row sets, written in place."""

    def __init__(self, trees: dict, n_features: int):
        if not isinstance(trees, dict) or set(trees) != set(BOOSTED_KEYS):
            raise ValueError(f"its boosted trees hold {sorted(trees)}, not {list(BOOSTED_KEYS)}")
        t = trees
        check(t["left"], t["right"], t["feature"], t["threshold"], t["value"], t["roots"], n_features)
        missing, default_left = _ints(t["missing"], "missing"), t["default_left"]
        if len(missing) != len(t["left"]) or np.any((missing < 0) | (missing > 2)) or \
                getattr(default_left, "shape", None) != missing.shape or default_left.dtype.kind not in "biu":
            raise ValueError("its boosted trees' missing-value rules are not one of None, Zero, NaN per node")
        left, right, roots = (t[k].astype(np.intp) for k in ("left", "right", "roots"))
        node = np.arange(len(left))
        leaf = (left == node) & (right == node)
        key = np.rec.fromarrays([t["feature"].astype(np.int64), t["threshold"], missing, default_left.astype(bool)])
        conds, cond = np.unique(key, return_inverse=True)
        cond = cond.reshape(-1)
        self.feature, self.threshold = conds.f0.astype(np.intp), conds.f1
        self.missing, self.default_left = conds.f2, conds.f3
        self.zero_rule = np.flatnonzero(self.missing == 1)
        self.n_nodes, self.n_trees = len(left), len(roots)
        order, self.steps = [roots], []  # per level: (its children's block, their parents, the parents' conditions)
        start = len(roots)
        for parents in levels(left, right, roots, ~leaf):
            order.append(np.r_[left[parents], right[parents]])
            self.steps.append((start, start + len(parents), start + 2 * len(parents), parents, cond[parents]))
            start += 2 * len(parents)
        new = np.empty(len(left), np.intp)
        new[np.concatenate(order)] = node  # each node is a root or one parent's child: numbered once
        self.steps = [(lo, mid, hi, new[p], c) for lo, mid, hi, p, c in self.steps]
        self._leaf_planes(node[leaf], new, roots, t["value"][leaf])

    def _leaf_planes(self, leaves, new, roots, values) -> None:
        """Each tree's leaves numbered 0..; bit b of that number says which leaves make plane b: the leaves
        of all planes end to end (`plane_leaves`, in segments of one tree and plane starting at
        `plane_starts`, the row of each in the planes array `plane_rows`) and the leaves' values."""
        tree = np.searchsorted(roots, leaves, side="right") - 1
        first = np.searchsorted(tree, np.arange(len(roots)))
        local = np.arange(len(leaves)) - first[tree]
        self.bits = max(1, int(local.max()).bit_length())
        parts, starts, rows, at = [], [], [], 0
        for b in range(self.bits):
            on = ((local >> b) & 1) == 1
            trees_on, first_on = np.unique(tree[on], return_index=True)
            parts.append(new[leaves[on]])
            starts.append(first_on + at)
            rows.append(b * len(roots) + trees_on)
            at += int(on.sum())
        self.plane_leaves, self.plane_starts, self.plane_rows = (np.concatenate(p) for p in (parts, starts, rows))
        self.table = np.zeros((len(roots), 1 << self.bits))
        self.table[tree, local] = values

    def goes_left(self, x: np.ndarray) -> np.ndarray:
        """[conditions, rows] bool: True where a row goes left, by LightGBM's NumericalDecision."""
        v = np.ascontiguousarray(x.T)[self.feature]
        left = v <= self.threshold[:, None]
        if not np.isnan(v).any():  # only the zero-as-missing conditions differ from a plain comparison
            z = self.zero_rule
            if len(z):
                vz = v[z]
                left[z] = np.where(np.abs(vz) <= ZERO, self.default_left[z, None], left[z])
            return left
        nan = np.isnan(v)
        missing = self.missing[:, None]
        v = np.where(nan & (missing != 2), 0.0, v)
        left = v <= self.threshold[:, None]
        default = ((missing == 1) & (np.abs(v) <= ZERO)) | ((missing == 2) & nan)
        return np.where(default, self.default_left[:, None], left)

    def predict(self, x: np.ndarray, groups=None) -> np.ndarray:
        """Per row, the sum of the trees' leaf values; with `groups` (the tree counts of consecutive boosters,
        as `joined` made them) one sum per booster, [len(groups), rows], each the one that booster alone gives."""
        x = np.ascontiguousarray(x, dtype=np.float64)
        if len(x) > 2 and x.ndim == 2 and x.shape[1]:  # equal rows (a network's repeated blocks) evaluated once
            rows = x.view(np.dtype((np.void, 8 * x.shape[1]))).ravel()  # bytes: -0.0 and 0.0 stay apart, still right
            _, first, back = np.unique(rows, return_index=True, return_inverse=True)
            if 2 <= len(first) < len(x):  # not down to 1: numpy sums one row's trees pairwise, rows' in order
                return self._chunks(x[first], groups)[..., back.reshape(-1)]
        return self._chunks(x, groups)

    def _chunks(self, x: np.ndarray, groups) -> np.ndarray:
        bounds = np.cumsum([0, *(groups or [self.n_trees])])
        if bounds[-1] != self.n_trees:
            raise ValueError(f"groups of {bounds[-1]} trees for {self.n_trees} trees")
        chunk = max(64, ((1 << 28) // self.n_nodes) // 64 * 64)  # rows per pass: the row sets stay ~32 MB
        cuts = [*range(0, len(x), chunk), len(x)]
        if len(cuts) > 2 and cuts[-1] - cuts[-2] == 1:
            del cuts[-2]  # a lone last row joins the chunk before it: it is summed as rows are, not as one row
        out = [self._predict(x[a:b], bounds) for a, b in zip(cuts[:-1], cuts[1:])]
        out = np.concatenate(out, 1) if out else np.zeros((len(bounds) - 1, 0))
        return out if groups else out[0]

    def _predict(self, x: np.ndarray, bounds) -> np.ndarray:
        n, words, trees = len(x), -(-len(x) // 64), self.n_trees
        packed = np.zeros((len(self.feature), words * 8), np.uint8)
        packed[:, :-(-n // 8)] = np.packbits(self.goes_left(x), axis=1, bitorder="little")
        go = np.ascontiguousarray(packed.view(np.uint64).T)  # [words, conditions]: bit r of a row set is row r
        sets = np.empty((words, self.n_nodes), np.uint64)
        sets[:, :trees] = ~np.uint64(0)
        for lo, mid, hi, parents, cond in self.steps:
            above = sets.take(parents, axis=1)
            np.bitwise_and(above, go.take(cond, axis=1), out=sets[:, lo:mid])
            np.bitwise_xor(above, sets[:, lo:mid], out=sets[:, mid:hi])  # the rest go right
        gathered = np.bitwise_or.reduceat(sets.take(self.plane_leaves, axis=1), self.plane_starts, axis=1)
        planes = np.zeros((self.bits * trees, words), np.uint64)
        planes[self.plane_rows] = gathered.T  # row b * trees + t: the rows whose leaf of tree t has bit b set
        bits = np.unpackbits(planes.view(np.uint8), axis=1, count=n, bitorder="little").reshape(self.bits, trees, n)
        small = np.uint8 if self.bits <= 8 else np.uint16 if self.bits <= 16 else np.uint32
        local = bits[0].astype(small)
        for b in range(1, self.bits):
            local |= bits[b].astype(small, copy=False) << small(b)
        values = self.table.ravel().take(local + (np.arange(trees) << self.bits)[:, None])  # [trees, rows]
        # tree by tree, in LightGBM's order: a slice of one booster's rows sums as that booster alone would
        return np.stack([values[a:b].sum(0) for a, b in zip(bounds[:-1], bounds[1:])])


def joined(tree_sets) -> tuple:
    """Several boosters' node arrays (BOOSTED_KEYS) as one (each one's node indices shifted past the ones
    before), so that one Boosted evaluates them all in a single pass; and each one's tree count, the
    `groups` of Boosted.predict."""
    out, offset, counts = {k: [] for k in BOOSTED_KEYS}, 0, []
    for t in tree_sets:
        if not isinstance(t, dict) or set(t) != set(BOOSTED_KEYS):
            raise ValueError(f"its boosted trees hold {sorted(t)}, not {list(BOOSTED_KEYS)}")
        for k in BOOSTED_KEYS:
            out[k].append(_ints(t[k], k) + offset if k in ("left", "right", "roots") else t[k])
        offset += len(t["left"])
        counts.append(len(t["roots"]))
    return {k: np.concatenate(v) for k, v in out.items()}, counts
