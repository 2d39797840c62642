"""The reference profile a student artifact carries, and the drift arithmetic on it.

At distill time the student's artifact gets ``profile.json`` (listed in the manifest, so
pinned by sha256 like every artifact file): per-feature quantile bins and their
frequencies on the training period, the histogram of the calibrated score on the
validation period, the validation alert rate at the stored threshold, and how closely the
student follows its teacher. A worker bins live traffic with the *same* edges
(:func:`feature_counts`, :func:`score_counts`) and compares the counts with the stored
frequencies (:func:`psi`).

Bins: a value ``x`` falls in bin ``np.searchsorted(edges, x, side="right")``: bin 0 is
``x < edges[0]``, bin ``i`` is ``edges[i-1] <= x < edges[i]``, the last bin
``x >= edges[-1]``. NaN (a missing value) counts in bin 0. A feature with no edges (constant
on the training period) has one bin.

Everything here is numpy arithmetic on arrays (one compiled counting loop), except :func:`load_profile`, which reads
an artifact directory; nothing imports training code.
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass, field
from typing import Any, Sequence

import numba as nb
import numpy as np
import orjson

from stream.errors import ArtifactError
from stream.scoring.artifact import read_artifact

PROFILE_FILE = "profile.json"
PROFILE_SCHEMA = 1
FIDELITY_KEYS = ("spearman", "top_k_overlap", "mean_abs_diff", "kl", "k", "rows")
# feature_counts counts, for each value, the edges it reaches, comparing it with each edge
# rank in turn (compiled, one pass over X): far cheaper than a binary search per value while
# features have few edges. Past this many edges np.searchsorted per column takes over.
_COMPARE_MAX_EDGES = 32


@nb.njit(cache=True)
def _count_bins(X, ranks, out):
    """``out[j, b] += 1`` for each row whose value of feature ``j`` reaches ``b`` of the
    feature's edges (``x >= edge``; NaN, and the NaN padding of ``ranks``, reach none)."""
    n, m = X.shape
    bins = np.empty(m, dtype=np.int64)
    for i in range(n):
        bins[:] = 0
        for r in range(ranks.shape[0]):
            for j in range(m):
                if X[i, j] >= ranks[r, j]:
                    bins[j] += 1
        for j in range(m):
            out[j, bins[j]] += 1


