"""The plain aiokafka runner: the same core as the faust agent, without faust's per-event cost.

``getmany`` returns batches per partition. Two stages overlap: while batch ``k`` is being
written (states, offsets, alerts and its outbox entry to Redis, then its alerts and dead
letters to Kafka in the background: :meth:`stream.core.worker.WorkerCore.persist`), batch
``k+1`` is fetched and computed
(:meth:`~stream.core.worker.WorkerCore.prepare`); writes stay in batch order. Only offsets of
batches already in Redis, whose messages Kafka has acknowledged, are committed to Kafka, explicitly (auto-commit is off), at most
every ``commit_interval_s`` and on shutdown. Redis holds the applied offsets, so a Kafka
commit only sets where a restarted consumer resumes; replays below the Redis offset are
no-ops.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener
from aiokafka.errors import CommitFailedError, KafkaConnectionError

from stream.adapters.kafka import aiokafka_producer, ensure_topics, publisher
from stream.core.worker import WorkerCore
from stream.errors import ServiceUnavailable
from stream.metrics import WorkerMetrics
from stream.runners.shutdown import StopDeadline
from stream.runners.wiring import build_core
from stream.settings import Settings

log = logging.getLogger("txwatch.worker")


class _Revoker(ConsumerRebalanceListener):
    def __init__(self, core_ref: dict) -> None:
        self.core_ref = core_ref

    async def on_partitions_revoked(self, revoked) -> None:
        # A batch still being written was computed from the caches about to be dropped:
        # let it land first, so no result computed before the rebalance is stored after it.
        writing = self.core_ref.get("writing")
        if writing is not None and not writing.done():
            try:
                await asyncio.shield(writing)
            except Exception:  # the runner loop sees (and raises) the same error
                pass
        core = self.core_ref.get("core")
        if core is not None:
            try:
                await core.settle()  # its outbox entries on Kafka are cleared, not left to the next owner
            except Exception:  # a failed publish: the runner loop raises it; the next owner republishes
                pass
            for tp in revoked:
                core.revoke(tp.topic, tp.partition)

    async def on_partitions_assigned(self, assigned) -> None:
        return None


async def run_plain(settings: Settings, *, metrics: WorkerMetrics | None = None,
                    stop: asyncio.Event | None = None, core: WorkerCore | None = None) -> WorkerCore:
    """Consume until ``stop`` is set (or forever); return the core (for tests and benches)."""
    metrics = metrics or WorkerMetrics()
    producer = aiokafka_producer(settings)
    ref: dict = {}
    consumer = AIOKafkaConsumer(
        *settings.topics, bootstrap_servers=settings.bootstrap_servers, group_id=settings.group_id,
        enable_auto_commit=False, auto_offset_reset="earliest", max_poll_records=settings.batch_max,
        fetch_max_wait_ms=settings.fetch_max_wait_ms,
        session_timeout_ms=int(settings.session_timeout_s * 1000),
        rebalance_timeout_ms=int(settings.rebalance_timeout_s * 1000),
        heartbeat_interval_ms=int(min(3.0, settings.session_timeout_s / 3) * 1000),
        **settings.kafka_client_options())
    try:
        await producer.start()
    except KafkaConnectionError as exc:
        raise ServiceUnavailable(f"cannot reach Kafka at {settings.kafka_url}: {exc}") from None
    try:
        core = core or build_core(settings, publisher(producer), metrics)
        ref["core"] = core
        consumer.subscribe(settings.topics, listener=_Revoker(ref))
        await consumer.start()
        try:
            timeout_ms = max(1, int(settings.batch_within_s * 1000))
            stored: dict = {}                    # tp -> next offset, for batches already in Redis
            last_commit = time.monotonic()
            writing: asyncio.Task | None = None  # the previous batch being written
            writing_ends: dict = {}
            while stop is None or not stop.is_set():
                batch = await consumer.getmany(timeout_ms=timeout_ms, max_records=settings.batch_max)
                # aiokafka's ConsumerRecords are Records already (same attributes). The next
                # batch is computed while the previous one is written (Kafka, then Redis).
                prepared = await core.prepare(list(batch.values())) if batch else None
                if writing is not None:
                    await writing  # durably in Redis when this returns
                    stored.update(writing_ends)
                    writing = None
                if prepared is not None:
                    writing = ref["writing"] = asyncio.create_task(core.persist(prepared))
                    writing_ends = {tp: msgs[-1].offset + 1 for tp, msgs in batch.items()}
                    await asyncio.sleep(0)  # let the write start (its Kafka sends go out now)
                    for tp, end in writing_ends.items():
                        high = consumer.highwater(tp)
                        if high is not None:
                            metrics.lag.labels(partition=f"{tp.topic}:{tp.partition}").set(max(high - end, 0))
                else:
                    core.idle()
                if stored and time.monotonic() - last_commit >= settings.commit_interval_s:
                    await core.published()  # the stored batches' messages are on Kafka too
                    await _commit(consumer, stored)
                    last_commit = time.monotonic()
            if writing is not None:
                await writing
                stored.update(writing_ends)
            await core.settle()
            if stored:
                await _commit(consumer, stored)
            await asyncio.to_thread(core.flush_monitoring)
        finally:
            await core.store.aclose()
            await consumer.stop()
    finally:
        await producer.stop()
    return core


async def _commit(consumer: AIOKafkaConsumer, pending: dict) -> None:
    """Commit the offsets of batches already stored in Redis (only still-assigned partitions)."""
    owned = consumer.assignment()
    offsets = {tp: off for tp, off in pending.items() if tp in owned}
    pending.clear()
    if offsets:
        try:
            await consumer.commit(offsets)
        except CommitFailedError as exc:  # rebalanced meanwhile: Redis offsets still fence replays
            log.warning("offset commit skipped after a rebalance: %s", exc)


def run_plain_worker(settings: Settings) -> None:
    """Create topics, serve metrics, and run the plain runner until SIGTERM or SIGINT
    (then within ``shutdown_timeout_s``: :mod:`stream.runners.shutdown`)."""
    ensure_topics(settings)
    metrics = WorkerMetrics()
    metrics.serve(settings.metrics_port)
    logging.getLogger("txwatch").setLevel(settings.log_level)
    deadline = StopDeadline(settings.shutdown_timeout_s)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            # Stop taking batches, let the one in flight land, commit; the deadline bounds it all.
            loop.add_signal_handler(sig, lambda name=sig.name: (deadline.arm(name), stop.set()))
        await run_plain(settings, metrics=metrics, stop=stop)

    asyncio.run(main())
