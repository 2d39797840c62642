"""The faust runner: a thin agent over :class:`stream.core.worker.WorkerCore`.

The agent consumes raw bytes (so a value that fails to decode cannot crash it; parsing
happens in the pipeline, failures go to the dead-letter topic), taking every event waiting
in its queue at once (:func:`stream.runners.faust_tuning.take_events`), into a
:class:`stream.runners.batcher.Batcher`, which cuts batches by load, computes the next batch while
one is written, and acks a batch's events only once it is committed to Redis. No faust
tables: per-account state lives in Redis (``docs/stream.md`` says why).
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys

import faust

from stream.adapters.kafka import ensure_topics
from stream.core.ports import Record
from stream.metrics import WorkerMetrics
from stream.runners.batcher import Batcher
from stream.runners.faust_tuning import batch_acker, deliver_inline, read_producer_mode_once, set_fetch_wait, take_events
from stream.runners.shutdown import StopDeadline
from stream.runners.wiring import build_core
from stream.settings import Settings

log = logging.getLogger("txwatch.worker")


def _credentials(settings: Settings):
    proto = settings.kafka_security_protocol
    if proto == "PLAINTEXT":
        return None
    opts = settings.kafka_client_options()
    if proto.startswith("SASL"):
        return faust.SASLCredentials(username=settings.kafka_sasl_username,
                                     password=opts["sasl_plain_password"],
                                     mechanism=settings.kafka_sasl_mechanism,
                                     ssl_context=opts.get("ssl_context"))
    return faust.SSLCredentials(opts["ssl_context"])


def create_app(settings: Settings, metrics: WorkerMetrics | None = None) -> faust.App:
    """A faust app whose one agent scores the input topics in batches."""
    metrics = metrics or WorkerMetrics()
    set_fetch_wait(settings.fetch_max_wait_ms)
    deliver_inline()
    read_producer_mode_once()
    app = faust.App(
        settings.group_id,
        broker=settings.kafka_url,
        broker_credentials=_credentials(settings),
        store="memory://",
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication_factor,
        broker_session_timeout=settings.session_timeout_s,
        broker_rebalance_timeout=settings.rebalance_timeout_s,
        broker_heartbeat_interval=min(3.0, settings.session_timeout_s / 3),
        consumer_auto_offset_reset="earliest",
        web_enabled=False,
        # No leader-election topic (txwatch has no leader-only work): its one partition is
        # always empty, so the consumer would fetch it again every fetch wait.
        topic_disable_leader=True,
        producer_acks=-1,
        producer_max_request_size=settings.producer_max_request_bytes,
        # Room for two batches: faust's consumer keeps filling the buffer while the agent
        # computes and writes the previous batch (the default, 4096, is below one batch).
        stream_buffer_maxsize=max(4096, 2 * settings.batch_max),
    )
    topic = app.topic(*settings.topics, key_type=bytes, value_type=bytes,
                      key_serializer="raw", value_serializer="raw")
    state: dict = {}  # "core", "batcher", "buffered"

    async def publish(name: str, items) -> None:
        producer = app.producer
        futures = [await producer.send(name, key, value, None, None, headers or None) for key, value, headers in items]
        await asyncio.gather(*futures)

    @app.on_partitions_revoked.connect
    async def on_revoked(sender, revoked, **kwargs) -> None:  # noqa: ARG001
        # Events taken before the rebalance are written (and acked) first: no result
        # computed from the caches about to be dropped is stored after it, and faust's
        # rebalance, which waits for unacked events, does not wait on them.
        batcher = state.get("batcher")
        if batcher is not None:
            await asyncio.shield(batcher.drain())
        core = state.get("core")
        if core is not None:  # the drained batches' outbox entries, on Kafka now: cleared
            await asyncio.shield(core.settle())
        buffered = state.get("buffered")
        if buffered is not None:
            buffered.forget(revoked)
        core = state.get("core")
        if core is not None:
            for tp in revoked:
                core.revoke(tp.topic, tp.partition)

    @app.agent(topic, name="score")
    async def score(stream) -> None:
        _own_log_handler(settings.log_level)
        core = state.get("core")
        if core is None:
            core = state["core"] = build_core(settings, publish, metrics)
        stream.enable_acks = False  # the batcher acks a batch's events once it is in Redis
        buffered = state["buffered"] = MoreBuffered(stream.channel.queue, app.consumer)

        ack_events = batch_acker(app)

        async def ack(events) -> None:
            ack_events(events)

        batcher = state["batcher"] = Batcher(core, max_items=settings.batch_max, max_wait_s=settings.batch_within_s,
                                             buffered=buffered,
                                             to_record=_record, ack=ack, on_error=_stop_worker)
        flusher = asyncio.ensure_future(batcher.run())
        try:
            # Every event already in the agent's queue at once, not one loop turn each
            # through faust's stream iterator (faust_tuning.take_events).
            await take_events(app, stream, batcher.add, ack_events)
        except Exception as exc:  # noqa: BLE001 - a crashed agent would leave the worker idle
            _stop_worker(exc)
        finally:
            flusher.cancel()
            core.clear_published()  # outbox entries already on Kafka, not left to be published again
            core.flush_monitoring()  # open drift/shadow windows and the waiting sample, not lost with the process
            await core.store.aclose()  # its asyncio Redis connections, before their loop ends

    @app.timer(interval=min(settings.model_poll_s, settings.log_interval_s))
    async def housekeeping() -> None:
        core = state.get("core")
        if core is not None:
            core.idle()  # an idle worker still picks up (or refuses) a new model and logs

    @app.timer(interval=2.0)
    async def report_lag() -> None:
        consumer = app.consumer
        for tp in consumer.assignment():
            try:
                high = consumer.highwater(tp)
                pos = await consumer.position(tp)
            except Exception:  # noqa: BLE001 - revoked since assignment() was read
                continue
            if high is not None and pos is not None:
                metrics.lag.labels(partition=f"{tp.topic}:{tp.partition}").set(max(high - pos, 0))

    app.txwatch_metrics = metrics  # type: ignore[attr-defined]
    app.txwatch_state = state  # type: ignore[attr-defined]
    app.txwatch_publish = publish  # type: ignore[attr-defined]
    return app


class MoreBuffered:
    """Whether more records follow an event right now: events already in the agent's
    queue, or records of its partition that the consumer knows of (the high watermark of
    its last fetch) but has not delivered yet. A hint for cutting batches, so when unsure
    (the partition was revoked meanwhile: aiokafka asserts) it says no, and the batch is cut.

    Each partition's last high watermark is kept: it only grows, so while a known one lies
    beyond an event, more records follow it without asking the consumer again (the call
    crosses three faust and aiokafka layers, and under a backlog it was made for nearly
    every event: the agent empties its queue faster than faust fills it)."""

    def __init__(self, queue, consumer) -> None:
        self.queue = queue
        self.consumer = consumer
        self.known: dict = {}  # tp -> the highest high watermark seen

    def __call__(self, event) -> bool:
        if not self.queue.empty():
            return True
        message = event.message
        tp, offset = message.tp, message.offset
        if self.known.get(tp, -1) > offset + 1:
            return True
        try:
            high = self.consumer.highwater(tp)
        except Exception:  # noqa: BLE001
            return False
        if high is None:
            return False
        self.known[tp] = high
        return high > offset + 1

    def forget(self, tps) -> None:
        """Partitions revoked: their records will not come here any more."""
        for tp in tps:
            self.known.pop(tp, None)


def _record(event) -> Record:
    m = event.message
    return Record(m.topic, m.partition, m.offset, m.value, m.key, int(m.timestamp * 1000) if m.timestamp else None)


def _stop_worker(exc: BaseException) -> None:
    """An error that is a bug, not bad data (bad data is dead-lettered inside the core). A
    crashed faust agent leaves the process up but idle: exit instead, so the supervisor
    restarts the worker; Redis offsets make the restart replay-safe."""
    log.critical("worker stopping after an unexpected error", exc_info=exc)
    logging.shutdown()
    os._exit(70)


def _own_log_handler(level: str = "INFO") -> None:
    """faust configures the root handler at its (quiet) level; txwatch's INFO lines, such
    as the periodic progress line, get a handler of their own."""
    logger = logging.getLogger("txwatch")
    if not any(getattr(h, "_txwatch", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        handler._txwatch = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
        logger.propagate = False
    logger.setLevel(level)


GIL_SWITCH_INTERVAL_S = 0.0005


class _BoundedWorker(faust.Worker):
    """faust's worker, whose SIGTERM and SIGINT also arm the stop deadline (faust's own
    shutdown waits on the broker: with the broker gone it would not end)."""

    txwatch_deadline: StopDeadline

    def _on_sigterm(self) -> None:
        self.txwatch_deadline.arm("SIGTERM")
        super()._on_sigterm()

    def _on_sigint(self) -> None:
        self.txwatch_deadline.arm("SIGINT")
        super()._on_sigint()


def run_faust_worker(settings: Settings) -> None:
    """Create topics, serve metrics, and run the faust worker until stopped."""
    # faust's consumer runs in its own thread next to the CPU-bound agent; with CPython's
    # default 5 ms switch interval the consumer waits that long for the GIL each time it
    # wakes (measured with `bench stream`, docs/benchmarks.md).
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    ensure_topics(settings)
    metrics = WorkerMetrics()
    app = create_app(settings, metrics)
    # Connect to Redis and verify the model before faust starts: a failure here is one
    # clear error, not an agent that crashes and leaves the process idling.
    app.txwatch_state["core"] = build_core(settings, app.txwatch_publish, metrics)
    metrics.serve(settings.metrics_port)
    # redirect_stdouts off: txwatch's own handler writes to stderr, which faust would
    # otherwise wrap in a second log prefix.
    worker = _BoundedWorker(app, loglevel="DEBUG" if settings.log_level == "DEBUG" else "WARNING", quiet=True,
                            redirect_stdouts=False)
    worker.txwatch_deadline = StopDeadline(settings.shutdown_timeout_s)
    logging.getLogger("txwatch").setLevel(settings.log_level)
    worker.execute_from_commandline()
