"""Drift in the stream: per-window histograms of every feature and of the score, against the
student's reference profile (:mod:`stream.scoring.profile`).

The worker adds every persisted batch's feature rows and scores to a :class:`DriftCounter`
(one vectorised binning per feature column with the profile's own edges: bounded memory,
``features x bins`` integers whatever the traffic). Once per window (``TXWATCH_DRIFT_WINDOW_S``,
aligned to the wall clock so every worker's counts for one window add up in one place) it
hands the window to its sink: Redis, where ``txwatch drift`` reads and sums them.

A window's stored form is defined here, once: a hash of counters, ``rows``, ``alerts``,
``s:<bin>`` (score bins) and ``f:<feature index>:<bin>``, only the non-zero ones.

>>> import numpy as np
>>> from stream.scoring.profile import build_profile, fidelity
>>> rng = np.random.default_rng(0)
>>> X = rng.normal(size=(2000, 2)); p = rng.random(2000)
>>> prof = build_profile(X, ("a", "b"), p, threshold=0.9, alert_rate=0.1, alert_rate_target=0.1,
...                      fidelity=fidelity(p, p))
>>> c = DriftCounter(prof, "m1", window_s=60, now=lambda: 120.0)
>>> c.add(X[:500], p[:500], 50)
>>> w = c.take()
>>> (w.start_s, w.rows, w.alerts), window_from_fields(window_fields(w), prof)[0]
((120, 500, 50), 500)
>>> r = report(prof, *window_from_fields(window_fields(w), prof))
>>> r["score_psi"] < 0.1, max(f["psi"] for f in r["features"].values()) < 0.1
(True, True)
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np

from stream.scoring.profile import Profile, feature_counts, psi, score_counts

# PSI reading (the usual rule of thumb): below 0.1 stable, 0.1-0.25 moderate, above 0.25 significant.
PSI_MODERATE, PSI_SIGNIFICANT = 0.1, 0.25


@dataclass
class DriftWindow:
    """One window's counts of one worker (or, summed, of all)."""

    model_version: str
    start_s: int
    rows: int
    alerts: int
    features: np.ndarray     # int64 [n_features, n_bins]
    score: np.ndarray        # int64 [score bins]


def window_start(t: float, window_s: float) -> int:
    """The start of the wall-clock window of ``window_s`` seconds holding time ``t`` (every
    worker's counts for one window land under one start).

    >>> window_start(125.0, 60), window_start(119.9, 60)
    (120, 60)
    """
    return int(t // window_s * window_s)


class DriftCounter:
    """Accumulates a window's histograms; :meth:`take` hands them over and starts afresh."""

    def __init__(self, profile: Profile, model_version: str, window_s: float,
                 now: Callable[[], float] = time.time) -> None:
        self.profile = profile
        self.model_version = model_version
        self.window_s = float(window_s)
        self._now = now
        self._start = window_start(now(), self.window_s)
        self._reset()

    def _reset(self) -> None:
        self.features = np.zeros((len(self.profile.feature_names), self.profile.n_bins), dtype=np.int64)
        self.score = np.zeros(len(self.profile.score_edges) + 1, dtype=np.int64)
        self.rows = 0
        self.alerts = 0

    def add(self, X: np.ndarray, scores: np.ndarray, alerts: int) -> None:
        """Count a batch's feature rows, scores and alerts."""
        if X is None or not len(X):
            return
        self.features += feature_counts(self.profile, X)
        self.score += score_counts(self.profile, scores)
        self.rows += len(X)
        self.alerts += alerts

    def due(self) -> bool:
        """Whether the window this counter fills has ended."""
        return window_start(self._now(), self.window_s) != self._start

    def take(self) -> DriftWindow | None:
        """The window's counts (None if it saw no rows); the counter moves to the current window."""
        w = None
        if self.rows:
            w = DriftWindow(self.model_version, self._start, self.rows, self.alerts, self.features, self.score)
        self._start = window_start(self._now(), self.window_s)
        self._reset()
        return w

    def restore(self, w: DriftWindow) -> None:
        """Put back a window the sink could not take (counted again with the next one)."""
        self.features += w.features
        self.score += w.score
        self.rows += w.rows
        self.alerts += w.alerts


def window_fields(w: DriftWindow) -> dict[str, int]:
    """A window as its stored counters (non-zero ones only)."""
    out = {"rows": int(w.rows), "alerts": int(w.alerts)}
    for b in np.flatnonzero(w.score):
        out[f"s:{b}"] = int(w.score[b])
    for j, b in zip(*np.nonzero(w.features)):
        out[f"f:{j}:{b}"] = int(w.features[j, b])
    return out


def window_from_fields(fields: Mapping[Any, Any], profile: Profile) -> tuple[int, int, np.ndarray, np.ndarray]:
    """``(rows, alerts, feature counts, score counts)`` of stored counters (bytes or str);
    counters outside the profile's shape are ignored."""
    feats = np.zeros((len(profile.feature_names), profile.n_bins), dtype=np.int64)
    score = np.zeros(len(profile.score_edges) + 1, dtype=np.int64)
    rows = alerts = 0
    for k, v in fields.items():
        key = k.decode() if isinstance(k, bytes) else str(k)
        n = int(v)
        if key == "rows":
            rows = n
        elif key == "alerts":
            alerts = n
        elif key.startswith("s:"):
            b = int(key[2:])
            if 0 <= b < len(score):
                score[b] += n
        elif key.startswith("f:"):
            j, b = map(int, key[2:].split(":"))
            if 0 <= j < feats.shape[0] and 0 <= b < feats.shape[1]:
                feats[j, b] += n
    return rows, alerts, feats, score


def report(profile: Profile, rows: int, alerts: int, features: np.ndarray, score: np.ndarray) -> dict[str, Any]:
    """PSI per feature and for the score, and the alert rate against the profile's."""
    feats = {}
    for j, name in enumerate(profile.feature_names):
        k = len(profile.freq[j])
        feats[name] = {"psi": round(psi(profile.freq[j], features[j, :k]), 5)}
    rate = alerts / rows if rows else None
    return {"rows": int(rows), "alerts": int(alerts),
            "score_psi": round(psi(profile.score_freq, score), 5),
            "alert_rate": round(rate, 6) if rate is not None else None,
            "alert_rate_reference": profile.alert_rate, "alert_rate_target": profile.alert_rate_target,
            "features": feats}
