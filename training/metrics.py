"""Evaluation metrics for anomaly scores: pure functions over numpy arrays, no I/O.

Conventions shared by every function here:

* ``y`` holds binary labels (1 = anomalous event); bools and the floats 0.0/1.0 are
  accepted too. ``p`` holds scores where higher means more suspicious. Both are 1-D,
  non-empty, of equal length, and scores must be finite. Anything else raises
  ``ValueError`` naming the argument at fault.
* An event is *alerted* when ``p >= threshold``.
* Calibration functions additionally require ``p`` to lie in ``[0, 1]``.
* Undefined quantities (ROC AUC with one class, recall without positives) are ``nan``;
  :func:`summarize` turns them into ``None`` so its result is JSON-serialisable.

>>> y = [0, 0, 1, 0, 1]
>>> p = [0.1, 0.4, 0.35, 0.2, 0.8]
>>> precision_recall_at(y, p, 0.3)
(0.6666666666666666, 1.0)
>>> round(roc_auc(y, p), 4)
0.8333
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats
from sklearn.metrics import average_precision_score, roc_auc_score

__all__ = [
    "auprc",
    "roc_auc",
    "precision_recall_at",
    "threshold_for_alert_rate",
    "threshold_for_precision",
    "recall_at_alert_rate",
    "per_scenario_recall",
    "spearman",
    "top_fraction_overlap",
    "expected_calibration_error",
    "calibration_curve",
    "summarize",
    "UNKNOWN_SCENARIO",
]

# Name given to positives whose scenario is missing (None, NaN or empty string).
UNKNOWN_SCENARIO = "unknown"


# --------------------------------------------------------------------------- validation


def _scores(p: Any, name: str = "p") -> np.ndarray:
    """``p`` as a 1-D, non-empty, finite float64 array, or ``ValueError``."""
    try:
        arr = np.asarray(p, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be an array of numbers") from None
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-dimensional, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty")
    if not np.all(np.isfinite(arr)):
        bad = int(np.count_nonzero(~np.isfinite(arr)))
        raise ValueError(f"{name} contains {bad} non-finite value(s) (nan or inf)")
    return arr


def _labels(y: Any, name: str = "y") -> np.ndarray:
    """``y`` as a 1-D, non-empty int8 array of 0/1, or ``ValueError``."""
    arr = np.asarray(y)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-dimensional, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty")
    if arr.dtype == bool:
        return arr.astype(np.int8)
    if arr.dtype.kind not in "iuf":
        raise ValueError(f"{name} must hold binary labels 0/1, got dtype {arr.dtype}")
    ok = (arr == 0) | (arr == 1)
    if not np.all(ok):
        bad = np.unique(arr[~ok])[:5].tolist()
        raise ValueError(f"{name} must hold binary labels 0/1, found {bad}")
    return arr.astype(np.int8)


def _labels_scores(y: Any, p: Any) -> tuple[np.ndarray, np.ndarray]:
    y_arr = _labels(y)
    p_arr = _scores(p)
    if y_arr.shape != p_arr.shape:
        raise ValueError(f"y and p have different lengths ({y_arr.size} != {p_arr.size})")
    return y_arr, p_arr


def _probabilities(p: np.ndarray) -> np.ndarray:
    if p.min() < 0.0 or p.max() > 1.0:
        raise ValueError(
            f"p must be probabilities in [0, 1], got range [{p.min():g}, {p.max():g}]"
        )
    return p


def _rate(rate: Any, name: str = "rate") -> float:
    try:
        r = float(rate)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number in (0, 1), got {rate!r}") from None
    if not 0.0 < r < 1.0:
        raise ValueError(f"{name} must be in (0, 1), got {rate!r}")
    return r


def _threshold(threshold: Any) -> float:
    try:
        t = float(threshold)
    except (TypeError, ValueError):
        raise ValueError(f"threshold must be a number, got {threshold!r}") from None
    if math.isnan(t):
        raise ValueError("threshold is nan")
    return t


def _bins(bins: Any) -> int:
    if isinstance(bins, bool) or not isinstance(bins, (int, np.integer)) or bins < 1:
        raise ValueError(f"bins must be a positive integer, got {bins!r}")
    return int(bins)


# --------------------------------------------------------------------------- ranking


def auprc(y: Any, p: Any) -> float:
    """Area under the precision-recall curve as average precision.

    Uses ``sklearn.metrics.average_precision_score`` (step-wise, no interpolation).
    Returns ``nan`` when ``y`` has no positives (precision-recall is undefined).
    """
    y, p = _labels_scores(y, p)
    if not y.any():
        return math.nan
    return float(average_precision_score(y, p))


def roc_auc(y: Any, p: Any) -> float:
    """Area under the ROC curve; ``nan`` if only one class is present in ``y``."""
    y, p = _labels_scores(y, p)
    if y.min() == y.max():
        return math.nan
    return float(roc_auc_score(y, p))


def precision_recall_at(y: Any, p: Any, threshold: float) -> tuple[float, float]:
    """Precision and recall of alerting on ``p >= threshold``.

    Precision is 0.0 when nothing is alerted; recall is ``nan`` when ``y`` has no
    positives.

    >>> precision_recall_at([1, 0, 1, 0], [0.9, 0.8, 0.3, 0.1], 0.5)
    (0.5, 0.5)
    >>> precision_recall_at([1, 0, 1, 0], [0.9, 0.8, 0.3, 0.1], 0.95)
    (0.0, 0.0)
    """
    y, p = _labels_scores(y, p)
    t = _threshold(threshold)
    alerts = p >= t
    n_alerts = int(np.count_nonzero(alerts))
    n_pos = int(np.count_nonzero(y))
    tp = int(np.count_nonzero(alerts & (y == 1)))
    precision = tp / n_alerts if n_alerts else 0.0
    recall = tp / n_pos if n_pos else math.nan
    return precision, recall


# --------------------------------------------------------------------------- thresholds


def _max_alerts(n: int, rate: float) -> int:
    """Largest k with k / n <= rate, robust to float rounding in ``rate * n``."""
    k = int(math.floor(rate * n))
    while k + 1 <= n and (k + 1) / n <= rate:
        k += 1
    while k > 0 and k / n > rate:
        k -= 1
    return k


def threshold_for_alert_rate(p: Any, rate: float) -> float:
    """Smallest threshold ``t`` such that ``mean(p >= t) <= rate``.

    Tied scores are alerted together or not at all, so the achieved alert rate never
    exceeds ``rate`` (it may fall below it when ties straddle the cut, down to zero
    alerts). The result lies halfway between the highest score that must *not* be
    alerted and the next higher score (the next float above it when there is none), so
    the same scores are alerted as by the lowest possible threshold, with a margin on
    both sides: a score tied with the cut stays below it after the integer-only export
    rounds its leaves (:mod:`export.fixed`). ``rate`` must be in (0, 1).

    >>> p = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
    >>> t = threshold_for_alert_rate(p, 0.3)
    >>> 0.7 < t <= 0.8, sum(x >= t for x in p)
    (True, 3)
    >>> t = threshold_for_alert_rate([0.2, 0.9, 0.9, 0.9], 0.5)   # a tie at the cut
    >>> sum(x >= t for x in [0.2, 0.9, 0.9, 0.9])
    0
    """
    p = _scores(p)
    r = _rate(rate)
    k = _max_alerts(p.size, r)
    desc = np.sort(p)[::-1]
    # count(p >= t) >= k + 1  <=>  t <= desc[k]; so t must lie strictly above desc[k],
    # and at most at the next higher score, to alert the same scores.
    cut = desc[k]
    higher = desc[:k][desc[:k] > cut]
    if len(higher):
        mid = float(cut + (higher[-1] - cut) / 2.0)
        if cut < mid <= higher[-1]:
            return mid
    return float(np.nextafter(cut, np.inf))


def threshold_for_precision(y: Any, p: Any, precision: float) -> float:
    """Lowest threshold whose precision on ``(y, p)`` is at least ``precision``.

    Candidate thresholds are the distinct values of ``p``; the lowest qualifying one
    has the most recall. Because precision is not monotone in the threshold, the answer
    can sit below thresholds that miss the target. Raises ``ValueError`` when no
    threshold reaches the target (including when ``y`` has no positives).
    """
    y, p = _labels_scores(y, p)
    try:
        target = float(precision)
    except (TypeError, ValueError):
        raise ValueError(f"precision must be a number in (0, 1], got {precision!r}") from None
    if not 0.0 < target <= 1.0:
        raise ValueError(f"precision must be in (0, 1], got {precision!r}")
    order = np.argsort(-p, kind="stable")
    p_desc = p[order]
    tp = np.cumsum(y[order], dtype=np.int64)
    # Last index of each run of equal scores: alerting at that score alerts the whole run.
    last = np.flatnonzero(np.r_[p_desc[1:] != p_desc[:-1], True])
    n_alerts = last + 1
    prec = tp[last] / n_alerts
    ok = np.flatnonzero(prec >= target)
    if ok.size == 0:
        best = float(prec.max())
        raise ValueError(
            f"precision {target:g} is unreachable: the best precision over all "
            f"thresholds is {best:g}"
        )
    return float(p_desc[last[ok[-1]]])


def recall_at_alert_rate(y: Any, p: Any, rate: float) -> float:
    """Recall when alerting at most ``rate`` of events (see :func:`threshold_for_alert_rate`)."""
    y, p = _labels_scores(y, p)
    t = threshold_for_alert_rate(p, rate)
    return precision_recall_at(y, p, t)[1]


def per_scenario_recall(
    y: Any, p: Any, scenarios: Sequence[Any] | np.ndarray, threshold: float
) -> dict[str, dict]:
    """Recall per attack scenario at ``threshold``, over the positive events only.

    Returns ``{scenario: {"events": n_positives, "recall": fraction_alerted}}`` sorted
    by scenario name. Positives without a scenario (None, NaN, "") are grouped under
    :data:`UNKNOWN_SCENARIO`; scenario names on negatives are ignored.

    >>> per_scenario_recall([1, 1, 0, 1], [0.9, 0.2, 0.8, 0.7],
    ...                     ["wash", "wash", "", "layering"], 0.5)
    {'layering': {'events': 1, 'recall': 1.0}, 'wash': {'events': 2, 'recall': 0.5}}
    """
    y, p = _labels_scores(y, p)
    t = _threshold(threshold)
    s = np.asarray(scenarios, dtype=object)
    if s.ndim != 1:
        raise ValueError(f"scenarios must be 1-dimensional, got shape {s.shape}")
    if s.size != y.size:
        raise ValueError(f"scenarios and y have different lengths ({s.size} != {y.size})")
    pos = np.flatnonzero(y == 1)
    names = [_scenario_name(v) for v in s[pos]]
    hits = p[pos] >= t
    events: dict[str, int] = {}
    caught: dict[str, int] = {}
    for name, hit in zip(names, hits):
        events[name] = events.get(name, 0) + 1
        caught[name] = caught.get(name, 0) + int(hit)
    return {
        name: {"events": events[name], "recall": caught[name] / events[name]}
        for name in sorted(events)
    }


def _scenario_name(v: Any) -> str:
    if v is None:
        return UNKNOWN_SCENARIO
    if isinstance(v, (float, np.floating)) and math.isnan(v):
        return UNKNOWN_SCENARIO
    name = str(v)
    return name if name else UNKNOWN_SCENARIO


# --------------------------------------------------------------------------- agreement


def _score_pair(a: Any, b: Any) -> tuple[np.ndarray, np.ndarray]:
    a_arr = _scores(a, "a")
    b_arr = _scores(b, "b")
    if a_arr.shape != b_arr.shape:
        raise ValueError(f"a and b have different lengths ({a_arr.size} != {b_arr.size})")
    return a_arr, b_arr


def spearman(a: Any, b: Any) -> float:
    """Spearman rank correlation (``scipy.stats.spearmanr``); ``nan`` if undefined.

    Undefined means fewer than two values or a constant input.
    """
    a, b = _score_pair(a, b)
    if a.size < 2 or a.min() == a.max() or b.min() == b.max():
        return math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(stats.spearmanr(a, b).statistic)


def _top_k(n: int, fraction: float) -> int:
    x = fraction * n
    nearest = round(x)
    k = nearest if abs(x - nearest) <= 1e-9 * max(1.0, x) else math.ceil(x)
    return max(1, min(n, int(k)))


def top_fraction_overlap(a: Any, b: Any, fraction: float = 0.01) -> float:
    """Share of the top-k events by ``a`` that are also in the top-k by ``b``.

    ``k = max(1, ceil(fraction * n))``; ties at the cut are broken by position (earlier
    events first) in both arrays. ``fraction`` must be in (0, 1].

    >>> top_fraction_overlap([1, 2, 3, 4], [1, 2, 3, 4], fraction=0.5)
    1.0
    >>> top_fraction_overlap([1, 2, 3, 4], [4, 3, 2, 1], fraction=0.5)
    0.0
    >>> top_fraction_overlap([1, 2, 3, 4], [1, 4, 3, 2], fraction=0.5)
    0.5
    """
    a, b = _score_pair(a, b)
    try:
        f = float(fraction)
    except (TypeError, ValueError):
        raise ValueError(f"fraction must be a number in (0, 1], got {fraction!r}") from None
    if not 0.0 < f <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
    k = _top_k(a.size, f)
    top_a = np.argsort(-a, kind="stable")[:k]
    top_b = np.argsort(-b, kind="stable")[:k]
    return float(np.intersect1d(top_a, top_b, assume_unique=True).size / k)


# --------------------------------------------------------------------------- calibration


def _binned(y: Any, p: Any, bins: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    y, p = _labels_scores(y, p)
    _probabilities(p)
    nb = _bins(bins)
    edges = np.linspace(0.0, 1.0, nb + 1)
    # Bins are [e_i, e_{i+1}), the last one closed so that p == 1 is counted.
    idx = np.searchsorted(edges[1:-1], p, side="right")
    count = np.bincount(idx, minlength=nb)
    sum_p = np.bincount(idx, weights=p, minlength=nb)
    sum_y = np.bincount(idx, weights=y.astype(np.float64), minlength=nb)
    nz = count > 0
    return sum_p[nz] / count[nz], sum_y[nz] / count[nz], count[nz].astype(np.int64), p.size


def calibration_curve(
    y: Any, p: Any, bins: int = 15
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Reliability curve over ``bins`` equal-width bins on [0, 1].

    Returns ``(mean_pred, frac_pos, count)`` for the non-empty bins, in bin order.
    """
    mean_pred, frac_pos, count, _ = _binned(y, p, bins)
    return mean_pred, frac_pos, count


