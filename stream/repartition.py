"""``txwatch repartition``: re-key a topic by ``account_id`` for the workers.

The worker needs every event of an account on one partition (per-account order and the
partition's state hash depend on it). A source topic keyed otherwise is read by this
small loop and each event re-produced, keyed by its ``account_id``, to a keyed topic
with the workers' partition count; the workers consume that topic. Records without a
readable ``account_id`` go straight to the dead-letter topic with the reason. Source
offsets are committed only after the re-produced records are acknowledged
(at-least-once: a crash can re-produce a batch; the worker skips those duplicates).

Cost: one more produce and consume per event (broker traffic and storage double for the
input), a few milliseconds of added latency, and one more process to run.
"""

from __future__ import annotations

import asyncio
import logging

import orjson
from aiokafka import AIOKafkaConsumer

from stream.runner import aiokafka_producer
from stream.settings import Settings

log = logging.getLogger("txwatch.repartition")


def route(value: bytes | None) -> tuple[bytes | None, str | None]:
    """``(key, None)`` for a record with an ``account_id``, else ``(None, reason)``."""
    if value is None:
        return None, "record has no value"
    try:
        d = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        return None, f"not valid JSON: {exc}"
    acct = d.get("account_id") if isinstance(d, dict) else None
    if not isinstance(acct, str) or not acct:
        return None, "account_id: missing or not a string"
    return acct.encode(), None


async def run_repartition(settings: Settings, source: str, target: str, *, stop: asyncio.Event | None = None) -> dict:
    """Copy ``source`` to ``target`` keyed by account until ``stop``; return counts."""
    producer = aiokafka_producer(settings)
    consumer = AIOKafkaConsumer(source, bootstrap_servers=settings.bootstrap_servers,
                                group_id=f"{settings.group_id}-repartition", enable_auto_commit=False,
                                auto_offset_reset="earliest", fetch_max_wait_ms=settings.fetch_max_wait_ms,
                                session_timeout_ms=int(settings.session_timeout_s * 1000),
                                rebalance_timeout_ms=int(settings.rebalance_timeout_s * 1000),
                                **settings.kafka_client_options())
    counts = {"routed": 0, "dead": 0}
    await producer.start()
    await consumer.start()
    try:
        while stop is None or not stop.is_set():
            batch = await consumer.getmany(timeout_ms=max(1, int(settings.batch_within_s * 1000)),
                                           max_records=settings.batch_max)
            if not batch:
                continue
            futures = []
            for tp, msgs in batch.items():
                for m in msgs:
                    key, reason = route(m.value)
                    if reason is None:
                        futures.append(await producer.send(target, m.value, key=key))
                        counts["routed"] += 1
                    else:
                        headers = [("txwatch-reason", reason.encode()), ("txwatch-field", b"account_id"),
                                   ("txwatch-source", f"{tp.topic}:{tp.partition}:{m.offset}".encode())]
                        futures.append(await producer.send(settings.dead_letter_topic, m.value or b"",
                                                           key=m.key, headers=headers))
                        counts["dead"] += 1
            await asyncio.gather(*futures)
            await consumer.commit({tp: msgs[-1].offset + 1 for tp, msgs in batch.items()})
    finally:
        await consumer.stop()
        await producer.stop()
    return counts
