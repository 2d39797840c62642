"""The shadow challenger: a second model scored on every event beside the served one (the champion).

Its results never reach reviewers: no alert hash, no alert stream, no Kafka message. Per
window (``TXWATCH_DRIFT_WINDOW_S``, aligned to the wall clock like drift) the worker hands
its sink a :class:`ShadowWindow`: how many rows both models scored, how many each would
alert on and on how many both would, a reservoir sample of score pairs (rank correlation),
and the would-be alerts: every event at least one of the two alerts on, with both scores
(each model's precision where reviewers disposed the champion's alerts).

>>> import numpy as np
>>> class Model:                                   # any object with score() and threshold
...     version, threshold = "ch", 0.5
...     def score(self, X): return X[:, 0]
>>> sh = Shadow(Model(), "champ", window_s=60, reservoir=100, seed=0, now=lambda: 120.0)
>>> X = np.array([[0.9], [0.6], [0.1], [0.2]])
>>> sh.observe(["a", "b", "c", "d"], X, np.array([0.8, 0.1, 0.7, 0.1]), 0.5)
>>> w = sh.take()
>>> w.rows, w.champion_alerts, w.challenger_alerts, w.both, [e for e, *_ in w.would_be]
(4, 2, 2, 1, ['a', 'b', 'c'])
>>> w.pairs.shape, w.would_be[1]
((4, 2), ('b', 0.1, 0.6, 'challenger'))
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Protocol, Sequence

import numpy as np

from stream.core.drift import window_start


class Scorer(Protocol):
    version: str
    threshold: float

    def score(self, X: np.ndarray) -> np.ndarray: ...


@dataclass
class ShadowWindow:
    """One window of one worker's shadow scoring (or, summed, of all)."""

    challenger_version: str
    champion_version: str
    start_s: int
    rows: int = 0
    champion_alerts: int = 0
    challenger_alerts: int = 0
    both: int = 0
    pairs: np.ndarray = field(default_factory=lambda: np.empty((0, 2)))   # (champion, challenger) scores
    # (event id, champion score, challenger score, which alerts: "champion", "challenger" or "both")
    would_be: list[tuple[str, float, float, str]] = field(default_factory=list)
    dropped: int = 0     # would-be alerts past the window's cap (counted, not kept)


class Shadow:
    """Scores batches with the challenger and counts agreement with the champion."""

    def __init__(self, challenger: Scorer, champion_version: str, window_s: float, *, reservoir: int = 2000,
                 max_would_be: int = 100_000, seed: int | None = None, now: Callable[[], float] = time.time) -> None:
        self.challenger = challenger
        self.champion_version = champion_version
        self.window_s = float(window_s)
        self.reservoir = reservoir
        self.max_would_be = max_would_be
        self._rng = np.random.default_rng(seed)
        self._now = now
        self._window = self._open(now())

    def _open(self, t: float) -> ShadowWindow:
        return ShadowWindow(self.challenger.version, self.champion_version, window_start(t, self.window_s),
                            pairs=np.empty((0, 2)))

    def observe(self, event_ids: Sequence[str], X: np.ndarray, champion: np.ndarray, threshold: float) -> None:
        """Score a batch's rows with the challenger and count them against the champion's scores."""
        if X is None or not len(X):
            return
        mine = self.challenger.score(X)
        a, b = champion >= threshold, mine >= self.challenger.threshold
        w = self._window
        seen = w.rows
        w.rows += len(X)
        w.champion_alerts += int(a.sum())
        w.challenger_alerts += int(b.sum())
        w.both += int((a & b).sum())
        either = np.flatnonzero(a | b)
        room = self.max_would_be - len(w.would_be)
        if len(either) > room:
            w.dropped += len(either) - max(room, 0)
            either = either[:max(room, 0)]
        w.would_be += [(event_ids[i], float(champion[i]), float(mine[i]),
                        "both" if a[i] and b[i] else ("champion" if a[i] else "challenger")) for i in either]
        self._sample(w, seen, np.column_stack((champion, mine)))

    def _sample(self, w: ShadowWindow, seen: int, pairs: np.ndarray) -> None:
        """Reservoir sampling (Algorithm R), vectorised: row ``i`` of the stream replaces a random
        slot with probability ``reservoir / (i + 1)``; later rows of a batch win ties, as in order."""
        R = self.reservoir
        idx = seen + np.arange(len(pairs))
        fill = idx < R
        if fill.any():
            w.pairs = np.vstack((w.pairs, pairs[fill]))
        rest = np.flatnonzero(~fill)
        if len(rest):
            slots = self._rng.integers(0, idx[rest] + 1)
            hit = slots < R
            w.pairs[slots[hit]] = pairs[rest[hit]]

    def due(self) -> bool:
        """Whether the window being filled has ended."""
        return window_start(self._now(), self.window_s) != self._window.start_s

    def take(self) -> ShadowWindow | None:
        """The window (None if it saw no rows); counting moves to the current window."""
        w = self._window
        self._window = self._open(self._now())
        return w if w.rows else None

    def restore(self, w: ShadowWindow) -> None:
        """Put back a window the sink could not take (added to the current one)."""
        cur = self._window
        cur.rows += w.rows
        cur.champion_alerts += w.champion_alerts
        cur.challenger_alerts += w.challenger_alerts
        cur.both += w.both
        cur.pairs = np.vstack((w.pairs, cur.pairs))[: self.reservoir]
        cur.would_be = (w.would_be + cur.would_be)[: self.max_would_be]
        cur.dropped += w.dropped
