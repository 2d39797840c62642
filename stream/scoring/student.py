"""The student model at serving time: load a verified artifact, score, explain.

Two student families share one interface (``raw``, ``score``, ``score_one``,
``reasons``; higher = more anomalous):

* ``trees``: a small gradient-boosted ensemble stored as plain arrays (JSON), scored by
  compiled kernels (:mod:`stream.treekernels`, numba): batches in parallel over rows, a
  single event without the thread pool. Decisions follow LightGBM's numerical-split rules
  exactly (``x <= threshold``; missing values by the node's missing type and default
  direction), so scores equal LightGBM's.
* ``linear``: standardised features, one weight vector.

Raw scores are mapped to probabilities by Platt scaling fitted on validation data.
Reason codes are per-feature contributions to the raw score: path attributions for trees
(each split on the event's path credits its feature with the change in expected value),
``w * (x - mean) / scale`` for the linear model.

This module needs numpy and numba only: no LightGBM, no training code.
"""

from __future__ import annotations

import math
import os
from typing import Any, Sequence

import numpy as np
import orjson

from stream.errors import ArtifactError
from stream.features.layout import FEATURE_NAMES, FEATURE_SCHEMA_HASH
from stream.scoring import treekernels
from stream.scoring.artifact import read_artifact
from stream.scoring.treekernels import MISSING_NONE

STUDENT_FILE = "student.json"


class TreeEnsemble:
    """All trees flattened into node arrays; leaves point to themselves."""

    def __init__(self, trees: list[dict[str, list]], n_features: int) -> None:
        feat, thr, left, right, value, dleft, miss = [], [], [], [], [], [], []
        roots = []
        for t, tree in enumerate(trees):
            try:
                offset = len(feat)
                n_leaves = len(tree["leaf_value"])
                n_inner = n_leaves - 1
                leaf_values = [float(v) for v in tree["leaf_value"]]
                leaf_counts = [float(c) for c in tree.get("leaf_count", [1.0] * n_leaves)]
                if n_inner == 0:
                    roots.append(offset)
                    feat.append(0); thr.append(0.0); left.append(offset); right.append(offset)
                    value.append(leaf_values[0]); dleft.append(True); miss.append(MISSING_NONE)
                    continue
                sf, th, dt = tree["split_feature"], tree["threshold"], tree["decision_type"]
                lc, rc = tree["left_child"], tree["right_child"]
                if not (len(sf) == len(th) == len(dt) == len(lc) == len(rc) == n_inner):
                    raise ArtifactError(f"tree {t}: inconsistent array lengths")

                def node_id(child: int) -> int:
                    return offset + (child if child >= 0 else n_inner + ~child)

                # Expected value of each inner node: leaf values weighted by training counts.
                inner_sum = [0.0] * n_inner
                inner_cnt = [0.0] * n_inner
                order = [0]
                for i in order:  # breadth-first; children are appended as found
                    if len(order) > n_inner:
                        break  # a cycle or shared child: refused below, never loops forever
                    for child in (lc[i], rc[i]):
                        if child >= 0:
                            order.append(child)
                if len(order) != n_inner or len(set(order)) != n_inner:
                    raise ArtifactError(f"tree {t}: inner nodes are not one connected tree")
                for i in reversed(order):
                    for child in (lc[i], rc[i]):
                        if child >= 0:
                            inner_sum[i] += inner_sum[child]
                            inner_cnt[i] += inner_cnt[child]
                        else:
                            leaf = ~child
                            inner_sum[i] += leaf_values[leaf] * leaf_counts[leaf]
                            inner_cnt[i] += leaf_counts[leaf]
                for i in range(n_inner):
                    decision = int(dt[i])
                    if decision & 1:
                        raise ArtifactError(f"tree {t}: categorical splits are not supported")
                    f = int(sf[i])
                    if not 0 <= f < n_features:
                        raise ArtifactError(f"tree {t}: split on feature {f} of {n_features}")
                    feat.append(f)
                    thr.append(float(th[i]))
                    left.append(node_id(lc[i]))
                    right.append(node_id(rc[i]))
                    value.append(inner_sum[i] / inner_cnt[i] if inner_cnt[i] > 0 else 0.0)
                    dleft.append(bool(decision & 2))
                    miss.append((decision >> 2) & 3)
                for j in range(n_leaves):
                    nid = offset + n_inner + j
                    feat.append(0); thr.append(0.0); left.append(nid); right.append(nid)
                    value.append(leaf_values[j]); dleft.append(True); miss.append(MISSING_NONE)
                roots.append(offset)
            except (KeyError, TypeError, ValueError, IndexError) as exc:
                raise ArtifactError(f"tree {t}: malformed ({exc!r})") from None
        self.feature = np.asarray(feat, dtype=np.int64)
        self.threshold = np.asarray(thr, dtype=np.float64)
        self.left = np.asarray(left, dtype=np.int64)
        self.right = np.asarray(right, dtype=np.int64)
        self.value = np.asarray(value, dtype=np.float64)
        self.default_left = np.asarray(dleft, dtype=np.bool_)
        self.missing = np.asarray(miss, dtype=np.int8)
        self.roots = np.asarray(roots, dtype=np.int64)
        self.n_features = n_features
        self.n_trees = len(trees)
        self.n_leaves = sum(len(t["leaf_value"]) for t in trees)
        self._nodes = (self.roots, treekernels.pack(self.feature, self.threshold, self.left, self.right,
                                                    self.value, self.default_left, self.missing))
        # Models whose nodes never route missing values (every event-mode model: its
        # features are always finite) get the interleaved branch-free batch kernel.
        self.plain = not bool(np.any(self.missing != MISSING_NONE))
        self._plain = (treekernels.layout(self.roots, self.feature, self.threshold, self.left, self.right,
                                          self.value) if self.plain else None)

    def raw(self, X: np.ndarray) -> np.ndarray:
        """Raw scores (log-odds) of a 2-D float64 batch."""
        if X.shape[0] == 0:
            return np.zeros(0)
        if X.shape[1] != self.n_features:
            raise ValueError(f"expected {self.n_features} features, got {X.shape[1]}")
        if self._plain is not None:
            if X.shape[0] < treekernels.PARALLEL_MIN_ROWS:
                return treekernels.raw_batch_plain_serial(X, *self._plain)
            return treekernels.raw_batch_plain(X, *self._plain)
        return treekernels.raw_batch(X, *self._nodes)

    def raw_one(self, x: Sequence[float]) -> float:
        """Raw score of one row (any float sequence of the right length)."""
        row = np.asarray(x, dtype=np.float64)
        if row.shape != (self.n_features,):
            raise ValueError(f"expected {self.n_features} features, got shape {row.shape}")
        return treekernels.raw_single(row, *self._nodes)

    def contributions(self, X: np.ndarray) -> np.ndarray:
        """Per-feature path contributions, shape ``(n, n_features)``."""
        return treekernels.contributions(X, *self._nodes, self.n_features)


