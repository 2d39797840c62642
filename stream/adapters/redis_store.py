"""State and alert stores: where a batch's result lands in one atomic step.

Redis key layout (``P`` = the configurable prefix, default ``txwatch``; ``{t:p}`` is the
input topic and partition, a Redis Cluster hash tag, so one partition's keys share a slot):

==================================  ======  ==================================================
key                                 type    contents
==================================  ======  ==================================================
``P:{t:p}:offset``                  string  last applied Kafka offset of the partition
``P:{t:p}:state``                   hash    account_id -> serialised feature state (~0.5 KB)
``P:{t:p}:alert:<event_id>``        hash    one alert: event_id, account_id, ts, score,
                                            threshold, model_version, reasons (JSON), event
                                            (JSON), status (``open``), created_ms; TTL =
                                            retention
``P:{t:p}:alerts``                  stream  the partition's alerts, newest last, ``MAXLEN ~``
``P:{t:p}:alerts:by_time``          zset    event_id scored by event time; entries older than
                                            the newest by more than the retention are trimmed
``P:{t:p}:outbox``                  hash    batch end offset -> the batch's Kafka messages, until
                                            Kafka acknowledged them (stream.core.outbox)
``P:partitions``                    set     every ``t:p`` that has written (to find the keys)
``P:drift:<version>:<start>``       hash    one drift window's counters, summed over workers
                                            (stream.core.drift); TTL ``DRIFT_TTL_S``
``P:drift:windows:<version>``       zset    the window start times of a model version
``P:threshold:changes``             list    alert-rate control's moves, newest first (JSON: at_ms,
                                            model_version, old, new, why); the last 10,000
``P:fidelity:samples``              stream  scored rows sampled for live teacher fidelity
                                            (stream.events.samples), ``MAXLEN ~`` SAMPLES_MAXLEN
``P:shadow:<challenger>:<start>``   hash    one shadow window's counters, summed over workers:
                                            rows, champion_alerts, challenger_alerts, both,
                                            dropped, champion (its version); TTL ``DRIFT_TTL_S``
``P:shadow:windows:<challenger>``   zset    the shadow window start times of a challenger
``P:shadow:<challenger>:pairs``     list    per window and worker, its reservoir of (champion,
                                            challenger) score pairs, float64 pairs; newest first,
                                            the last SHADOW_PAIR_BLOBS
``P:shadow:<challenger>:alerts``    stream  would-be alerts of either model: event_id, champion
                                            and challenger scores, which alerts; ``MAXLEN ~``
                                            alerts_maxlen
``P:alerts:live``                   pubsub  channel: each new alert as JSON
==================================  ======  ==================================================

One Lua script applies a whole batch: it checks that the stored offset is the one the
worker started from (a fence: a worker that lost the partition cannot overwrite newer
state), stores states, offset, new alerts and the batch's outbox entry, skips alerts whose hash already exists
(idempotent by event_id), and returns the ids it added. Scripts run atomically. A batch
whose end offset is already stored was applied before (a retry after a lost reply) and
changes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Sequence

import orjson
import redis
import redis.asyncio
import redis.asyncio.retry
from redis.exceptions import NoScriptError

from stream.core.drift import DriftWindow, window_fields
from stream.core.pipeline import BatchResult
from stream.core.ratecontrol import ThresholdChange
from stream.core.shadow import ShadowWindow
from stream.events.samples import Sample, encode_sample
from stream.core.ports import FenceError
from stream.errors import ServiceUnavailable
from stream.events.alerts import HASH_FIELDS, alert_hash, decode_alert_hash
from stream.settings import Settings

DRIFT_TTL_S = 8 * 86_400  # drift and shadow windows are kept a week and a day
SAMPLES_MAXLEN = 2_000    # fidelity sample entries kept for txwatch fidelity (at most one per worker and second)
SHADOW_PAIR_BLOBS = 200   # shadow score-pair reservoirs kept per challenger

# What "Redis is not reachable right now" looks like from redis-py; reported to the core
# as ServiceUnavailable, which it retries.
_UNAVAILABLE = (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError)


@contextlib.contextmanager
def _reachable(what: str) -> Iterator[None]:
    try:
        yield
    except _UNAVAILABLE as exc:
        raise ServiceUnavailable(f"Redis {what}: {exc.__class__.__name__}: {exc}") from exc


@dataclass(frozen=True)
class StoreConfig:
    """Key prefix and alert retention."""

    prefix: str = "txwatch"
    alerts_maxlen: int = 100_000        # per-partition stream length (approximate trim)
    alert_ttl_s: int = 90 * 86_400      # alert hashes and time index: 90 days


# The alert hash's field names come from the one alert codec (stream.events.alerts).
_COMMIT_LUA = "local FIELDS = {" + ", ".join(f"'{name}'" for name in HASH_FIELDS) + "}\n" + """
local cur = tonumber(redis.call('GET', KEYS[1]) or '-1')
if cur == tonumber(ARGV[2]) then return {0} end
if cur ~= tonumber(ARGV[1]) then return {-1, cur} end
redis.call('SET', KEYS[1], ARGV[2])
local i = 7
local n = tonumber(ARGV[6])
local step = 200
local j = 0
while j < n do
  local k = math.min(step, n - j)
  local args = {}
  for q = 1, 2 * k do args[q] = ARGV[i + q - 1] end
  redis.call('HSET', KEYS[2], unpack(args))
  i = i + 2 * k
  j = j + k
