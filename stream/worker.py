"""What every runner shares: per-batch handling, retries, model reload, connections.

A runner (faust agent or plain aiokafka loop) only turns its consumer's records into
:class:`stream.pipeline.Record` batches and calls :meth:`WorkerCore.handle`; when that
returns, the batch is durably in Redis and the runner may commit Kafka offsets.

Order of writes per partition batch: dead letters and alerts are produced to Kafka and
acknowledged first (at-least-once; consumers deduplicate by key), then states, offset
and alerts go to Redis in one atomic script, then Kafka offsets are committed. A crash
anywhere replays the batch; the stored offset makes the replay a no-op in Redis.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import inspect
import logging
import time
from pathlib import Path
from typing import Awaitable, Callable, Sequence

import orjson
import redis

from stream.errors import ArtifactError, ServiceUnavailable, TxwatchError
from stream.featurekernel import ensure_compiled
from stream.metrics import WorkerMetrics
from stream.model import Student, load_student
from stream.pipeline import BatchResult, DeadLetter, Pipeline, Record, partition_key
from stream.settings import Settings
from stream.store import FenceError, RedisStore, StoreConfig

log = logging.getLogger("txwatch.worker")

# publish(topic, [(key, value, headers)]) -> awaits every acknowledgement
Publish = Callable[[str, list[tuple[bytes | None, bytes, list[tuple[str, bytes]]]]], Awaitable[None]]


def redis_client(settings: Settings) -> redis.Redis:
    """A Redis client for the settings' URL; ``ServiceUnavailable`` naming it if unreachable."""
    if not settings.redis_url:
        raise ServiceUnavailable("TXWATCH_REDIS_URL is not set")
    kwargs = {"socket_connect_timeout": 3.0, "socket_timeout": 10.0, "health_check_interval": 30}
    if settings.redis_password is not None:
        kwargs["password"] = settings.redis_password.get_secret_value()
    if settings.redis_url.startswith("rediss://"):
        kwargs["ssl_cert_reqs"] = "required"
        if settings.redis_tls_ca_file:
            kwargs["ssl_ca_certs"] = settings.redis_tls_ca_file
    client = redis.Redis.from_url(settings.redis_url, **kwargs)
    try:
        client.ping()
    except redis.AuthenticationError:
        raise ServiceUnavailable(f"Redis at {settings.redacted_redis_url()} refused the credentials") from None
    except redis.RedisError as exc:
        raise ServiceUnavailable(f"cannot reach Redis at {settings.redacted_redis_url()}: {exc}") from None
    return client


def redis_store(settings: Settings, client: redis.Redis | None = None) -> RedisStore:
    """The store for these settings (key prefix, retention), on ``client`` or a new connection."""
    config = StoreConfig(settings.redis_prefix, settings.alerts_maxlen, int(settings.alert_ttl_days * 86_400))
    return RedisStore(client if client is not None else redis_client(settings), config)


def ensure_topics(settings: Settings) -> None:
    """Create the input, dead-letter and alert topics (same partition count) if missing."""
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic
    from kafka.errors import KafkaError, TopicAlreadyExistsError

    try:
        admin = KafkaAdminClient(bootstrap_servers=settings.bootstrap_servers, client_id="txwatch-admin",
                                 request_timeout_ms=15_000, **settings.kafka_client_options())
    except KafkaError as exc:
        raise ServiceUnavailable(f"cannot reach Kafka at {settings.kafka_url}: {exc}") from None
    try:
        existing = set(admin.list_topics())
        wanted = [*settings.topics, settings.dead_letter_topic, settings.alerts_topic]
        new = [NewTopic(t, settings.partitions, settings.replication_factor) for t in wanted if t not in existing]
        if new:
            try:
                admin.create_topics(new)
            except TopicAlreadyExistsError:
                pass
            log.info("created topics %s with %d partitions", [t.name for t in new], settings.partitions)
    finally:
        admin.close()


