"""``txwatch replay``: publish an events file to a Kafka topic, keyed by account_id.

Events are read by the one event-file reader (:mod:`stream.events.files`: JSON Lines, or
Parquet rows as JSON) and published as they are: the worker validates them, and an
invalid line ends in the dead-letter topic, which makes the replayer useful for testing
that path too. The key is the event's ``account_id`` when the line is a JSON object that
has one (:func:`stream.events.schema.account_key`), otherwise no key. ``rate=0`` publishes as fast as the producer allows; otherwise a token bucket keeps
the average at ``rate`` events per second.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from stream.adapters.kafka import kafka_producer
from stream.errors import DataError
from stream.events.files import iter_payloads
from stream.events.schema import account_key
from stream.progress import progress_bar
from stream.settings import Settings


def replay(settings: Settings, path: str | Path, topic: str, rate: float = 0.0, *,
           limit: int | None = None, progress: bool = True,
           on_sent: Callable[[int], None] | None = None) -> dict:
    """Publish every line of ``path`` to ``topic``; return counts and the achieved rate."""
    if rate < 0:
        raise DataError("--rate must be >= 0")
    if not Path(path).is_file():
        raise DataError(f"{path}: no such file")
    producer = kafka_producer(settings)
    sent = 0
    t0 = time.perf_counter()
    bar = progress_bar(None, f"replay -> {topic}", enabled=progress)
    try:
        for _, payload in iter_payloads(path):
            if limit is not None and sent >= limit:
                break
            if rate > 0:
                due = t0 + sent / rate
                delay = due - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
            producer.send(topic, value=payload, key=account_key(payload)[0])
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
