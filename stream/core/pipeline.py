"""The engine-agnostic pipeline core: records in -> states, alerts, dead letters out.

A runner (the faust agent, or the plain aiokafka loop) hands :meth:`Pipeline.process` a
batch of Kafka records of one partition and gets back a :class:`BatchResult`: the new
serialised states of the accounts the batch touched, its alerts, its dead letters and the
partition's last offset. The runner writes that result to the state store in one atomic
step and only then commits Kafka offsets.

Effectively-once: records at or below the partition's stored offset are skipped, so a
batch replayed after a crash or a rebalance changes nothing. States are cached per
partition; a cache miss reads the store; a revoked partition's cache is dropped.

No Kafka or Redis here: the store is any :class:`stream.core.ports.StateSource`
(``load(partition_key, accounts)`` and ``offset(partition_key)``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from stream.core.ports import Record, StateSource
from stream.events.alerts import Alert
from stream.events.deadletters import DeadLetter
from stream.events.schema import MAX_EVENT_BYTES
from stream.features.admission import admit_batch
from stream.features.columns import read_values
from stream.features.kernel import BatchFeatureEngine
from stream.features.layout import StateFormatError
from stream.scoring.student import Student


@dataclass
class BatchResult:
    """Everything one batch changes; written to the store in one atomic step."""

    partition_key: str
    first_offset: int            # offset stored before this batch (-1: none)
    last_offset: int             # offset to store after it
    states: dict[str, bytes] = field(default_factory=dict)
    alerts: list[Alert] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)
    event_ids: list[str] = field(default_factory=list)        # scored events, in order
    score_array: np.ndarray | None = None                     # their scores
    features: np.ndarray | None = None                        # their feature rows
    scored: int = 0
    skipped: int = 0              # replayed records at or below the stored offset
    duplicates: int = 0           # events whose event_id the account has applied already
    score_seconds: float = 0.0
    outbox: bytes = b""           # its Kafka messages, stored with it (stream.core.outbox)
    pending: tuple | None = None  # (EventColumns, feature rows) computed but not yet scored: Pipeline.score

    @property
    def empty(self) -> bool:
        """True when the batch changes nothing in the store."""
        return self.last_offset == self.first_offset


def partition_key(topic: str, partition: int) -> str:
    """The name of one input partition in the store (``topic:partition``)."""
    return f"{topic}:{partition}"


class _PartitionCache:
    __slots__ = ("offset", "engine")

    def __init__(self, offset: int) -> None:
        self.offset = offset  # last offset the cached states include (processed, maybe not yet stored)
        self.engine = BatchFeatureEngine()  # the partition's cached account states


class Pipeline:
    """Parse -> features -> score for batches of one partition; no I/O of its own."""

    def __init__(self, student: Student, source: StateSource, *, reasons_k: int = 3,
                 max_cached_accounts: int = 1_000_000, max_event_bytes: int = MAX_EVENT_BYTES) -> None:
        self.student = student
        self.max_event_bytes = max_event_bytes
        self.source = source
        self.reasons_k = reasons_k
        self.threshold: float | None = None   # set by alert-rate control; None: the model's own
        self.max_cached_accounts = max_cached_accounts
        self._parts: dict[str, _PartitionCache] = {}
        self._epochs: dict[str, int] = {}

    # -- partition lifecycle ----------------------------------------------------
    def revoke(self, pkey: str) -> None:
        """Forget a partition's cached states (it moved to another worker, or its stored
        offset moved under this worker); results computed before are stale from now on."""
        self._parts.pop(pkey, None)
        self._epochs[pkey] = self._epochs.get(pkey, 0) + 1

    def epoch(self, pkey: str) -> int:
        """Changes whenever the partition's cache is dropped: a result computed at another
        epoch must not be stored (compute it again)."""
        return self._epochs.get(pkey, 0)

    def _part(self, pkey: str) -> _PartitionCache:
        part = self._parts.get(pkey)
        if part is None:
            part = self._parts[pkey] = _PartitionCache(self.source.offset(pkey))
        return part

    # -- the batch ----------------------------------------------------------------
    def process(self, records: Sequence[Record], score: bool = True) -> BatchResult:
        """Apply a batch of one partition's records (in offset order).

        ``score=False`` leaves the scoring to :meth:`score`, which scores the batches of
        several partitions in one call (the states and the offset are applied either way).

        The cache holds the new states as soon as this returns, and the next batch of the
        partition continues from them (its result starts where this one ends): results of
        one partition must be stored in the order they were computed, a failed write must
        be retried with the *same* result, and a result that cannot be stored (a fence)
        calls for :meth:`revoke`, which also invalidates every result computed after it.
        """
        if not records:
            raise ValueError("empty batch")
        pkey = partition_key(records[0].topic, records[0].partition)
        part = self._part(pkey)
        result = BatchResult(pkey, part.offset, part.offset)
        # In offset order: when the first record is new, so is every other (the usual case).
        fresh = records if records[0].offset > part.offset else [r for r in records if r.offset > part.offset]
        result.skipped = len(records) - len(fresh)
        if not fresh:
            return result
        self._apply(part, fresh, result)
        # Only now, with the states updated: a read from the store that fails halfway
        # through _apply raises with the cache as it was, and the retry starts over.
        part.offset = result.last_offset
        if score:
            self.score([result])
        return result

    def _apply(self, part: _PartitionCache, fresh: Sequence[Record], result: BatchResult) -> None:
        pkey = result.partition_key
        result.last_offset = fresh[-1].offset

        values = [r.value for r in fresh]
        if None in values:
            for r in fresh:
                if r.value is None:
                    result.dead.append(DeadLetter(r.topic, r.partition, r.offset, "record has no value",
                                                  None, b"", r.key))
            fresh = [r for r in fresh if r.value is not None]
            values = [r.value for r in fresh]
        if not values:
            return
        # Valid events of the plain shape are read straight into columns; a batch holding
        # anything else goes through parse_events, which refuses bad values with the reasons.
        batch, refused = read_values(values, self.max_event_bytes)
        sources: Sequence[Record] = fresh
        if refused:
            for i, exc in refused:
                r = fresh[i]
                result.dead.append(DeadLetter(r.topic, r.partition, r.offset, exc.reason, exc.field,
                                              bytes(r.value), r.key))
            skip = {i for i, _ in refused}
            sources = [r for i, r in enumerate(fresh) if i not in skip]
        if batch is None:
            return

        engine = part.engine
        missing = engine.unknown(set(batch.account_ids))
        if missing:
            for acct, blob in self.source.load(pkey, missing).items():
                if blob is not None:
                    try:
                        engine.load_bytes(acct, blob)
                    except StateFormatError:
                        pass  # unreadable: the account starts afresh
        # Admission (duplicate? too late?) and features for the whole batch, in order, in
        # compiled code: the same call training makes (stream.features.admission).
        admitted = admit_batch(engine, batch)
        X = admitted.X
        if admitted.refused:
            result.duplicates += len(admitted.duplicates)
            for i, reason in admitted.late:
                rec = sources[i]
                result.dead.append(DeadLetter(rec.topic, rec.partition, rec.offset, reason,
                                              "ts", bytes(rec.value or b""), rec.key))
            batch = batch.select(admitted.applied(len(batch)))
        result.states = engine.state_bytes(dict.fromkeys(batch.account_ids))
        if len(batch):
            result.pending = (batch, X)

    def score(self, results: Sequence[BatchResult]) -> None:
        """Score the rows :meth:`process` left pending, of any number of partitions' batches, in
        one call of the model (and one for the alerts' reasons): on a lightly loaded worker
        a batch holds a few rows per partition, and each call of the compiled trees costs far
        more than its rows. Each batch gets its scores, alerts and scored rows."""
        todo = [r for r in results if r.pending is not None]
        if not todo:
            return
        t0 = time.perf_counter()
        student = self.student
        X = todo[0].pending[1] if len(todo) == 1 else np.concatenate([r.pending[1] for r in todo])
        scores = student.score(X)
        threshold = student.threshold if self.threshold is None else self.threshold
        hits = np.flatnonzero(scores >= threshold)
        reasons = student.reasons(X[hits], self.reasons_k) if len(hits) else []
        names = student.feature_names
        start = h = 0
        for result in todo:
            batch, rows = result.pending
            end = start + len(batch)
            while h < len(hits) and hits[h] < end:
                i = int(hits[h])
                ev = batch.event(i - start)
                result.alerts.append(Alert(ev.event_id, ev.account_id, ev.ts, float(scores[i]), threshold,
                                           student.version, reasons[h], ev.to_dict(), result.partition_key,
                                           dict(zip(names, X[i].tolist()))))
                h += 1
            result.scored = len(batch)
            result.event_ids = batch.event_ids
            result.score_array = scores[start:end]
            result.features = rows
            result.pending = None
            start = end
        seconds = time.perf_counter() - t0
        for result in todo:
            result.score_seconds = seconds * result.scored / len(scores)

    def committed(self, result: BatchResult) -> None:
        """Record that ``result`` is durably stored (the cache may be trimmed now)."""
        part = self._parts.get(result.partition_key)
        if part is None:
            return  # revoked while the batch was being stored
        if len(part.engine) > self.max_cached_accounts and part.offset == result.last_offset:
            part.engine.clear()  # bounded memory: the store is the source of truth