class ModelWatcher:
    """Picks up a new student without a restart: a changed directory, or a Redis pointer.

    The pointer key ``<prefix>:model:dir`` (if set) names the directory to serve. A new
    artifact is verified before use; a broken one is refused, logged and counted, and the
    current model keeps serving.
    """

    def __init__(self, settings: Settings, client: redis.Redis | None, metrics: WorkerMetrics) -> None:
        self.settings = settings
        self.client = client
        self.metrics = metrics
        self.pointer_key = f"{settings.redis_prefix}:model:dir"
        self.dir = settings.model_dir
        self._stamp: tuple | None = None

    def _target(self) -> str:
        if self.client is not None:
            try:
                raw = self.client.get(self.pointer_key)
            except redis.RedisError:
                return self.dir  # Redis unreachable: the pointer is unknown, keep serving
            if raw:
                return raw.decode()
        return self.settings.model_dir

    def _fingerprint(self, directory: str) -> tuple | None:
        try:
            manifest = Path(directory) / "manifest.json"
            st = manifest.stat()
            return (directory, st.st_mtime_ns, st.st_size, st.st_ino)
        except OSError:
            return None

    def load_initial(self) -> Student:
        """The model to start with; ``ArtifactError`` if it is not valid."""
        self.dir = self._target()
        student = load_student(self.dir)
        self._stamp = self._fingerprint(self.dir)
        self.metrics.set_model(student.version)
        self.metrics.reloads.labels(result="ok").inc()
        return student

    def poll(self) -> Student | None:
        """A newly verified student if the model changed since the last poll, else None."""
        target = self._target()
        stamp = self._fingerprint(target)
        if stamp == self._stamp:
            return None
        self._stamp = stamp  # do not retry a broken artifact until it changes again
        try:
            student = load_student(target)
        except ArtifactError as exc:
            self.metrics.reloads.labels(result="refused").inc()
            log.error("model reload refused, keeping the current model: %s", exc)
            return None
        self.dir = target
        self.metrics.reloads.labels(result="ok").inc()
        self.metrics.set_model(student.version)
        log.info("model reloaded: %s from %s", student.version, target)
        return student


def dead_letter_record(d: DeadLetter, max_bytes: int) -> tuple[bytes | None, bytes, list[tuple[str, bytes]]]:
    """``(key, value, headers)`` of a dead letter: the original bytes and why they were refused.

    A value over ``max_bytes`` (it could not be produced: the broker caps record sizes) is
    cut to ``max_bytes``; ``txwatch-truncated`` then holds its full size and
    ``txwatch-sha256`` its digest, and ``txwatch-source`` names the input record, which
    still holds all of it.

    >>> from stream.pipeline import DeadLetter
    >>> k, v, h = dead_letter_record(DeadLetter("ev", 1, 7, "not valid JSON", None, b"x" * 10, b"k"), 4)
    >>> v, dict(h)["txwatch-truncated"], dict(h)["txwatch-source"]
    (b'xxxx', b'10', b'ev:1:7')
    """
    headers = [("txwatch-reason", d.reason.encode()), ("txwatch-field", (d.field or "").encode()),
               ("txwatch-source", f"{d.topic}:{d.partition}:{d.offset}".encode())]
    value = d.value
    if len(value) > max_bytes:
        headers += [("txwatch-truncated", str(len(value)).encode()),
                    ("txwatch-sha256", hashlib.sha256(value).hexdigest().encode())]
        value = value[:max_bytes]
    return d.key, value, headers


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

    def __init__(self, settings: Settings, store: RedisStore, student: Student, publish: Publish,
                 metrics: WorkerMetrics | None = None, watcher: ModelWatcher | None = None) -> None:
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
        off on Redis errors (never on bugs)."""
        delay = 0.1
        while True:
            try:
                out = fn()
                return await out if inspect.isawaitable(out) else out
            except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError,
                    ServiceUnavailable) as exc:
                self.metrics.retries.inc()
                log.warning("%s failed (%s); retrying in %.1fs", what, exc.__class__.__name__, delay)
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
        alerts = [(a.event_id.encode(), orjson.dumps(a.to_dict()), []) for r in results for a in r.alerts]
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


GC_THRESHOLDS = (100_000, 50, 1000)


def tune_gc() -> None:
    """Garbage collection for a long-running batch worker.

    Every batch allocates tens of thousands of short-lived container objects (Kafka
    records, decoded events, feature columns); with CPython's default thresholds
    (700, 10, 10) that triggers a collection every few hundred events, and the older
    generations are rescanned often, each time walking every object of the worker
    (libraries, model, caches). Objects alive at start-up are moved out of the collector's
    view (``gc.freeze``) and collections run every 100,000 allocations instead: the core
    ran 66-75k events/s before and 85-105k after on the same run of ``bench stream``
    (README). Reference cycles are still collected, just less often.
    """
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def build_core(settings: Settings, publish: Publish, metrics: WorkerMetrics | None = None) -> WorkerCore:
    """Connect to Redis, load and verify the model, and assemble the core."""
    metrics = metrics or WorkerMetrics()
    client = redis_client(settings)
    watcher = ModelWatcher(settings, client, metrics)
    try:
        student = watcher.load_initial()
    except ArtifactError as exc:
        raise TxwatchError(f"cannot serve: {exc}") from None
    store = redis_store(settings, client)
    ensure_compiled()  # load (or compile, ~5 s on a fresh install) the feature kernels before consuming
    core = WorkerCore(settings, store, student, publish, metrics, watcher)
    tune_gc()
    return core
