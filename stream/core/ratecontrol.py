"""Alert-rate control (optional, off by default): hold the alert rate near a target by moving
the alert threshold, within stated bounds, from a rolling quantile of recent scores.

Traffic drifts; a fixed threshold then alerts on a share of events that drifts with it, and a
review team sized for 1 % of events drowns at 5 %. With control on, the worker keeps the last
``window`` scores in a ring buffer (bounded memory) and, every ``every`` scored events, sets
the threshold to their ``1 - target`` quantile, clamped to ``[lowest, highest]``. Each change
is a :class:`ThresholdChange` (when, old, new, why) that the worker records, and every alert
stores the threshold it was judged against.

>>> import numpy as np
>>> c = RateController(0.5, target=0.01, lowest=0.25, highest=0.999, window=10_000, every=1_000,
...                    model_version="m", now_ms=lambda: 0)
>>> rng = np.random.default_rng(0)
>>> changes = [c.observe(rng.random(1_000)) for _ in range(10)]
>>> round(c.threshold, 2), changes[0].old, changes[0].why.startswith("rolling 99.0 % quantile of the last 1,000")
(0.99, 0.5, True)
>>> changes = [c.observe(np.full(1_000, 0.1)) for _ in range(10)]   # bounded: never under `lowest`
>>> c.threshold, [ch for ch in changes if ch][-1].why.endswith("(at its lower bound)")
(0.25, True)
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np


@dataclass(frozen=True)
class ThresholdChange:
    """One move of the alert threshold."""

    at_ms: int
    model_version: str
    old: float
    new: float
    why: str

    def as_dict(self) -> dict:
        """The change as its stored JSON object."""
        return {"at_ms": self.at_ms, "model_version": self.model_version, "old": self.old, "new": self.new,
                "why": self.why}


class RateController:
    """Moves the threshold toward the ``target`` alert rate, between ``lowest`` and ``highest``."""

    def __init__(self, threshold: float, *, target: float, lowest: float, highest: float, window: int, every: int,
                 model_version: str, now_ms: Callable[[], int] = lambda: int(time.time() * 1000)) -> None:
        if not 0.0 < target < 1.0:
            raise ValueError(f"target alert rate must be between 0 and 1, got {target}")
        if not lowest <= threshold <= highest:
            raise ValueError(f"the model's threshold {threshold} is outside the bounds [{lowest}, {highest}]")
        self.threshold = float(threshold)
        self.target, self.lowest, self.highest = target, lowest, highest
        self.every = every
        self.model_version = model_version
        self._now_ms = now_ms
        self._ring = np.empty(window, dtype=np.float64)
        self._filled = 0
        self._pos = 0
        self._since = 0

    def observe(self, scores: np.ndarray) -> ThresholdChange | None:
        """Take a batch's scores; the change of threshold they lead to, if any."""
        n = len(scores)
        if not n:
            return None
        size = len(self._ring)
        if n >= size:
            self._ring[:] = scores[-size:]
            self._pos, self._filled = 0, size
        else:
            end = self._pos + n
            if end <= size:
                self._ring[self._pos:end] = scores
            else:
                cut = size - self._pos
                self._ring[self._pos:] = scores[:cut]
                self._ring[:n - cut] = scores[cut:]
            self._pos = end % size
            self._filled = min(size, self._filled + n)
        self._since += n
        if self._since < self.every or self._filled < min(size, self.every):
            return None
        self._since = 0
        recent = self._ring[:self._filled]
        q = float(np.quantile(recent, 1.0 - self.target))
        new = min(max(q, self.lowest), self.highest)
        if abs(new - self.threshold) <= 1e-9 * max(1.0, abs(self.threshold)):
            return None
        bound = " (at its lower bound)" if new == self.lowest else (" (at its upper bound)" if new == self.highest else "")
        change = ThresholdChange(self._now_ms(), self.model_version, self.threshold, new,
                                 f"rolling {100 * (1 - self.target):.1f} % quantile of the last {self._filled:,} "
                                 f"scores: {q:.6g}{bound}")
        self.threshold = new
        return change