def expected_calibration_error(y: Any, p: Any, bins: int = 15) -> float:
    """Expected calibration error: ``sum_b (n_b / n) * |mean(y)_b - mean(p)_b|``.

    Bins are ``bins`` equal-width intervals on [0, 1]; ``p`` must be probabilities.

    >>> expected_calibration_error([0, 1, 1, 1], [0.25, 0.25, 0.75, 0.75], bins=2)
    0.25
    """
    mean_pred, frac_pos, count, n = _binned(y, p, bins)
    return float(np.sum(count / n * np.abs(frac_pos - mean_pred)))


# --------------------------------------------------------------------------- summary


def _plain(v: float) -> float | None:
    v = float(v)
    return None if math.isnan(v) or math.isinf(v) else v


def summarize(
    y: Any, p: Any, threshold: float, scenarios: Sequence[Any] | np.ndarray | None = None
) -> dict:
    """Headline metrics of one model's scores at one operating threshold.

    Keys: ``auprc``, ``roc_auc``, ``precision``, ``recall``, ``alert_rate``, ``ece``,
    ``positives``, ``events`` and, when ``scenarios`` is given, ``per_scenario`` (see
    :func:`per_scenario_recall`). Values are plain floats/ints; undefined values
    (``nan``) are ``None``, and ``ece`` is ``None`` when ``p`` is not in [0, 1].
    """
    y, p = _labels_scores(y, p)
    t = _threshold(threshold)
    precision, recall = precision_recall_at(y, p, t)
    in_unit = bool(p.min() >= 0.0 and p.max() <= 1.0)
    out: dict[str, Any] = {
        "auprc": _plain(auprc(y, p)),
        "roc_auc": _plain(roc_auc(y, p)),
        "precision": _plain(precision),
        "recall": _plain(recall),
        "alert_rate": _plain(np.count_nonzero(p >= t) / p.size),
        "ece": _plain(expected_calibration_error(y, p)) if in_unit else None,
        "positives": int(np.count_nonzero(y)),
        "events": int(y.size),
    }
    if scenarios is not None:
        out["per_scenario"] = {
            name: {"events": int(d["events"]), "recall": _plain(d["recall"])}
            for name, d in per_scenario_recall(y, p, scenarios, t).items()
        }
    return out
