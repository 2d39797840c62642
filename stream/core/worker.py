"""What every runner shares: per-batch handling, retries, fencing, the order of writes, model reload.

A runner (faust agent or plain aiokafka loop) only turns its consumer's records into
:class:`stream.core.ports.Record` batches and calls :meth:`WorkerCore.handle` (or
:meth:`~WorkerCore.prepare` then :meth:`~WorkerCore.persist`); when that returns, the
batch is durably in the store and the runner may commit Kafka offsets.

Order of writes per partition batch: dead letters and alerts are published to Kafka and
acknowledged first (at-least-once; consumers deduplicate by key), then states, offset
and alerts go to the store in one atomic step, then Kafka offsets are committed. A crash
anywhere replays the batch; the stored offset makes the replay a no-op in the store.

The core talks to the world only through its ports (:mod:`stream.core.ports`).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from typing import Callable, Sequence

import orjson

from stream.core.pipeline import BatchResult, Pipeline, partition_key
from stream.core.ports import FenceError, ModelSource, Publish, Record, StateStore
from stream.errors import ServiceUnavailable
from stream.events.alerts import alert_message
from stream.events.deadletters import dead_letter_record
from stream.metrics import WorkerMetrics
from stream.scoring.student import Student
from stream.settings import Settings

log = logging.getLogger("txwatch.worker")


def group_by_partition(records: Sequence[Record]) -> list[list[Record]]:
    """Records split by (topic, partition), each group in arrival order."""
    groups: dict[tuple[str, int], list[Record]] = {}
    for r in records:
        groups.setdefault((r.topic, r.partition), []).append(r)
    return list(groups.values())


# Batches computed but not yet stored: per partition its records, its result, and the
# partition's cache epoch when it was computed (see Pipeline.epoch).
Prepared = list[tuple[Sequence[Record], BatchResult, int]]


class WorkerCore:
    """Batch handling shared by the runners."""

    def __init__(self, settings: Settings, store: StateStore, student: Student, publish: Publish,
                 metrics: WorkerMetrics | None = None, watcher: ModelSource | None = None) -> None:
        self.settings = settings
        self.store = store
        self.publish = publish
        self.metrics = metrics or WorkerMetrics()
        self.watcher = watcher
        self.pipeline = Pipeline(student, store, reasons_k=settings.reasons_k,
                                 max_event_bytes=settings.max_event_bytes)
        self._next_poll = time.monotonic() + settings.model_poll_s
        self._next_log = time.monotonic() + settings.log_interval_s

    @property
    def student(self) -> Student:
        """The serving model."""
        return self.pipeline.student

    def revoke(self, topic: str, partition: int) -> None:
        """Drop a revoked partition's cached states."""
        self.pipeline.revoke(partition_key(topic, partition))

    async def _retry(self, what: str, fn: Callable[[], object]) -> object:
        """Run ``fn`` (awaiting its result if it is awaitable) until it succeeds, backing
        off while a service is unavailable (never on bugs)."""
        delay = 0.1
        while True:
            try:
                out = fn()
                return await out if inspect.isawaitable(out) else out
            except ServiceUnavailable as exc:  # the adapters' word for "not reachable now"
                self.metrics.retries.inc()
                log.warning("%s failed (%s); retrying in %.1fs", what, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.settings.retry_max_s)

    async def handle(self, records: Sequence[Record]) -> list[BatchResult]:
        """Process a batch (any partitions, in offset order per partition); return once
        everything is durably stored: :meth:`prepare`, then :meth:`persist`."""
        return await self.persist(await self.prepare(group_by_partition(records)))

    async def prepare(self, groups: Sequence[Sequence[Record]]) -> Prepared:
        """Compute the batches' results (CPU only, unless a state must be read from Redis).

        A runner may prepare the next batch while the previous one is being stored, as
        long as it stores them in the order they were prepared.
        """
        self._maybe_reload()
        return [await self._compute(group) for group in groups if group]

    async def _compute(self, group: Sequence[Record]) -> tuple[Sequence[Record], BatchResult, int]:
        """One partition's batch, its result, and the partition's epoch from *before* the
        computation: conservative, a result that may span a revoke (process() waits on
        retries) is computed again before it is stored."""
        epoch = self.pipeline.epoch(partition_key(group[0].topic, group[0].partition))
        result = await self._retry("reading states", lambda: self.pipeline.process(group))
        return group, result, epoch

    async def persist(self, prepared: Prepared) -> list[BatchResult]:
        """Make prepared batches durable; return their results once they are.

        All partitions share one Kafka produce (dead letters, alerts) and one Redis round
        trip (one atomic script per partition, pipelined), so the fixed cost per batch does
        not grow with the number of partitions in it. The Redis round trip runs in a worker
        thread: the event loop stays free meanwhile, so the Kafka consumer keeps fetching.
        A batch whose partition was dropped since it was prepared (a fence met by an
        earlier batch, a rebalance) is computed again from the store first.
        """
        pending = prepared
        done: list[tuple[BatchResult, Sequence[Record], list[str]]] = []
        while pending:
            current = [entry if self.pipeline.epoch(entry[1].partition_key) == entry[2]
                       else await self._compute(entry[0]) for entry in pending]
            results = [result for _, result, _ in current]
            await self._publish(results)
            outcomes = await self._retry("writing the batch to Redis",
                                         lambda: asyncio.to_thread(self.store.commit_many, results))
            pending = []
            for (group, result, epoch), outcome in zip(current, outcomes):
                if isinstance(outcome, FenceError):
                    # Another worker wrote this partition: forget our view and redo from the store.
                    log.warning("%s; reloading the partition's state", outcome)
                    self.pipeline.revoke(result.partition_key)
                    pending.append((group, result, epoch))
                else:
                    self.pipeline.committed(result)
                    done.append((result, group, outcome))
        self._count(done)
        self._maybe_log()
        return [result for result, _, _ in done]

    async def _publish(self, results: list[BatchResult]) -> None:
        cap = self.settings.dead_letter_max_bytes
        dead = [dead_letter_record(d, cap) for r in results for d in r.dead]
        alerts = [(a.event_id.encode(), orjson.dumps(alert_message(a)), []) for r in results for a in r.alerts]
        sends = []
        if dead:
            sends.append(self.publish(self.settings.dead_letter_topic, dead))
        if alerts:
            sends.append(self.publish(self.settings.alerts_topic, alerts))
        if sends:
            await asyncio.gather(*sends)

    def _count(self, done: list[tuple[BatchResult, Sequence[Record], list[str]]]) -> None:
        m = self.metrics
        now = time.time()
        for result, group, added in done:
            m.events.labels(outcome="scored").inc(result.scored)
            m.events.labels(outcome="skipped").inc(result.skipped)
            m.events.labels(outcome="duplicate").inc(result.duplicates)
            if result.dead:
                m.events.labels(outcome="dead").inc(len(result.dead))
                for d in result.dead:
                    m.dead.labels(reason=(d.field or d.reason.split(":")[0])[:40]).inc()
            m.alerts.inc(len(added))
            if result.scored:
                m.batch_seconds.observe(result.score_seconds)
                ts = group[-1].timestamp
                if ts:
                    m.latency.observe(max(now - ts / 1000.0, 0.0))

    def idle(self) -> None:
        """Housekeeping when no records arrive: model checks and the progress line go on."""
        self._maybe_reload()
        self._maybe_log()

    def _maybe_reload(self) -> None:
        if self.watcher is None or time.monotonic() < self._next_poll:
            return
        self._next_poll = time.monotonic() + self.settings.model_poll_s
        new = self.watcher.poll()
        if new is not None:
            self.pipeline.student = new

    def _maybe_log(self) -> None:
        if time.monotonic() >= self._next_log:
            self._next_log = time.monotonic() + self.settings.log_interval_s
            log.info("%s model=%s", self.metrics.log_line(), self.student.version)