@dataclass(frozen=True, eq=False)
class Profile:
    """Reference bins and frequencies of one student (see the module docstring).

    ``eq=False``: the fields hold arrays; compare ``to_dict()`` outputs instead.
    """

    feature_names: tuple[str, ...]
    edges: list[np.ndarray]          # per feature, strictly increasing, finite
    freq: list[np.ndarray]           # per feature, len(edges[j]) + 1 shares summing to 1
    score_edges: np.ndarray
    score_freq: np.ndarray
    alert_rate: float
    alert_rate_target: float | None
    threshold: float
    fidelity: dict
    rows: int
    # Derived once for feature_counts: edges padded with NaN to a matrix, one row per
    # edge rank (a comparison with NaN is always False, so padding never counts).
    _edge_ranks: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        ranks = np.full((max(self.n_bins - 1, 0), len(self.edges)), np.nan)
        for j, e in enumerate(self.edges):
            ranks[: len(e), j] = e
        object.__setattr__(self, "_edge_ranks", ranks)

    @property
    def n_bins(self) -> int:
        """The largest bin count over features (the width of a counts matrix)."""
        return max((len(e) + 1 for e in self.edges), default=1)

    # -- the JSON form -----------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The ``profile.json`` document (JSON-ready; NaN fidelity figures become ``null``)."""
        return {
            "schema": PROFILE_SCHEMA,
            "rows": int(self.rows),
            "feature_names": list(self.feature_names),
            "features": {name: {"edges": e.tolist(), "freq": f.tolist()}
                         for name, e, f in zip(self.feature_names, self.edges, self.freq)},
            "score": {"edges": self.score_edges.tolist(), "freq": self.score_freq.tolist()},
            "alert_rate": float(self.alert_rate),
            "alert_rate_target": None if self.alert_rate_target is None else float(self.alert_rate_target),
            "threshold": float(self.threshold),
            "fidelity": {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                         for k, v in self.fidelity.items()},
        }

    @classmethod
    def from_dict(cls, d: dict) -> "Profile":
        """Build from a ``profile.json`` document; ``ArtifactError`` naming what is wrong."""
        if not isinstance(d, dict):
            raise ArtifactError(f"reference profile: expected a JSON object, got {type(d).__name__}")
        if d.get("schema") != PROFILE_SCHEMA:
            raise ArtifactError(f"reference profile: schema {d.get('schema')!r} is not {PROFILE_SCHEMA}")
        missing = [k for k in ("rows", "feature_names", "features", "score", "alert_rate", "alert_rate_target",
                               "threshold", "fidelity") if k not in d]
        if missing:
            raise ArtifactError(f"reference profile: missing {', '.join(missing)}")
        rows = d["rows"]
        if not isinstance(rows, int) or isinstance(rows, bool) or rows < 1:
            raise ArtifactError(f"reference profile: rows must be a positive integer, got {rows!r}")
        names = d["feature_names"]
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ArtifactError("reference profile: feature_names must be a list of strings")
        if len(set(names)) != len(names):
            raise ArtifactError("reference profile: feature_names repeat a name")
        features = d["features"]
        if not isinstance(features, dict) or set(features) != set(names):
            raise ArtifactError("reference profile: features must hold exactly one entry per feature name")
        edges, freq = [], []
        for name in names:
            e, f = _bins(features[name], f"feature {name!r}")
            edges.append(e)
            freq.append(f)
        score_edges, score_freq = _bins(d["score"], "score")
        alert_rate = _number(d["alert_rate"], "alert_rate")
        if not 0.0 <= alert_rate <= 1.0:
            raise ArtifactError(f"reference profile: alert_rate {alert_rate} is outside [0, 1]")
        target = d["alert_rate_target"]
        if target is not None:
            target = _number(target, "alert_rate_target")
            if not 0.0 < target <= 1.0:
                raise ArtifactError(f"reference profile: alert_rate_target {target} is outside (0, 1]")
        threshold = _number(d["threshold"], "threshold")
        return cls(tuple(names), edges, freq, score_edges, score_freq, alert_rate, target, threshold,
                   _fidelity_dict(d["fidelity"], ArtifactError), rows)


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ArtifactError(f"reference profile: {what} must be a finite number, got {value!r}")
    return float(value)


