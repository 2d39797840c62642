"""Compiled tree-ensemble kernels (numba): batch scores, single-row scores, path contributions.

Nodes are flat arrays; a leaf is a node whose left child is itself. Each decision follows
LightGBM's numerical split exactly: a NaN reads as 0 unless the node's missing type is
NaN (then it takes the node's default direction); with missing type Zero, values within
1e-35 of zero take the default direction; otherwise ``x <= threshold`` goes left. Trees
are summed in order, as LightGBM does, so scores match it to the last bits.

They were chosen over a vectorised numpy traversal and over Python code generated from
the trees by measurement (``docs/models.md``, "Scoring kernels").
"""

from __future__ import annotations

import numba as nb
import numpy as np

MISSING_NONE, MISSING_ZERO, MISSING_NAN = 0, 1, 2
ZERO = 1e-35  # LightGBM's kZeroThreshold


# Columns of the packed node table (one 48-byte row per node: one cache line per visit).
FEATURE, THRESHOLD, LEFT, RIGHT, VALUE, FLAGS = 0, 1, 2, 3, 4, 5


def pack(feature, threshold, left, right, value, default_left, missing) -> np.ndarray:
    """The node table: float64 rows; ints are exact, flags = 2 * missing + default_left."""
    nodes = np.empty((len(feature), 6))
    nodes[:, FEATURE] = feature
    nodes[:, THRESHOLD] = threshold
    nodes[:, LEFT] = left
    nodes[:, RIGHT] = right
    nodes[:, VALUE] = value
    nodes[:, FLAGS] = 2 * np.asarray(missing, dtype=np.int64) + np.asarray(default_left, dtype=np.int64)
    return np.ascontiguousarray(nodes)


@nb.njit(cache=True, inline="always")
def _step(x, nodes, node):
    v = x[int(nodes[node, FEATURE])]
    flags = int(nodes[node, FLAGS])
    if flags > 1:  # the node routes missing values itself (missing type Zero or NaN)
        m = flags >> 1
        if np.isnan(v):
            if m == MISSING_NAN:
                return int(nodes[node, LEFT]) if flags & 1 else int(nodes[node, RIGHT])
            v = 0.0
        if m == MISSING_ZERO and abs(v) <= ZERO:
            return int(nodes[node, LEFT]) if flags & 1 else int(nodes[node, RIGHT])
    elif np.isnan(v):
        v = 0.0
    return int(nodes[node, LEFT]) if v <= nodes[node, THRESHOLD] else int(nodes[node, RIGHT])


@nb.njit(cache=True)
def _row(x, roots, nodes):
    s = 0.0
    for r in range(roots.shape[0]):
        node = roots[r]
        nxt = int(nodes[node, LEFT])
        while nxt != node:
            node = _step(x, nodes, node)
            nxt = int(nodes[node, LEFT])
        s += nodes[node, VALUE]
    return s


@nb.njit(cache=True, parallel=True)
def raw_batch(X, roots, nodes):
    """Raw scores of every row of ``X`` (rows in parallel)."""
    n = X.shape[0]
    out = np.empty(n)
    for i in nb.prange(n):
        out[i] = _row(X[i], roots, nodes)
    return out


@nb.njit(cache=True)
def raw_single(x, roots, nodes):
    """Raw score of one row (no thread pool: lowest latency)."""
    return _row(x, roots, nodes)


@nb.njit(cache=True)
def contributions(X, roots, nodes, n_features):
    """Path contributions: each split on a row's path credits its feature with the change
    in expected value; a row's contributions plus the roots' values equal its raw score."""
    n = X.shape[0]
    out = np.zeros((n, n_features))
    for i in range(n):
        x = X[i]
        for r in range(roots.shape[0]):
            node = roots[r]
            while int(nodes[node, LEFT]) != node:
                child = _step(x, nodes, node)
                out[i, int(nodes[node, FEATURE])] += nodes[child, VALUE] - nodes[node, VALUE]
                node = child
    return out


# -- interleaved, branch-free batch kernel for models without missing-value routing -------

BLOCK = 8  # rows stepped through a tree together, one register each: independent loads the CPU overlaps
CHUNK = 256  # rows per task of the parallel kernel (a multiple of BLOCK)

# A node of the relaid-out trees in 16 bytes (four to a cache line): split feature, left
# child (the right child is left + 1) and threshold; a leaf's value is in a separate array.
NODE = np.dtype([("feature", np.int32), ("left", np.int32), ("threshold", np.float64)])


