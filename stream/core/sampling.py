"""The live fidelity sample: a random share of the scored rows, kept until they are sent.

The worker hands every persisted batch's feature rows, scores and event ids to a
:class:`FidelitySampler`; it keeps each row with probability ``rate`` (one vectorised draw
per batch) and, at most once per ``every_s`` seconds, :meth:`~FidelitySampler.take` returns
the rows kept since as one :class:`stream.events.samples.Sample` for the worker's sink
(Redis: ``txwatch fidelity`` reads them). Memory is bounded: past ``max_rows`` waiting rows
(the sink unreachable for long) the oldest are dropped and counted.

>>> import numpy as np
>>> t = [0.0]
>>> s = FidelitySampler(0.5, "m1", every_s=1.0, seed=1, now=lambda: t[0])
>>> s.add(["a", "b", "c", "d"] * 250, np.random.default_rng(0).random((1000, 3)), np.zeros(1000))
>>> s.take() is None                      # not yet a second since the last send
True
>>> t[0] = 1.5; sample = s.take()
>>> 400 < len(sample.ids) < 600, sample.rows.shape[1], s.take()
(True, 3, None)
"""

from __future__ import annotations

import time
from typing import Callable, Sequence

import numpy as np

from stream.events.samples import Sample


class FidelitySampler:
    """Bernoulli sample of scored rows, sent in bounded chunks."""

    def __init__(self, rate: float, model_version: str, *, every_s: float = 1.0, max_rows: int = 50_000,
                 seed: int | None = None, now: Callable[[], float] = time.time) -> None:
        if not 0.0 < rate <= 1.0:
            raise ValueError(f"sample rate must be in (0, 1], got {rate}")
        self.rate = rate
        self.model_version = model_version
        self.every_s = every_s
        self.max_rows = max_rows
        self.dropped = 0              # rows dropped because the sink could not keep up
        self._rng = np.random.default_rng(seed)
        self._now = now
        self._last = now()
        self._ids: list[str] = []
        self._rows: list[np.ndarray] = []
        self._scores: list[np.ndarray] = []
        self._n = 0

    def add(self, event_ids: Sequence[str], X: np.ndarray, scores: np.ndarray) -> None:
        """Consider a batch's scored rows."""
        n = len(event_ids)
        if not n:
            return
        keep = np.flatnonzero(self._rng.random(n) < self.rate)
        if not len(keep):
            return
        self._ids += [event_ids[i] for i in keep]
        self._rows.append(X[keep])
        self._scores.append(scores[keep])
        self._n += len(keep)
        if self._n > self.max_rows:
            self._trim()

    def _trim(self) -> None:
        rows, scores = np.concatenate(self._rows), np.concatenate(self._scores)
        cut = self._n - self.max_rows
        self.dropped += cut
        self._ids, self._rows, self._scores = self._ids[cut:], [rows[cut:]], [scores[cut:]]
        self._n = self.max_rows

    def take(self, force: bool = False) -> Sample | None:
        """The rows kept since the last send, if it is time to send (or ``force``) and there are any."""
        now = self._now()
        if not self._n or not (force or now - self._last >= self.every_s):
            return None
        sample = Sample(self.model_version, int(now * 1000), self._ids, np.concatenate(self._scores),
                        np.concatenate(self._rows))
        self._last = now
        self._ids, self._rows, self._scores, self._n = [], [], [], 0
        return sample

    def restore(self, sample: Sample) -> None:
        """Put back a sample the sink could not take (sent with the next one; bounded)."""
        self._ids = sample.ids + self._ids
        self._rows.insert(0, sample.rows)
        self._scores.insert(0, sample.scores)
        self._n += len(sample.ids)
        if self._n > self.max_rows:
            self._trim()