class LinearModel:
    """``w . (x - mean) / scale + b``."""

    def __init__(self, coef: Sequence[float], intercept: float, mean: Sequence[float],
                 scale: Sequence[float]) -> None:
        self.coef = np.asarray(coef, dtype=np.float64)
        self.mean = np.asarray(mean, dtype=np.float64)
        self.scale = np.asarray(scale, dtype=np.float64)
        if not (self.coef.shape == self.mean.shape == self.scale.shape) or np.any(self.scale <= 0):
            raise ArtifactError("linear student: coef/mean/scale shapes or scales are invalid")
        self.intercept = float(intercept)
        # Folded for scoring: raw = x . w_eff + b_eff.
        self._w = self.coef / self.scale
        self._b = self.intercept - float(self.mean @ self._w)
        self._w_list = self._w.tolist()
        self.n_features = len(self.coef)

    def raw(self, X: np.ndarray) -> np.ndarray:
        """Raw scores (log-odds) of a batch."""
        return np.nan_to_num(X, nan=0.0) @ self._w + self._b

    def raw_one(self, x: Sequence[float]) -> float:
        """Raw score of one row."""
        s = self._b
        for w, v in zip(self._w_list, x):
            if v == v:
                s += w * v
        return s

    def contributions(self, X: np.ndarray) -> np.ndarray:
        """Per-feature contributions ``w * (x - mean) / scale``."""
        return (np.nan_to_num(X, nan=0.0) - self.mean) * self._w