def _bins(entry: Any, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Validated ``(edges, freq)`` arrays of one ``{"edges", "freq"}`` entry."""
    if not isinstance(entry, dict) or not isinstance(entry.get("edges"), list) or not isinstance(
            entry.get("freq"), list):
        raise ArtifactError(f"reference profile: {what} needs lists 'edges' and 'freq'")
    values = entry["edges"] + entry["freq"]
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        raise ArtifactError(f"reference profile: {what} has a non-numeric edge or frequency")
    e = np.asarray(entry["edges"], dtype=np.float64)
    f = np.asarray(entry["freq"], dtype=np.float64)
    if len(f) != len(e) + 1:
        raise ArtifactError(f"reference profile: {what} has {len(e)} edges but {len(f)} frequencies "
                            f"(expected {len(e) + 1})")
    if not np.all(np.isfinite(e)) or np.any(np.diff(e) <= 0):
        raise ArtifactError(f"reference profile: {what} edges are not finite and strictly increasing")
    if not np.all(np.isfinite(f)) or np.any(f < 0) or abs(float(f.sum()) - 1.0) > 1e-6:
        raise ArtifactError(f"reference profile: {what} frequencies are not non-negative shares summing to 1")
    e.setflags(write=False)
    f.setflags(write=False)
    return e, f


def _fidelity_dict(fid: Any, error: type[Exception]) -> dict[str, Any]:
    """The fidelity figures with every key present; ``None`` (JSON's NaN) read as NaN."""
    if not isinstance(fid, dict):
        raise error(f"reference profile: fidelity must be an object, got {type(fid).__name__}")
    missing = [k for k in FIDELITY_KEYS if k not in fid]
    if missing:
        raise error(f"reference profile: fidelity lacks {', '.join(missing)}")
    out = dict(fid)
    for k in ("spearman", "top_k_overlap", "mean_abs_diff", "kl"):
        v = fid[k]
        if v is None:
            out[k] = math.nan
        elif isinstance(v, bool) or not isinstance(v, (int, float)):
            raise error(f"reference profile: fidelity {k} must be a number, got {v!r}")
        else:
            out[k] = float(v)
    for k in ("k", "rows"):
        if not isinstance(fid[k], int) or isinstance(fid[k], bool) or fid[k] < 0:
            raise error(f"reference profile: fidelity {k} must be a non-negative integer, got {fid[k]!r}")
    return out


# -- building --------------------------------------------------------------------------
def quantile_edges(values: np.ndarray, bins: int = 10) -> np.ndarray:
    """Bin edges of one column: its distinct values if it has at most ``bins`` of them,
    else its unique interior quantiles (``1/bins .. (bins-1)/bins``); values equal to the
    column's minimum are never edges (bin 0 starts there) and NaN is ignored.

    A binary column gets one edge, a constant one none (a single bin).

    >>> quantile_edges(np.array([0.0, 1.0, 0.0, 0.0])).tolist()
    [1.0]
    >>> quantile_edges(np.array([3.0, 3.0, np.nan])).tolist()
    []
    >>> quantile_edges(np.arange(100.0), bins=4).tolist()
    [24.75, 49.5, 74.25]
    """
    if bins < 2:
        raise ValueError(f"bins must be >= 2, got {bins}")
    v = np.asarray(values, dtype=np.float64)
    v = v[~np.isnan(v)]
    if v.size == 0:
        return np.zeros(0)
    distinct = np.unique(v)
    if len(distinct) <= bins:
        e = distinct[1:]
    else:
        q = np.unique(np.quantile(v, np.arange(1, bins) / bins))
        e = q[q > distinct[0]]
    return e[np.isfinite(e)]


def build_profile(X: np.ndarray, feature_names: Sequence[str], scores_val: np.ndarray, *, threshold: float,
                  alert_rate: float, alert_rate_target: float | None, fidelity: dict,
                  bins: int = 10) -> Profile:
    """The reference profile of a student.

    ``X``: the training-period rows (not augmented ones); ``scores_val``: the student's
    calibrated probabilities on the validation rows. Feature edges come from
    :func:`quantile_edges`. Score edges come from the same rule on ``scores_val``, those at
    or above ``threshold`` dropped and ``threshold`` added, so the alerting region
    (``score >= threshold``) is exactly the last bin: ``score_freq[-1]`` is the validation
    alert rate.
    """
    X = np.asarray(X, dtype=np.float64)
    names = tuple(feature_names)
    if X.ndim != 2 or X.shape[1] != len(names) or X.shape[0] == 0:
        raise ValueError(f"X must be a non-empty (rows, {len(names)}) matrix, got shape {X.shape}")
    scores = np.asarray(scores_val, dtype=np.float64).ravel()
    if scores.size == 0:
        raise ValueError("scores_val is empty")
    if not math.isfinite(threshold):
        raise ValueError(f"threshold must be finite, got {threshold}")
    edges = []
    for j in range(X.shape[1]):
        e = quantile_edges(X[:, j], bins)
        e.setflags(write=False)
        edges.append(e)
    se = quantile_edges(scores, bins)
    score_edges = np.append(se[se < threshold], float(threshold))
    score_edges.setflags(write=False)
    stub = Profile(names, edges, [np.zeros(0)] * len(names), score_edges, np.zeros(0), float(alert_rate),
                   None if alert_rate_target is None else float(alert_rate_target), float(threshold),
                   _fidelity_dict(fidelity, ValueError), int(X.shape[0]))
    counts = feature_counts(stub, X)
    freq = []
    for j, e in enumerate(edges):
        f = counts[j, : len(e) + 1] / X.shape[0]
        f.setflags(write=False)
        freq.append(f)
    score_freq = score_counts(stub, scores) / scores.size
    score_freq.setflags(write=False)
    return Profile(names, edges, freq, score_edges, score_freq, stub.alert_rate, stub.alert_rate_target,
                   stub.threshold, stub.fidelity, stub.rows)


# -- binning live data ---------------------------------------------------------------------
def feature_counts(profile: Profile, X: np.ndarray) -> np.ndarray:
    """Rows per bin of each feature: int64 ``[n_features, n_bins]`` (bins a feature lacks stay 0).

    >>> p = build_profile(np.array([[0.0, 5.0], [1.0, 5.0]]), ["a", "b"], np.array([0.1, 0.9]),
    ...                   threshold=0.5, alert_rate=0.5, alert_rate_target=None,
    ...                   fidelity=dict(spearman=1.0, top_k_overlap=1.0, mean_abs_diff=0.0, kl=0.0, k=1, rows=2))
    >>> feature_counts(p, np.array([[1.0, 7.0], [np.nan, 5.0], [2.0, 1.0]])).tolist()
    [[1, 2], [3, 0]]
    """
    X = np.asarray(X, dtype=np.float64)
    n_features = len(profile.feature_names)
    if X.ndim != 2 or X.shape[1] != n_features:
        raise ValueError(f"expected a (rows, {n_features}) matrix, got shape {X.shape}")
    width = profile.n_bins
    ranks = profile._edge_ranks
    if len(ranks) <= _COMPARE_MAX_EDGES:
        out = np.zeros((n_features, width), dtype=np.int64)
        _count_bins(np.ascontiguousarray(X), ranks, out)
        return out
    idx = np.empty(X.shape, dtype=np.intp)
    for j, e in enumerate(profile.edges):
        idx[:, j] = np.searchsorted(e, X[:, j], side="right")
    idx[np.isnan(X)] = 0
    flat = idx + np.arange(0, n_features * width, width, dtype=np.intp)
    return np.bincount(flat.ravel(), minlength=n_features * width).reshape(n_features, width).astype(
        np.int64, copy=False)


def warm() -> None:
    """Load the counting kernel (numba compiles or loads it on its first call): a worker
    calls this before it consumes, so its first drift counts do not pay for it."""
    _count_bins(np.zeros((1, 1)), np.zeros((1, 1)), np.zeros((1, 2), dtype=np.int64))


def score_counts(profile: Profile, scores: np.ndarray) -> np.ndarray:
    """Scores per score bin: int64 ``[len(score_edges) + 1]`` (NaN in bin 0)."""
    s = np.asarray(scores, dtype=np.float64).ravel()
    idx = np.searchsorted(profile.score_edges, s, side="right")
    idx[np.isnan(s)] = 0
    return np.bincount(idx, minlength=len(profile.score_edges) + 1).astype(np.int64, copy=False)


def psi(freq: np.ndarray, counts: np.ndarray, eps: float = 1e-4) -> float:
    """Population stability index of live ``counts`` against reference ``freq``.

    ``sum((a - e) * ln(a / e))`` with ``a = counts / counts.sum()`` and ``e = freq``, both
    floored at ``eps`` (an empty bin contributes a bounded term, not infinity). ``counts``
    may be a row of :func:`feature_counts`, longer than ``freq``: the extra (padding) bins
    must be empty. ``0.0`` when there are no counts.

    >>> psi(np.array([0.5, 0.5]), np.array([50, 50]))
    0.0
    >>> round(psi(np.array([0.5, 0.5]), np.array([90, 10])), 4)
    0.8789
    """
    e = np.asarray(freq, dtype=np.float64).ravel()
    c = np.asarray(counts, dtype=np.float64).ravel()
    if len(c) < len(e):
        raise ValueError(f"{len(c)} counts for {len(e)} reference bins")
    if len(c) > len(e):
        if np.any(c[len(e):] != 0):
            raise ValueError("counts fall in bins the reference does not have")
        c = c[: len(e)]
    total = c.sum()
    if total <= 0:
        return 0.0
    a = np.maximum(c / total, eps)
    e = np.maximum(e, eps)
    return float(np.sum((a - e) * np.log(a / e)))


def fidelity(p_student: np.ndarray, p_teacher: np.ndarray, k_frac: float = 0.01) -> dict[str, Any]:
    """How closely the student's probabilities follow the teacher's on the same rows.

    ``spearman`` (NaN if undefined: a constant input), ``top_k_overlap`` (share of the
    teacher's top ``k`` rows also in the student's top ``k``, ``k = max(1, round(k_frac * n))``),
    ``mean_abs_diff``, ``kl`` (mean binary KL(teacher || student), probabilities clipped to
    ``[1e-7, 1 - 1e-7]``), ``k`` and ``rows``.
    """
    s = np.asarray(p_student, dtype=np.float64).ravel()
    t = np.asarray(p_teacher, dtype=np.float64).ravel()
    if s.shape != t.shape or s.size == 0:
        raise ValueError(f"need two non-empty score arrays of one length, got {s.size} and {t.size}")
    n = s.size
    k = min(n, max(1, round(k_frac * n)))
    if n < 2 or s.min() == s.max() or t.min() == t.max():
        rho = math.nan
    else:
        from scipy.stats import spearmanr  # the worker's hot path never needs scipy

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            rho = float(spearmanr(s, t).statistic)
    top_t = np.argsort(-t, kind="stable")[:k]
    top_s = np.argsort(-s, kind="stable")[:k]
    overlap = len(np.intersect1d(top_t, top_s, assume_unique=True)) / k
    ps, pt = np.clip(s, 1e-7, 1 - 1e-7), np.clip(t, 1e-7, 1 - 1e-7)
    kl = np.mean(pt * np.log(pt / ps) + (1 - pt) * np.log((1 - pt) / (1 - ps)))
    return {"spearman": rho, "top_k_overlap": float(overlap), "mean_abs_diff": float(np.mean(np.abs(s - t))),
            "kl": float(kl), "k": int(k), "rows": int(n)}


# -- the codec -------------------------------------------------------------------------------
def profile_bytes(profile: Profile) -> bytes:
    """``profile.json`` bytes (orjson: floats round-trip exactly)."""
    return orjson.dumps(profile.to_dict())


def load_profile(model_dir: str | os.PathLike) -> Profile:
    """The reference profile of a student artifact, verified with the rest of the artifact
    (every listed file's sha256; :func:`stream.scoring.artifact.read_artifact`).

    ``ArtifactError`` if the artifact does not check out, lists no profile, or holds one
    that is malformed or names other features than the model.
    """
    manifest, files = read_artifact(model_dir, kind="student")
    if PROFILE_FILE not in files:
        raise ArtifactError(f"{model_dir} has no reference profile (distilled before profiles existed): "
                            "distil it again")
    try:
        doc = orjson.loads(files[PROFILE_FILE])
    except orjson.JSONDecodeError as exc:
        raise ArtifactError(f"{model_dir}: {PROFILE_FILE} is not valid JSON ({exc})") from None
    try:
        profile = Profile.from_dict(doc)
    except ArtifactError as exc:
        raise ArtifactError(f"{model_dir}: {exc}") from None
    if list(profile.feature_names) != list(manifest.get("feature_names") or []):
        raise ArtifactError(f"{model_dir}: the reference profile names other features than the model")
    return profile
