"""``txwatch bench soak``: sustained load on one faust worker, as one JSON object.

1. **Peak**: ``peak_events`` events are produced at once and one ``txwatch worker`` (faust
   runner) drains them; its rate from the first processed record is the measured peak.
2. **Soak**: a paced producer offers ``rate`` events/s (default: half the peak) for
   ``seconds``. The history is replayed in loops, each with fresh event ids and times
   shifted past the previous loop, so every event is new to the worker.
3. **Drain**: the producer stops; the worker must catch up.

Every ``sample_s`` seconds it records events produced and processed (Redis offsets), the
lag between them, and the worker's resident memory (``VmRSS``). Reported: RSS growth from
the end of the warm-up to the end, the largest lag (events and seconds of input), stalls
(a sample interval with lag but no progress), and whether Redis holds each alert once.

The producer batches 100 ms of events: the embedded broker's fetches slow down with the
number of record batches a partition holds (measured in ``docs/reliability.md``; see also
``docs/limitations.md``), which under a producer sending tiny batches for minutes stalls
any consumer, faust's or not.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from contextlib import ExitStack
from pathlib import Path
from typing import Callable, Iterator

import orjson

from stream.errors import DataError
from stream.settings import Settings, load_settings
from txwatch.bench.stream import _peak_rss_mb, _start_worker, _stop, _wait_rate, proc_memory_mb, servers

DAY_MS = 86_400_000


def looped(payloads: list[dict]) -> Iterator[tuple[bytes, bytes]]:
    """``(value, key)`` forever: the history again and again, each loop later and with new ids."""
    ts = [p["ts"] for p in payloads if isinstance(p.get("ts"), int)]
    span = (max(ts) - min(ts) + DAY_MS) if ts else DAY_MS
    loop = 0
    while True:
        for p in payloads:
            d = dict(p)
            d["event_id"] = f"L{loop}-{p['event_id']}"
            d["ts"] = p["ts"] + loop * span
            yield orjson.dumps(d), p["account_id"].encode()
        loop += 1


class PacedProducer(threading.Thread):
    """Produces from ``source`` at ``rate`` events/s (None: at once) until stopped or ``limit`` sent."""

    def __init__(self, s: Settings, topic: str, source: Iterator[tuple[bytes, bytes]], rate: float | None,
                 limit: int | None = None) -> None:
        super().__init__(daemon=True)
        self.s, self.topic, self.source, self.rate, self.limit = s, topic, source, rate, limit
        self.sent = 0
        self.stop_flag = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        from kafka import KafkaProducer

        # 100 ms batches: the embedded broker's fetches slow down with the number of record
        # batches a partition holds (docs/limitations.md), not with its records.
        producer = KafkaProducer(bootstrap_servers=self.s.bootstrap_servers, acks=1, linger_ms=100,
                                 batch_size=1024 * 1024, **self.s.kafka_client_options())
        try:
            t0 = time.perf_counter()
            while not self.stop_flag.is_set() and (self.limit is None or self.sent < self.limit):
                due = self.limit if self.rate is None else int((time.perf_counter() - t0) * self.rate)
                if self.limit is not None:
                    due = min(due, self.limit)
                while self.sent < due:
                    value, key = next(self.source)
                    producer.send(self.topic, value=value, key=key)
                    self.sent += 1
                time.sleep(0.005)
            producer.flush()
        except BaseException as exc:  # reported in the result, not swallowed
            self.error = exc
        finally:
            producer.close()


def soak(events_path: str, model_dir: str, *, seconds: float = 300.0, rate: float | None = None,
         peak_events: int = 60_000, warmup_s: float = 60.0, sample_s: float = 5.0, partitions: int = 4,
         max_history: int = 200_000, workdir: str = "runs/soak", log: Callable[[str], None] = lambda m: None) -> dict:
    """Run peak, soak and drain; return the JSON-ready result."""
    import redis

    from stream.adapters.kafka import ensure_topics
    from stream.adapters.redis_store import redis_store
    from stream.core.pipeline import partition_key
    from stream.events.files import iter_payloads
    from stream.scoring.student import load_student

    load_student(model_dir)  # a missing or broken model is one clear error, before any server starts
    history = []
    for _, payload in iter_payloads(events_path):
        try:
            d = orjson.loads(payload)
        except orjson.JSONDecodeError:
            continue
        if isinstance(d, dict) and isinstance(d.get("ts"), int) and isinstance(d.get("account_id"), str):
            history.append(d)
        if len(history) >= max_history:
            break
    if not history:
        raise DataError(f"{events_path}: no events with an integer ts and an account_id")
    history.sort(key=lambda d: d["ts"])
    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    base = load_settings()
    result: dict = {"benchmark": "soak", "history_events": len(history), "partitions": partitions,
                    "machine": {"cpus": os.cpu_count()}}
    with ExitStack() as stack:
        overrides = servers(stack, base)
        result["broker"] = "embedded Tansu" if not base.kafka_url else "configured"
        tag = uuid.uuid4().hex[:6]
        topic = f"soak-{tag}"
        s = load_settings(**{**overrides, "input_topics": topic, "partitions": partitions, "group_id": f"soak-{tag}",
                             "redis_prefix": f"soak-{tag}", "dead_letter_topic": f"{topic}-dlq",
                             "alerts_topic": f"{topic}-alerts", "model_dir": model_dir, "metrics_port": 0,
                             "session_timeout_s": 10, "rebalance_timeout_s": 10, "log_interval_s": 10})
        ensure_topics(s)
        client = redis.Redis.from_url(s.redis_url)
        store = redis_store(s, client)
        pkeys = [partition_key(topic, p) for p in range(partitions)]
        source = looped(history)

        log(f"peak: {peak_events:,} events at once through one faust worker")
        burst = PacedProducer(s, topic, source, rate=None, limit=peak_events)
        burst.start()
        burst.join()
        if burst.error is not None:
            raise RuntimeError(f"producer failed: {burst.error!r}")
        produced = burst.sent
        worker = _start_worker(s, "faust", work / f"worker-{tag}.log")
        try:
            peak = _wait_rate(client, s, topic, produced, [worker])
            result["peak"] = peak
            offered = rate or peak["events_per_s"] / 2
            result["offered_events_per_s"] = round(offered)
            log(f"soak: {offered:,.0f} events/s for {seconds:.0f}s (warm-up {warmup_s:.0f}s)")
            producer = PacedProducer(s, topic, source, rate=offered)
            producer.start()
            t0 = time.monotonic()
            samples = []
            last_done = store.applied_count(pkeys)
            stalls = 0
            while time.monotonic() - t0 < seconds:
                time.sleep(sample_s)
                if worker.poll() is not None:
                    raise RuntimeError(f"worker exited with {worker.returncode}")
                done = store.applied_count(pkeys)
                lag = produced + producer.sent - done
                if done == last_done and lag > 0:
                    stalls += 1
                last_done = done
                samples.append({"t": round(time.monotonic() - t0, 1), "produced": produced + producer.sent,
                                "processed": done, "lag": lag, "rss_mb": proc_memory_mb(worker.pid, "VmRSS")})
                log(f"  t={samples[-1]['t']:.0f}s processed={done:,} lag={lag:,} rss={samples[-1]['rss_mb']} MB")
            producer.stop_flag.set()
            producer.join()
            if producer.error is not None:
                raise RuntimeError(f"producer failed: {producer.error!r}")
            total = produced + producer.sent
            t_drain = time.monotonic()
            _wait_rate(client, s, topic, total, [worker], timeout=300)
            result["drain_seconds"] = round(time.monotonic() - t_drain, 2)
            result["worker_peak_rss_mb"] = _peak_rss_mb(worker.pid)
        finally:
            _stop(worker)
        warm = [x for x in samples if x["t"] >= warmup_s and x["rss_mb"]]
        rss_warm = warm[0]["rss_mb"] if warm else None
        rss_end = warm[-1]["rss_mb"] if warm else None
        ids = [fields[b"event_id"] for p in pkeys for _, fields in client.xrange(store.key(p, "alerts"))]
        hashes = sum(1 for p in pkeys for _ in client.scan_iter(store.key(p, "alert:*"), count=1000))
        result.update({
            "seconds": seconds,
            "events": total,
            "processed": store.applied_count(pkeys),
            "achieved_events_per_s": round(producer.sent / seconds),
            "rss_mb_after_warmup": rss_warm,
            "rss_mb_end": rss_end,
            "rss_growth_pct": round((rss_end - rss_warm) / rss_warm * 100, 2) if rss_warm else None,
            "max_lag_events": max(x["lag"] for x in samples),
            "max_lag_seconds": round(max(x["lag"] for x in samples) / offered, 2),
            "stalls": stalls,
            "alerts": hashes,                       # alert hashes in Redis
            "alert_stream_entries": len(ids),       # entries of the alert streams
            "alert_stream_unique_ids": len(set(ids)),  # equal to the entries: no alert written twice
            "samples": samples,
        })
    return result
