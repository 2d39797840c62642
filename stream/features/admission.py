"""Admission and features of events as the stream applies them: one path for serving and training.

An event is *admitted* to its account unless its id is among the account's last
``MAX_RECENT_IDS`` event ids (a duplicate delivery: skipped, it has been applied) or it is
more than ``LATE_TOLERANCE_MS`` behind the account's latest event (refused: the stream
dead-letters it with the reason). An admitted event older than the account's latest one
is applied at that time with ``late = 1``. The rules are :func:`stream.features.reference.admit`'s;
the compiled kernel applies them and the features in one pass.

The stream worker calls :func:`admit_batch` per partition batch (:mod:`stream.core.pipeline`);
training calls :func:`replay_stream` over a whole events file in the order the stream
would receive it (:mod:`training.dataset`). Both run the same kernel over the same
per-account sequences, so offline and online feature rows are bit-identical
(``tests/stream/core/test_parity.py``).

>>> from stream.events.schema import Event
>>> e = Event("e1", 1767571200000, "a", "deposit", "BTC", 1.0, 5.0)
>>> old = Event("e0", 1767571200000 - 7_200_000, "a", "deposit", "BTC", 1.0, 5.0)
>>> r = replay_stream([e, e, old])
>>> r.X.shape, r.applied.tolist(), r.duplicates, r.late
((1, 48), [0], [1], [(2, 'late by 7200s (tolerance 3600s)')])
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from stream.events.schema import Event
from stream.features.columns import EventColumns
from stream.features.kernel import DUPLICATE, BatchFeatureEngine
from stream.features.layout import N_FEATURES, late_reason



@dataclass(slots=True)
class Admitted:
    """The outcome of a batch: features of the applied events, and what was refused."""

    X: np.ndarray                     # one row per applied event, in order
    duplicates: list[int]             # batch indices skipped as duplicates
    late: list[tuple[int, str]]       # batch indices refused as too late, with the reason

    @property
    def refused(self) -> bool:
        """True when some event of the batch was not applied."""
        return bool(self.duplicates or self.late)

    def applied(self, n: int) -> list[int]:
        """The batch indices (of a batch of ``n``) of the applied events, in order."""
        skip = set(self.duplicates).union(i for i, _ in self.late)
        return [i for i in range(n) if i not in skip]


def admit_batch(engine: BatchFeatureEngine, events: Sequence[Event] | EventColumns) -> Admitted:
    """Admit and apply a batch of events in order on ``engine``'s account states."""
    behind = np.empty(len(events))
    X, outcomes = engine.process(events, behind=behind)
    duplicates: list[int] = []
    late: list[tuple[int, str]] = []
    for i in np.flatnonzero(outcomes).tolist():
        if outcomes[i] == DUPLICATE:
            duplicates.append(i)
        else:
            late.append((i, late_reason(behind[i])))
    return Admitted(X, duplicates, late)


@dataclass(slots=True)
class StreamFeatures:
    """Features of a whole event sequence replayed as the stream receives it."""

    X: np.ndarray                     # one row per applied event, in order
    applied: np.ndarray               # int64 indices (into the sequence) of the applied events
    duplicates: list[int]             # indices skipped as duplicates
    late: list[tuple[int, str]]       # indices refused as too late, with the reason


def replay_stream(events: Sequence[Event], *, batch: int = 50_000,
                  on_progress: Callable[[int], None] | None = None) -> StreamFeatures:
    """Replay ``events`` in the given (arrival) order through admission and the kernel.

    One engine holds every account; ``batch`` only bounds the temporary arrays (the
    result does not depend on it). ``on_progress(n)`` is called after each batch of ``n``.
    """
    engine = BatchFeatureEngine()
    chunks: list[np.ndarray] = []
    refused = np.zeros(len(events), dtype=bool)
    duplicates: list[int] = []
    late: list[tuple[int, str]] = []
    for start in range(0, len(events), batch):
        part = events[start:start + batch]
        adm = admit_batch(engine, part)
        chunks.append(adm.X)
        for i in adm.duplicates:
            duplicates.append(start + i)
            refused[start + i] = True
        for i, reason in adm.late:
            late.append((start + i, reason))
            refused[start + i] = True
        if on_progress is not None:
            on_progress(len(part))
    X = np.concatenate(chunks) if chunks else np.zeros((0, N_FEATURES))
    return StreamFeatures(X, np.flatnonzero(~refused), duplicates, late)