class Student:
    """A loaded, verified student: ``score(X) -> probabilities``, higher = more anomalous."""

    def __init__(self, manifest: dict[str, Any], payload: dict[str, Any], path: str = "") -> None:
        self.manifest = manifest
        self.path = path
        self.feature_names: tuple[str, ...] = tuple(manifest["feature_names"])
        self.version: str = manifest["model_version"]
        self.threshold: float = float(manifest["threshold"]["value"])
        family = payload.get("family")
        n = len(self.feature_names)
        if family == "trees":
            self.impl: TreeEnsemble | LinearModel = TreeEnsemble(payload["trees"], n)
        elif family == "linear":
            self.impl = LinearModel(payload["coef"], payload["intercept"], payload["mean"], payload["scale"])
            if self.impl.n_features != n:
                raise ArtifactError("linear student: weights do not match the feature names")
        else:
            raise ArtifactError(f"unknown student family {family!r}")
        self.family: str = family
        cal = payload.get("calibration") or {"a": 1.0, "b": 0.0}
        self.cal_a, self.cal_b = float(cal["a"]), float(cal["b"])

    # -- scoring -------------------------------------------------------------
    def raw(self, X: np.ndarray) -> np.ndarray:
        """Uncalibrated scores (log-odds scale) of a batch."""
        return self.impl.raw(np.ascontiguousarray(X, dtype=np.float64))

    def score(self, X: np.ndarray) -> np.ndarray:
        """Calibrated anomaly probabilities of a batch."""
        z = self.cal_a * self.raw(X) + self.cal_b
        return 1.0 / (1.0 + np.exp(-z))

    def score_one(self, row: Sequence[float]) -> float:
        """Calibrated anomaly probability of one feature row (no numpy on this path)."""
        z = self.cal_a * self.impl.raw_one(row) + self.cal_b
        if z < -700.0:
            return 0.0
        return 1.0 / (1.0 + math.exp(-z))

    # -- explanations --------------------------------------------------------
    def reasons(self, X: np.ndarray, k: int = 3) -> list[list[tuple[str, float]]]:
        """Top-``k`` features pushing each row's score up, as ``(name, contribution)``."""
        X = np.ascontiguousarray(X, dtype=np.float64)
        contrib = self.impl.contributions(X) * self.cal_a
        names = self.feature_names
        top = np.argsort(-contrib, axis=1, kind="stable")[:, :k]  # one call for every row
        values = np.take_along_axis(contrib, top, axis=1).tolist()
        return [[(names[i], round(v, 4)) for i, v in zip(idx, vals) if v > 0.0]
                for idx, vals in zip(top.tolist(), values)]

    # -- size ------------------------------------------------------------------
    @property
    def n_trees(self) -> int:
        """Trees in the ensemble (0 for linear)."""
        return getattr(self.impl, "n_trees", 0)

    @property
    def n_leaves(self) -> int:
        """Leaves in the ensemble (0 for linear)."""
        return getattr(self.impl, "n_leaves", 0)

    def __repr__(self) -> str:
        return f"Student({self.family}, version={self.version}, threshold={self.threshold:.4g})"

    def same_features(self, other: "Student") -> bool:
        """Whether ``other`` scores the same feature rows: equal feature names and schema hash
        (a challenger beside this model, a candidate to replace it)."""
        return (self.feature_names == other.feature_names
                and self.manifest.get("feature_schema_hash") == other.manifest.get("feature_schema_hash"))


def student_payload_bytes(payload: dict[str, Any]) -> bytes:
    """Serialise a student payload (floats round-trip exactly)."""
    return orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY)


def load_student(path: str | os.PathLike, *, feature_schema_hash: str | None = FEATURE_SCHEMA_HASH) -> Student:
    """Load and verify a student artifact; ``ArtifactError`` with a one-line reason otherwise.

    ``feature_schema_hash=None`` skips the schema check (tabular models).
    """
    manifest, files = read_artifact(path, kind="student", feature_schema_hash=feature_schema_hash)
    if STUDENT_FILE not in files:
        raise ArtifactError(f"{path}: manifest does not list {STUDENT_FILE}")
    try:
        payload = orjson.loads(files[STUDENT_FILE])
        names = manifest["feature_names"]
        manifest["threshold"]["value"]
        manifest["model_version"]
    except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
        raise ArtifactError(f"{path}: student artifact is incomplete ({exc!r})") from None
    if feature_schema_hash == FEATURE_SCHEMA_HASH and tuple(names) != FEATURE_NAMES:
        raise ArtifactError(f"{path}: feature names differ from this txwatch's feature engine")
    return Student(manifest, payload, str(path))