end
local added = {0}
local m = tonumber(ARGV[i]); i = i + 1
local ttl = tonumber(ARGV[4])
for a = 1, m do
  local eid, ts, fields = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  i = i + 3
  local akey = ARGV[3] .. eid
  if redis.call('EXISTS', akey) == 0 then
    local f = cjson.decode(fields)
    local hset = {akey}
    for q, name in ipairs(FIELDS) do
      hset[2 * q] = name
      hset[2 * q + 1] = f[name]
    end
    redis.call('HSET', unpack(hset))
    redis.call('PEXPIRE', akey, ttl * 1000)
    redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[5], '*', 'event_id', eid, 'score', f.score,
      'account_id', f.account_id, 'ts', ts)
    redis.call('ZADD', KEYS[4], ts, eid)
    redis.call('PUBLISH', KEYS[5], fields)
    added[1] = added[1] + 1
    added[#added + 1] = eid
  end
end
if m > 0 then
  local newest = redis.call('ZREVRANGE', KEYS[4], 0, 0, 'WITHSCORES')
  if newest[2] then
    redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', '(' .. string.format('%.0f', tonumber(newest[2]) - ttl * 1000))
  end
end
redis.call('SADD', KEYS[6], ARGV[i])
if ARGV[i + 1] ~= '' then redis.call('HSET', KEYS[7], ARGV[2], ARGV[i + 1]) end
return added
"""


class RedisStore:
    """Account states, offsets and alerts in Redis (standalone or Cluster), one script per batch."""

    def __init__(self, client, config: StoreConfig = StoreConfig()) -> None:
        self.client = client
        self.config = config
        self._commit = client.register_script(_COMMIT_LUA)
        self._async: tuple[asyncio.AbstractEventLoop, redis.asyncio.Redis] | None = None

    # -- keys ---------------------------------------------------------------------
    def key(self, pkey: str, suffix: str) -> str:
        """``prefix:{topic:partition}:suffix``."""
        return f"{self.config.prefix}:{{{pkey}}}:{suffix}"

    @property
    def live_channel(self) -> str:
        """Pub/sub channel of new alerts."""
        return f"{self.config.prefix}:alerts:live"

    @property
    def partitions_key(self) -> str:
        """Set of partitions that have written."""
        return f"{self.config.prefix}:partitions"

    # -- reads ----------------------------------------------------------------------
    def load(self, pkey: str, accounts: Sequence[str]) -> dict[str, bytes | None]:
        """States of ``accounts`` (one HMGET)."""
        with _reachable("state read"):
            values = self.client.hmget(self.key(pkey, "state"), list(accounts))
        return dict(zip(accounts, values))

    def offset(self, pkey: str) -> int:
        """Last applied offset (-1 if none)."""
        with _reachable("offset read"):
            raw = self.client.get(self.key(pkey, "offset"))
        return -1 if raw is None else int(raw)

    def applied_count(self, pkeys) -> int:
        """Records applied over these partitions (offsets are 0-based; -1 means none)."""
        return sum(self.offset(pkey) + 1 for pkey in pkeys)

    def partitions(self) -> list[str]:
        """Every partition that has written, sorted."""
        return sorted(p.decode() for p in self.client.smembers(self.partitions_key))

    def alert(self, pkey: str, event_id: str) -> dict[str, Any] | None:
        """One alert, decoded (:func:`stream.events.alerts.decode_alert_hash`), or None."""
        raw = self.client.hgetall(self.key(pkey, f"alert:{event_id}"))
        return decode_alert_hash(raw) if raw else None

    def outbox(self, pkey: str) -> dict[int, bytes]:
        """The partition's outbox entries not yet cleared, by batch end offset (one HGETALL)."""
        with _reachable("outbox read"):
            raw = self.client.hgetall(self.key(pkey, "outbox"))
        return {int(k): v for k, v in raw.items()}

    def clear_outbox(self, cleared: Mapping[str, Sequence[int]]) -> None:
        """Remove published outbox entries of several partitions (one round trip)."""
        if any(cleared.values()):
            with _reachable("outbox clear"):
                pipe = self.client.pipeline(transaction=False)
                self._queue_clears(pipe, cleared)
                pipe.execute()

    def _queue_clears(self, pipe, cleared: Mapping[str, Sequence[int]] | None) -> int:
        """Queue one HDEL per partition with published entries; how many were queued."""
        n = 0
        for pkey, ends in (cleared or {}).items():
            if ends:
                pipe.hdel(self.key(pkey, "outbox"), *[str(i) for i in ends])
                n += 1
        return n

    # -- drift windows -------------------------------------------------------------------
    def drift_key(self, version: str, start_s: int) -> str:
        """The hash of one drift window of a model version."""
        return f"{self.config.prefix}:drift:{version}:{start_s}"

    def drift_windows_key(self, version: str) -> str:
        """The sorted set of a model version's drift window starts."""
        return f"{self.config.prefix}:drift:windows:{version}"

    def record_drift(self, window: DriftWindow) -> None:
        """Add a worker's window to the stored one (HINCRBY each counter; one round trip)."""
        key = self.drift_key(window.model_version, window.start_s)
        with _reachable("drift write"):
            pipe = self.client.pipeline(transaction=False)
            for name, n in window_fields(window).items():
                pipe.hincrby(key, name, n)
            pipe.expire(key, DRIFT_TTL_S)
            wkey = self.drift_windows_key(window.model_version)
            pipe.zadd(wkey, {str(window.start_s): window.start_s})
            pipe.zremrangebyscore(wkey, "-inf", window.start_s - DRIFT_TTL_S)
            pipe.expire(wkey, DRIFT_TTL_S)
            pipe.execute()

    @property
    def threshold_changes_key(self) -> str:
        """The list of alert-rate control's threshold moves."""
        return f"{self.config.prefix}:threshold:changes"

    def record_threshold(self, change: ThresholdChange) -> None:
        """Append one threshold move (newest first; the last 10,000 kept)."""
        with _reachable("threshold change write"):
            pipe = self.client.pipeline(transaction=False)
            pipe.lpush(self.threshold_changes_key, orjson.dumps(change.as_dict()))
            pipe.ltrim(self.threshold_changes_key, 0, 9_999)
            pipe.execute()

    def threshold_changes(self, n: int = 100) -> list[dict]:
        """The newest ``n`` threshold moves."""
        with _reachable("threshold change read"):
            return [orjson.loads(x) for x in self.client.lrange(self.threshold_changes_key, 0, n - 1)]

    def drift_since(self, version: str, since_s: int) -> list[tuple[int, dict]]:
        """``(start, counters)`` of a model version's windows that started at or after ``since_s``."""
        return self._windows_since("drift", self.drift_windows_key(version),
                                   lambda start: self.drift_key(version, start), since_s)

    def _windows_since(self, what: str, windows_key: str, key_of, since_s: int) -> list[tuple[int, dict]]:
        """``(start, hash)`` of the windows listed in ``windows_key`` from ``since_s`` on (one round trip each way)."""
        with _reachable(f"{what} read"):
            starts = [int(float(x)) for x in self.client.zrangebyscore(windows_key, since_s, "+inf")]
            pipe = self.client.pipeline(transaction=False)
            for start in starts:
                pipe.hgetall(key_of(start))
            return [(start, h) for start, h in zip(starts, pipe.execute()) if h]

    # -- live fidelity sample -----------------------------------------------------------
    @property
    def samples_key(self) -> str:
        """The stream of fidelity samples (stream.events.samples)."""
        return f"{self.config.prefix}:fidelity:samples"

    def record_sample(self, sample: Sample) -> None:
        """Append one fidelity sample to the stream (capped, oldest trimmed)."""
        with _reachable("fidelity sample write"):
            self.client.xadd(self.samples_key, encode_sample(sample), maxlen=SAMPLES_MAXLEN, approximate=True)

    # -- shadow challenger ----------------------------------------------------------------
    def shadow_key(self, version: str, start_s: int) -> str:
        """The hash of one shadow window of a challenger version."""
        return f"{self.config.prefix}:shadow:{version}:{start_s}"

    def shadow_windows_key(self, version: str) -> str:
        """The sorted set of a challenger's shadow window starts."""
        return f"{self.config.prefix}:shadow:windows:{version}"

    def shadow_pairs_key(self, version: str) -> str:
        """The list of a challenger's score-pair reservoirs."""
        return f"{self.config.prefix}:shadow:{version}:pairs"

    def shadow_alerts_key(self, version: str) -> str:
        """The stream of a challenger's would-be alerts (and the champion's, with both scores)."""
        return f"{self.config.prefix}:shadow:{version}:alerts"

    def record_shadow(self, w: ShadowWindow) -> None:
        """Add a worker's shadow window to the stored one (one round trip)."""
        v = w.challenger_version
        key = self.shadow_key(v, w.start_s)
        with _reachable("shadow write"):
            pipe = self.client.pipeline(transaction=False)
            for name in ("rows", "champion_alerts", "challenger_alerts", "both", "dropped"):
                pipe.hincrby(key, name, int(getattr(w, name)))
            pipe.hset(key, "champion", w.champion_version)
            pipe.expire(key, DRIFT_TTL_S)
            wkey = self.shadow_windows_key(v)
            pipe.zadd(wkey, {str(w.start_s): w.start_s})
            pipe.zremrangebyscore(wkey, "-inf", w.start_s - DRIFT_TTL_S)
            pipe.expire(wkey, DRIFT_TTL_S)
            if len(w.pairs):
                pkey = self.shadow_pairs_key(v)
                pipe.lpush(pkey, w.pairs.astype("<f8").tobytes())
                pipe.ltrim(pkey, 0, SHADOW_PAIR_BLOBS - 1)
                pipe.expire(pkey, DRIFT_TTL_S)
            akey = self.shadow_alerts_key(v)
            for event_id, champion, challenger, which in w.would_be:
                pipe.xadd(akey, {"e": event_id, "c": repr(champion), "s": repr(challenger), "w": which},
                          maxlen=self.config.alerts_maxlen, approximate=True)
            if w.would_be:
                pipe.expire(akey, DRIFT_TTL_S)
            pipe.execute()

    def shadow_since(self, version: str, since_s: int) -> list[tuple[int, dict]]:
        """``(start, counters)`` of a challenger's shadow windows that started at or after ``since_s`` (str keys and values)."""
        return [(start, {k.decode(): v.decode() for k, v in h.items()})
                for start, h in self._windows_since("shadow", self.shadow_windows_key(version),
                                                    lambda start: self.shadow_key(version, start), since_s)]

    def shadow_pairs(self, version: str) -> "np.ndarray":
        """The stored (champion, challenger) score pairs of a challenger, newest reservoirs first."""
        import numpy as np

        with _reachable("shadow read"):
            blobs = self.client.lrange(self.shadow_pairs_key(version), 0, -1)
        arrays = [np.frombuffer(b, dtype="<f8") for b in blobs if len(b) % 16 == 0]
        return np.concatenate(arrays).reshape(-1, 2) if arrays else np.empty((0, 2))

    def shadow_alerts(self, version: str) -> list[dict[str, str]]:
        """A challenger's stored would-be alerts, oldest first (event_id, champion, challenger, which)."""
        with _reachable("shadow read"):
            entries = self.client.xrange(self.shadow_alerts_key(version))
        return [{"event_id": f[b"e"].decode(), "champion": float(f[b"c"]), "challenger": float(f[b"s"]),
                 "which": f[b"w"].decode()} for _, f in entries]

    def samples_after(self, cursor: str, count: int = 100, block_ms: int | None = None) -> list[tuple[str, dict]]:
        """Fidelity sample entries after stream id ``cursor`` (``"0"``: from the oldest kept),
        ``(id, fields)``, at most ``count``; waits up to ``block_ms`` for one if given."""
        with _reachable("fidelity sample read"):
            reply = self.client.xread({self.samples_key: cursor}, count=count, block=block_ms)
        return [(i.decode(), f) for _, entries in reply for i, f in entries] if reply else []

    def alert_ids(self, pkey: str) -> list[str]:
        """Event ids of a partition's alerts in event-time order."""
        return [e.decode() for e in self.client.zrange(self.key(pkey, "alerts:by_time"), 0, -1)]

    # -- the atomic write ---------------------------------------------------------------
    def _script_call(self, result: BatchResult) -> tuple[list[str], list[Any]]:
        pkey = result.partition_key
        now = int(time.time() * 1000)
        args: list[Any] = [result.first_offset, result.last_offset, self.key(pkey, "alert:"),
                           self.config.alert_ttl_s, self.config.alerts_maxlen, len(result.states)]
        for acct, blob in result.states.items():
            args.append(acct)
            args.append(blob)
        args.append(len(result.alerts))
        for a in result.alerts:
            args += [a.event_id, a.ts, orjson.dumps(alert_hash(a, now))]
        args.append(pkey)
        args.append(result.outbox)
        keys = [self.key(pkey, "offset"), self.key(pkey, "state"), self.key(pkey, "alerts"),
                self.key(pkey, "alerts:by_time"), self.live_channel, self.partitions_key, self.key(pkey, "outbox")]
        return keys, args

    @staticmethod
    def _added(result: BatchResult, reply) -> list[str] | FenceError:
        if reply and reply[0] == -1:
            return FenceError(f"{result.partition_key}: stored offset is {reply[1]}, this worker expected "
                              f"{result.first_offset}; the partition moved to another worker")
        return [e.decode() if isinstance(e, bytes) else e for e in reply[1:]]

    def commit(self, result: BatchResult) -> list[str]:
        """Apply a batch in one script; return the newly added alert ids.

        Raises ``FenceError`` if the stored offset is not the one the batch started from.
        """
        outcome = self.commit_many([result])[0]
        if isinstance(outcome, FenceError):
            raise outcome
        return outcome

    def commit_many(self, results: list[BatchResult],
                    cleared: Mapping[str, Sequence[int]] | None = None) -> list[list[str] | FenceError]:
        """Apply several partitions' batches in one round trip (one atomic script each),
        removing the outbox entries in ``cleared`` (already on Kafka) in the same trip. With
        no batch to apply the trip holds the clears alone (none at all without them: redis-py
        sends an empty pipeline nowhere).

        Returns, per result, the newly added alert ids or the ``FenceError`` it met.
        """
        live = [r for r in results if not r.empty]
        with _reachable("batch write"):
            try:
                replies = self._run(live, cleared)
            except NoScriptError:
                # Redis lost its script cache (a restart, SCRIPT FLUSH): load it, send again.
                # No script ran (every call names the same one), a batch that did run would
                # be a no-op the second time (its end offset is stored), and HDEL repeats.
                self.client.script_load(_COMMIT_LUA)
                replies = self._run(live, cleared)
        it = iter(replies)
        return [[] if r.empty else self._added(r, next(it)) for r in results]

    async def commit_many_async(self, results: list[BatchResult],
                                cleared: Mapping[str, Sequence[int]] | None = None) -> list[list[str] | FenceError]:
        """:meth:`commit_many` on the running event loop (redis-py's asyncio client, same
        server and options as ``client``): the loop goes on while Redis works, and the reply
        wakes it directly, with no hand-off to a thread and back (the worker's write path)."""
        live = [r for r in results if not r.empty]
        client = self._async_client()
        with _reachable("batch write"):
            try:
                replies = await self._run_async(client, live, cleared)
            except NoScriptError:  # as in commit_many
                await client.script_load(_COMMIT_LUA)
                replies = await self._run_async(client, live, cleared)
        it = iter(replies)
        return [[] if r.empty else self._added(r, next(it)) for r in results]

    async def aclose(self) -> None:
        """Close the asyncio client's connections if the running loop opened them (a stopping
        worker's last step, so no socket outlives its loop); within two seconds, and quiet
        if Redis is gone. A later ``commit_many_async`` opens a new client."""
        if self._async is None:
            return
        (loop, client), self._async = self._async, None
        if loop is asyncio.get_running_loop():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.connection_pool.disconnect(), 2.0)

    def _async_client(self) -> redis.asyncio.Redis:
        """The asyncio twin of ``client`` for the running loop (an asyncio client's
        connections belong to the loop that opened them)."""
        loop = asyncio.get_running_loop()
        if self._async is None or self._async[0] is not loop:
            self._async = (loop, async_twin(self.client))
        return self._async[1]

    def _run(self, live: list[BatchResult], cleared: Mapping[str, Sequence[int]] | None = None) -> list:
        pipe = self.client.pipeline(transaction=False)
        n_clears = self._queue_batches(pipe, live, cleared)
        return pipe.execute()[n_clears:]

    async def _run_async(self, client: redis.asyncio.Redis, live: list[BatchResult],
                         cleared: Mapping[str, Sequence[int]] | None) -> list:
        pipe = client.pipeline(transaction=False)
        n_clears = self._queue_batches(pipe, live, cleared)
        return (await pipe.execute())[n_clears:]

    def _queue_batches(self, pipe, live: list[BatchResult], cleared: Mapping[str, Sequence[int]] | None) -> int:
        """Queue one round trip on ``pipe`` (a redis-py pipeline, blocking or asyncio): the
        HDELs of published outbox entries, then an EVALSHA of the commit script per batch;
        returns how many replies come before the scripts'. (redis-py's Script objects would
        first ask SCRIPT EXISTS on every pipeline: a second round trip per batch.)"""
        n_clears = self._queue_clears(pipe, cleared)
        for r in live:
            keys, args = self._script_call(r)
            pipe.evalsha(self._commit.sha, len(keys), *keys, *args)
        return n_clears


# Connection options that mean the same to redis-py's blocking and asyncio connections
# (the blocking pool's kwargs also hold objects of its own, not to be shared).
_PORTABLE = ("host", "port", "path", "db", "username", "password", "credential_provider", "client_name",
             "socket_timeout", "socket_connect_timeout", "socket_keepalive", "health_check_interval",
             "ssl_keyfile", "ssl_certfile", "ssl_cert_reqs", "ssl_ca_certs", "ssl_ca_data", "ssl_check_hostname",
             "ssl_password", "ssl_min_version", "ssl_ciphers")


def async_twin(client: redis.Redis) -> redis.asyncio.Redis:
    """An asyncio client to the same server as ``client``, with the same options (TCP, TLS
    or a Unix socket, as ``client`` connects)."""
    pool = client.connection_pool
    kind = {redis.SSLConnection: redis.asyncio.SSLConnection,
            redis.UnixDomainSocketConnection: redis.asyncio.UnixDomainSocketConnection}
    kwargs = {k: v for k, v in pool.connection_kwargs.items() if k in _PORTABLE}
    retry = pool.connection_kwargs.get("retry")
    backoff = getattr(retry, "_backoff", None)  # redis-py keeps it private; without it, its default
    if backoff is not None:
        kwargs["retry"] = redis.asyncio.retry.Retry(backoff, retry.get_retries())
    connection_class = next((a for b, a in kind.items() if issubclass(pool.connection_class, b)),
                            redis.asyncio.Connection)
    return redis.asyncio.Redis(connection_pool=redis.asyncio.ConnectionPool(connection_class=connection_class,
                                                                            **kwargs))


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
