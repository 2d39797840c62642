"""What every runner shares: per-batch handling, retries, fencing, the order of writes, model reload.

A runner (faust agent or plain aiokafka loop) only turns its consumer's records into
:class:`stream.core.ports.Record` batches and calls :meth:`WorkerCore.handle` (or
:meth:`~WorkerCore.prepare` then :meth:`~WorkerCore.persist`); when that returns, the
batch is durably in the store and the runner may commit Kafka offsets.

Order of writes per partition batch: states, offset, alerts and the batch's Kafka messages
(its outbox entry: :mod:`stream.core.outbox`) go to the store in one atomic step; then
the dead letters and alerts are published to Kafka (at-least-once; consumers deduplicate
by key), without holding the next batch's commit; Kafka offsets are committed once both
are done. A crash anywhere replays the batch: the stored offset makes the replay a no-op
in the store, and whatever the outbox still holds is published by the partition's next
owner. An entry Kafka has acknowledged is removed from the outbox by the next commit's round
trip (or at the next idle tick), not by a round trip of its own; one a crash leaves there
is published again (at-least-once).

The core talks to the world only through its ports (:mod:`stream.core.ports`).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import time
from typing import Callable, Sequence

import numpy as np
import orjson

from stream.core import outbox
from stream.core.pipeline import BatchResult, Pipeline, partition_key
from stream.core.drift import DriftCounter, report
from stream.core.ports import FenceError, ModelSource, MonitorSink, Publish, Record, StateStore
from stream.core.ratecontrol import RateController, ThresholdChange
from stream.core.sampling import FidelitySampler
from stream.core.shadow import Shadow
from stream.errors import ServiceUnavailable
from stream.events.alerts import alert_message
from stream.events.deadletters import dead_letter_record
from stream.metrics import WorkerMetrics
from stream.scoring.student import Student
from stream.settings import Settings

log = logging.getLogger("txwatch.worker")

_MONITOR_WHAT = {"threshold": "threshold change", "sample": "fidelity sample", "shadow": "shadow window",
                 "drift": "drift window"}


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
                 metrics: WorkerMetrics | None = None, watcher: ModelSource | None = None,
                 monitor: MonitorSink | None = None) -> None:
        self.settings = settings
        self.store = store
        self.publish = publish
        self.metrics = metrics or WorkerMetrics()
        self.watcher = watcher
        self.pipeline = Pipeline(student, store, reasons_k=settings.reasons_k,
                                 max_event_bytes=settings.max_event_bytes)
        self._next_poll = time.monotonic() + settings.model_poll_s
        self._next_log = time.monotonic() + settings.log_interval_s
        self._publishing: list[asyncio.Future] = []   # publishes of persisted batches in flight
        self._drained: set[str] = set()               # partitions whose outbox was read since they came
        self._acked_entries: dict[str, list[int]] = {}  # outbox entries on Kafka, to clear with the next commit
        self.monitor = monitor
        self.drift: DriftCounter | None = None
        self.control: RateController | None = None
        self._changes: list[ThresholdChange] = []     # threshold moves not yet recorded
        self._monitor_task: asyncio.Task | None = None  # the monitoring hand-over in flight
        self.sampler: FidelitySampler | None = None
        self.shadow: Shadow | None = None
        self._start_monitoring(student)
        self._poll_challenger()
        fail = settings.failpoint
        self._fail_after = int(fail.split(":", 1)[1]) if fail.startswith("exit-after-redis-commit:") else None

    @property
    def student(self) -> Student:
        """The serving model."""
        return self.pipeline.student

    def _start_monitoring(self, student: Student) -> None:
        """Count drift for ``student`` (when it has a reference profile and a sink is set), and
        start alert-rate control from its own threshold (when on)."""
        s = self.settings
        profile = getattr(self.watcher, "profile", None)
        on = self.monitor is not None and profile is not None and s.drift_window_s > 0
        self.drift = DriftCounter(profile, student.version, s.drift_window_s) if on else None
        self.sampler = (FidelitySampler(s.fidelity_sample_rate, student.version)
                        if self.monitor is not None and s.fidelity_sample_rate > 0 else None)
        self.pipeline.threshold = None
        self.control = None
        if s.rate_control_target > 0:
            lo, hi = s.rate_control_factors
            t = student.threshold
            self.control = RateController(t, target=s.rate_control_target, lowest=t * lo, highest=min(1.0, t * hi),
                                          window=s.rate_control_window, every=s.rate_control_every,
                                          model_version=student.version)
            self.metrics.threshold.set(t)

    def _poll_challenger(self) -> None:
        """Start, change or stop shadowing a challenger as the watcher says (its counts so far
        are handed over first: they belong to their own pair of models)."""
        poll = getattr(self.watcher, "poll_challenger", None)
        if poll is None or self.monitor is None:
            return
        changed, challenger = poll(self.student)
        if not changed:
            return
        if self.shadow is not None:
            self._flush_monitor(force=True)
        self.shadow = (Shadow(challenger, self.student.version, self.settings.drift_window_s or 60.0)
                       if challenger is not None else None)

    def _observe(self, done: list[tuple[BatchResult, Sequence[Record], list[str]]]) -> None:
        """Monitoring of stored batches: drift, alert-rate control, the fidelity sample, the shadow.
        The partitions' rows go to each monitor at once (the shadow scores them in one call)."""
        scored = [result for result, _, _ in done if result.scored]
        if scored:
            threshold = self.student.threshold if self.pipeline.threshold is None else self.pipeline.threshold
            if len(scored) == 1:
                ids, X, scores = scored[0].event_ids, scored[0].features, scored[0].score_array
            else:
                ids = [i for r in scored for i in r.event_ids]
                X = np.concatenate([r.features for r in scored])
                scores = np.concatenate([r.score_array for r in scored])
            if self.drift is not None:
                self.drift.add(X, scores, sum(len(r.alerts) for r in scored))
            if self.sampler is not None:
                self.sampler.add(ids, X, scores)
            if self.shadow is not None:
                self.shadow.observe(ids, X, scores, threshold)
            if self.control is not None:
                for result in scored:
                    self._control(result.score_array)
        self._flush_monitor()

    def _control(self, scores) -> None:
        """Feed alert-rate control a batch's scores; a move applies from the next batch on."""
        change = self.control.observe(scores)
        if change is not None:
            self.pipeline.threshold = change.new
            self._changes.append(change)
            self.metrics.threshold.set(change.new)
            log.info("alert threshold %.6g -> %.6g: %s", change.old, change.new, change.why)

    def _flush_monitor(self, force: bool = False, inline: bool = False) -> None:
        """Hand threshold moves, the fidelity sample, a finished shadow window and a finished
        drift window to the sink; what it cannot take now is kept and handed over with the next.

        Inside the event loop the writes run in a worker thread, one hand-over at a time, so a
        window's Redis round trip never holds the next batch (a shadow window can hold
        thousands of would-be alerts); ``inline`` (and outside a loop) they run here."""
        if self.monitor is None:
            return
        busy = self._monitor_task is not None and not self._monitor_task.done()
        if busy and not force:
            return  # the next call hands over what is due then
        items = self._take_monitoring(force)
        if not items:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if inline or busy or loop is None:
            self._put_back(self._write_monitoring(items))
            return
        self._monitor_task = loop.create_task(self._write_monitoring_later(items))

    def _take_monitoring(self, force: bool) -> list[tuple[str, object, object]]:
        """``(kind, record, owner)`` of everything due now, taken from its counter."""
        items: list[tuple[str, object, object]] = [("threshold", c, None) for c in self._changes]
        self._changes = []
        sample = self.sampler.take(force) if self.sampler is not None else None
        if sample is not None:
            items.append(("sample", sample, self.sampler))
        if self.shadow is not None and (force or self.shadow.due()):
            window = self.shadow.take()
            if window is not None:
                items.append(("shadow", window, self.shadow))
        if self.drift is not None and (force or self.drift.due()):
            window = self.drift.take()
            if window is not None:
                items.append(("drift", window, self.drift))
        return items

    def _write_monitoring(self, items: list[tuple[str, object, object]]) -> list[tuple[str, object, object]]:
        """Write each record to the sink (any thread); the ones it could not take."""
        failed = []
        for kind, record, owner in items:
            try:
                if kind == "threshold":
                    self.monitor.record_threshold(record)
                elif kind == "sample":
                    self.monitor.record_sample(record)
                    self.metrics.fidelity_sample_rows.inc(len(record.ids))
                elif kind == "shadow":
                    self.monitor.record_shadow(record)
                    self.metrics.observe_shadow(record)
                else:
                    self.monitor.record_drift(record)
                    self.metrics.observe_drift(report(owner.profile, record.rows, record.alerts, record.features,
                                                      record.score))
            except ServiceUnavailable as exc:
                log.warning("%s not stored yet (%s); kept for the next hand-over", _MONITOR_WHAT[kind], exc)
                failed.append((kind, record, owner))
        return failed

    async def _write_monitoring_later(self, items) -> None:
        self._put_back(await asyncio.to_thread(self._write_monitoring, items))

    def _put_back(self, failed: list[tuple[str, object, object]]) -> None:
        """Return what the sink refused to its counters (in the event loop's thread), unless the
        model it counted for changed meanwhile (then it is dropped, and said)."""
        self._changes[:0] = [record for kind, record, _ in failed if kind == "threshold"]
        current = {"sample": self.sampler, "shadow": self.shadow, "drift": self.drift}
        for kind, record, owner in failed:
            if kind == "threshold":
                continue
            if owner is current[kind]:
                owner.restore(record)
            else:
                log.warning("%s dropped: the model it was counted for is no longer served", _MONITOR_WHAT[kind])

    async def monitored(self) -> None:
        """Wait for the monitoring hand-over in flight, if any."""
        if self._monitor_task is not None:
            await asyncio.wait([self._monitor_task])

    def flush_monitoring(self) -> None:
        """On a graceful stop: hand over the open drift and shadow windows and the waiting
        fidelity sample now, here, rather than lose them with the process (a sink that does
        not answer loses them; the stop deadline bounds the wait)."""
        self._flush_monitor(force=True, inline=True)

    def revoke(self, topic: str, partition: int) -> None:
        """Drop a revoked partition's cached states (and read its outbox again if it returns)."""
        pkey = partition_key(topic, partition)
        self.pipeline.revoke(pkey)
        self._drained.discard(pkey)

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
        everything is durably stored and published, and any monitoring hand-over it started
        is done: :meth:`prepare`, :meth:`persist`, :meth:`published`, :meth:`monitored`."""
        results = await self.persist(await self.prepare(group_by_partition(records)))
        await self.published()
        await self.monitored()
        return results

    async def prepare(self, groups: Sequence[Sequence[Record]]) -> Prepared:
        """Compute the batches' results (CPU only, unless a state must be read from Redis).

        A runner may prepare the next batch while the previous one is being stored, as
        long as it stores them in the order they were prepared.
        """
        self._maybe_reload()
        prepared = [await self._compute(group, score=False) for group in groups if group]
        self.pipeline.score([result for _, result, _ in prepared])  # every partition's rows in one call
        return prepared

    async def _compute(self, group: Sequence[Record], score: bool = True) -> tuple[Sequence[Record], BatchResult, int]:
        """One partition's batch, its result, and the partition's epoch from *before* the
        computation: conservative, a result that may span a revoke (process() waits on
        retries) is computed again before it is stored. ``score=False``: the caller scores
        it (:meth:`Pipeline.score`)."""
        epoch = self.pipeline.epoch(partition_key(group[0].topic, group[0].partition))
        result = await self._retry("reading states", lambda: self.pipeline.process(group, score=score))
        return group, result, epoch

    async def persist(self, prepared: Prepared) -> list[BatchResult]:
        """Make prepared batches durable in the store; return their results once they are.

        All partitions share one Redis round trip (one atomic script per partition,
        pipelined), so the fixed cost per batch does not grow with the number of partitions
        in it. The round trip is awaited on the event loop (the store's asyncio write): the
        loop stays free meanwhile, so the Kafka consumer keeps fetching, and the reply wakes
        it with no hand-off to a thread and back. Each batch's alerts and dead letters go into
        the same script, as its outbox entry, and are published to Kafka after it, in the
        background: the next batch's commit does not wait for their acknowledgement, the
        runner's Kafka offset commit does (:meth:`published`). A batch whose partition was
        dropped since it was prepared (a fence met by an earlier batch, a rebalance) is
        computed again from the store first.
        """
        pending = prepared
        done: list[tuple[BatchResult, Sequence[Record], list[str]]] = []
        messages: dict[int, list[outbox.Message]] = {}  # by id(result): published as they are, not unpacked
        while pending:
            current = [entry if self.pipeline.epoch(entry[1].partition_key) == entry[2]
                       else await self._compute(entry[0]) for entry in pending]
            results = [result for _, result, _ in current]
            for result in results:
                msgs = messages[id(result)] = self._messages(result)
                result.outbox = outbox.pack(msgs) if msgs else b""
            cleared = self._take_acked()
            try:
                outcomes = await self._retry("writing the batch to Redis",
                                             lambda: self.store.commit_many_async(results, cleared))
            except BaseException:
                self._keep_acked(cleared)
                raise
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
        self._fail_point()
        await self._publish_after_commit([result for result, _, _ in done], messages)
        self._count(done)
        self._observe(done)
        self._maybe_log()
        return [result for result, _, _ in done]

    def _messages(self, result: BatchResult) -> list[outbox.Message]:
        """The batch's Kafka messages: dead letters, then alerts (keyed by event id)."""
        cap = self.settings.dead_letter_max_bytes
        topic = self.settings.dead_letter_topic
        out: list[outbox.Message] = [(topic, *dead_letter_record(d, cap)) for d in result.dead]
        topic = self.settings.alerts_topic
        out += [(topic, a.event_id.encode(), orjson.dumps(alert_message(a)), []) for a in result.alerts]
        return out

    async def _publish_after_commit(self, results: list[BatchResult],
                                    messages: dict[int, list[outbox.Message]]) -> None:
        """Start publishing the committed batches' outbox entries, and, for a partition this
        worker has not published for since it got it, what its outbox still holds (left by
        a crash between a commit and its publish)."""
        entries: list[tuple[str, int, list[outbox.Message]]] = []
        for pkey in {r.partition_key for r in results} - self._drained:
            self._drained.add(pkey)
            left = await self._retry("reading the outbox", lambda pkey=pkey: asyncio.to_thread(self.store.outbox, pkey))
            mine = {r.last_offset for r in results if r.partition_key == pkey and r.outbox}  # published below
            entries += [(pkey, end, outbox.unpack(blob)) for end, blob in sorted(left.items()) if end not in mine]
            if left.keys() - mine:
                log.info("%s: publishing %d batches a previous owner committed but did not publish",
                         pkey, len(left.keys() - mine))
        entries += [(r.partition_key, r.last_offset, messages[id(r)]) for r in results if r.outbox]
        if entries:
            self._publishing.append(asyncio.ensure_future(self._publish_entries(entries)))

    async def _publish_entries(self, entries: list[tuple[str, int, list[outbox.Message]]]) -> None:
        by_topic: dict[str, list] = {}
        for _, _, msgs in entries:
            for topic, key, value, headers in msgs:
                by_topic.setdefault(topic, []).append((key, value, headers))
        await asyncio.gather(*(self.publish(topic, items) for topic, items in by_topic.items()))
        acked: dict[str, list[int]] = {}
        for pkey, end, _ in entries:
            acked.setdefault(pkey, []).append(end)
        self._keep_acked(acked)

    def _keep_acked(self, entries: dict[str, list[int]]) -> None:
        """Outbox entries whose messages Kafka has: cleared by the next commit (or idle tick)."""
        for pkey, ends in entries.items():
            self._acked_entries.setdefault(pkey, []).extend(ends)

    def _take_acked(self) -> dict[str, list[int]]:
        """The acknowledged entries not yet cleared, handed over to whoever clears them."""
        taken, self._acked_entries = self._acked_entries, {}
        return taken

    def clear_published(self) -> None:
        """No commit is coming (idle, stopping): clear the acknowledged outbox entries in one
        round trip."""
        self._clear(self._take_acked())

    def _clear(self, cleared: dict[str, list[int]]) -> None:
        """Remove ``cleared`` from the outbox; if Redis does not answer they wait for the next
        commit (a crash before then publishes them again: at-least-once)."""
        if not cleared:
            return
        try:
            self.store.clear_outbox(cleared)
        except ServiceUnavailable as exc:
            log.debug("outbox not cleared yet: %s", exc)
            self._keep_acked(cleared)

    async def settle(self) -> None:
        """Wait for the persisted batches' publishes, then clear their outbox entries: before
        partitions are given up or the worker stops, so their next owner does not publish
        them again."""
        await self.published()
        await asyncio.to_thread(self._clear, self._take_acked())

    async def published(self) -> None:
        """Wait until every message of the batches persisted so far is acknowledged by Kafka;
        a publish that failed raises here. Several callers may wait at once: each waits for
        all the publishes started before its call. (The entries leave the outbox with the
        next commit or idle tick.)"""
        pending = list(self._publishing)
        if pending:
            await asyncio.gather(*pending)
        self._publishing = [task for task in self._publishing if not task.done()]

    def _fail_point(self) -> None:
        """Testing only (``TXWATCH_FAILPOINT=exit-after-redis-commit:N``): exit right after
        the N-th commit, before its messages are published (the crash test's window)."""
        if self._fail_after is None:
            return
        self._fail_after -= 1
        if self._fail_after <= 0:
            log.warning("failpoint: exiting after a Redis commit, before publishing it")
            logging.shutdown()
            os._exit(86)

    def _count(self, done: list[tuple[BatchResult, Sequence[Record], list[str]]]) -> None:
        m = self.metrics
        now = time.time()
        for result, group, added in done:
            m.batches.inc()
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
        """Housekeeping when no records arrive: model checks, monitoring records, the outbox
        entries already on Kafka and the progress line go on."""
        self.clear_published()
        self._maybe_reload()
        self._flush_monitor()
        self._maybe_log()

    def _maybe_reload(self) -> None:
        if self.watcher is None or time.monotonic() < self._next_poll:
            return
        self._next_poll = time.monotonic() + self.settings.model_poll_s
        new = self.watcher.poll()
        if new is not None:
            self._flush_monitor(force=True)  # the old model's counts belong to its own windows
            self.pipeline.student = new
            self._start_monitoring(new)
            self.shadow = None               # the challenger is judged again against the new champion
        self._poll_challenger()

    def _maybe_log(self) -> None:
        if time.monotonic() >= self._next_log:
            self._next_log = time.monotonic() + self.settings.log_interval_s
            log.info("%s model=%s", self.metrics.log_line(), self.student.version)
