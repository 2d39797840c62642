"""``txwatch replay``: publish an events file to a Kafka topic, keyed by account_id.

Lines are published as they are (the worker validates them; an invalid line ends in the
dead-letter topic, which makes the replayer useful for testing that path too). The key
is the event's ``account_id`` when the line is a JSON object that has one, otherwise no
key. ``rate=0`` publishes as fast as the producer allows; otherwise a token bucket keeps
the average at ``rate`` events per second.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Iterator

import orjson

from stream.errors import DataError, ServiceUnavailable
from stream.settings import Settings


def iter_lines(path: str | Path) -> Iterator[bytes]:
    """Raw event payloads of a JSONL file (or a Parquet file's rows as JSON)."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: no such file")
    if p.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(p)
        except Exception as exc:  # pyarrow raises many types for a corrupt file
            raise DataError(f"{p}: not a readable Parquet file ({exc})") from None
        for row in table.to_pylist():
            yield orjson.dumps({k: v for k, v in row.items() if v is not None})
        return
    with open(p, "rb") as fh:
        for line in fh:
            line = line.rstrip(b"\r\n")
            if line.strip():
                yield line


def account_key(payload: bytes) -> bytes | None:
    """The ``account_id`` of a JSON payload, as the record key (None if there is none)."""
    try:
        d = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    acct = d.get("account_id") if isinstance(d, dict) else None
    return acct.encode() if isinstance(acct, str) and acct else None


def kafka_producer(settings: Settings):
    """A kafka-python producer for the settings' cluster; ``ServiceUnavailable`` if unreachable."""
    from kafka import KafkaProducer
    from kafka.errors import KafkaError

    try:
        return KafkaProducer(bootstrap_servers=settings.bootstrap_servers, acks=1, linger_ms=5,
                             batch_size=256 * 1024, max_request_size=2 * 1024 * 1024,
                             **settings.kafka_client_options())
    except KafkaError as exc:
        raise ServiceUnavailable(f"cannot reach Kafka at {settings.kafka_url}: {exc}") from None


def replay(settings: Settings, path: str | Path, topic: str, rate: float = 0.0, *,
           limit: int | None = None, progress: bool = True,
           on_sent: Callable[[int], None] | None = None) -> dict:
    """Publish every line of ``path`` to ``topic``; return counts and the achieved rate."""
    if rate < 0:
        raise DataError("--rate must be >= 0")
    if not Path(path).is_file():
        raise DataError(f"{path}: no such file")
    from tqdm import tqdm

    producer = kafka_producer(settings)
    sent = 0
    t0 = time.perf_counter()
    bar = tqdm(desc=f"replay -> {topic}", unit="ev", unit_scale=True, disable=None if progress else True,
               mininterval=0.5, leave=False)
    try:
        for payload in iter_lines(path):
            if limit is not None and sent >= limit:
                break
            if rate > 0:
                due = t0 + sent / rate
                delay = due - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
            producer.send(topic, value=payload, key=account_key(payload))
            sent += 1
            if sent % 1000 == 0:
                bar.update(1000)
                if on_sent is not None:
                    on_sent(sent)
        producer.flush()
    finally:
        bar.close()
        producer.close()
    elapsed = time.perf_counter() - t0
    return {"sent": sent, "seconds": round(elapsed, 3), "events_per_s": round(sent / elapsed) if elapsed else None}