def layout(roots, feature, threshold, left, right, value) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Breadth-first relayout: a node's children are adjacent (right = left + 1) and a leaf
    points to itself with an infinite threshold, so ``node = left + (x > threshold)`` walks
    the tree without branches; each tree is walked exactly its depth.

    Returns ``(roots, depths, nodes, values)``: ``nodes`` of dtype :data:`NODE`, ``values``
    the leaves' values (0 for inner nodes), both indexed by node.
    """
    rows, new_roots, depths = [], [], []
    for root in roots:
        base = len(rows)
        order = [int(root)]
        position = {int(root): 0}
        depth = {int(root): 0}
        i = 0
        while i < len(order):
            n = order[i]
            i += 1
            if left[n] != n:
                for child in (int(left[n]), int(right[n])):
                    position[child] = len(order)
                    depth[child] = depth[n] + 1
                    order.append(child)
        for n in order:
            if left[n] == n:
                rows.append((0, base + position[n], np.inf, value[n]))
            else:
                rows.append((int(feature[n]), base + position[int(left[n])], threshold[n], 0.0))
        new_roots.append(base)
        depths.append(max(depth.values()))
    nodes = np.array([r[:3] for r in rows], dtype=NODE)
    values = np.array([r[3] for r in rows], dtype=np.float64)
    return np.asarray(new_roots, dtype=np.int64), np.asarray(depths, dtype=np.int64), nodes, values


@nb.njit(cache=True)
def _plain_rows(X, lo, hi, roots, depths, nodes, values, out):
    """Raw scores of rows ``lo:hi`` of ``X`` into ``out``, ``BLOCK`` rows at a time, each row's
    node and sum in a register of its own; NaN reads as 0, as LightGBM does for models whose
    nodes never route missing values themselves. Trees are summed in order."""
    nf = X.shape[1]
    x = np.zeros((BLOCK, nf))
    for start in range(lo, hi, BLOCK):
        width = min(BLOCK, hi - start)
        for j in range(BLOCK):
            for f in range(nf):
                v = X[start + j, f] if j < width else 0.0
                x[j, f] = 0.0 if v != v else v
        a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = 0.0
        for t in range(roots.shape[0]):
            k0 = k1 = k2 = k3 = k4 = k5 = k6 = k7 = roots[t]
            for _ in range(depths[t]):
                k0 = nodes[k0].left + (1 if x[0, nodes[k0].feature] > nodes[k0].threshold else 0)
                k1 = nodes[k1].left + (1 if x[1, nodes[k1].feature] > nodes[k1].threshold else 0)
                k2 = nodes[k2].left + (1 if x[2, nodes[k2].feature] > nodes[k2].threshold else 0)
                k3 = nodes[k3].left + (1 if x[3, nodes[k3].feature] > nodes[k3].threshold else 0)
                k4 = nodes[k4].left + (1 if x[4, nodes[k4].feature] > nodes[k4].threshold else 0)
                k5 = nodes[k5].left + (1 if x[5, nodes[k5].feature] > nodes[k5].threshold else 0)
                k6 = nodes[k6].left + (1 if x[6, nodes[k6].feature] > nodes[k6].threshold else 0)
                k7 = nodes[k7].left + (1 if x[7, nodes[k7].feature] > nodes[k7].threshold else 0)
            a0 += values[k0]
            a1 += values[k1]
            a2 += values[k2]
            a3 += values[k3]
            a4 += values[k4]
            a5 += values[k5]
            a6 += values[k6]
            a7 += values[k7]
        lanes = (a0, a1, a2, a3, a4, a5, a6, a7)
        for j in range(width):
            out[start + j] = lanes[j]


# Two kernels, two Python functions: numba keys its on-disk cache by function (not by
# compile flags), so one function compiled twice, serial and parallel, would load whichever
# was cached first for both.
@nb.njit(cache=True)
def raw_batch_plain_serial(X, roots, depths, nodes, values):
    """Raw scores of a batch in this thread (no thread pool: small batches, single events)."""
    out = np.empty(X.shape[0])
    _plain_rows(X, 0, X.shape[0], roots, depths, nodes, values, out)
    return out


@nb.njit(cache=True, parallel=True)
def raw_batch_plain(X, roots, depths, nodes, values):
    """Raw scores of a batch, runs of ``CHUNK`` rows shared out over numba's thread pool (a
    pool launch costs more than it saves below ``PARALLEL_MIN_ROWS`` rows)."""
    n = X.shape[0]
    out = np.empty(n)
    for c in nb.prange((n + CHUNK - 1) // CHUNK):
        _plain_rows(X, c * CHUNK, min(c * CHUNK + CHUNK, n), roots, depths, nodes, values, out)
    return out

PARALLEL_MIN_ROWS = 512


def warm() -> None:
    """Load every scoring kernel (numba compiles or loads it on its first call, a few hundred
    ms each) and start the parallel one's thread pool, on a one-leaf model: a worker calls
    this before it consumes, so its first batches do not pay for it (nor a rate measured
    over them). The kernels are shared by every model, so once per process is enough."""
    feature, threshold, left, right = np.zeros(1, np.int64), np.zeros(1), np.zeros(1, np.int64), np.zeros(1, np.int64)
    value, default_left, missing = np.zeros(1), np.ones(1, np.bool_), np.zeros(1, np.int64)
    roots = np.zeros(1, np.int64)
    nodes = pack(feature, threshold, left, right, value, default_left, missing)
    plain = layout(roots, feature, threshold, left, right, value)
    for rows in (1, PARALLEL_MIN_ROWS):
        X = np.zeros((rows, 1))
        raw_batch(X, roots, nodes)
        raw_batch_plain_serial(X, *plain)
        raw_batch_plain(X, *plain)
        contributions(X, roots, nodes, 1)
    raw_single(np.zeros(1), roots, nodes)
