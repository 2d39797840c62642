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

from aiokafka import AIOKafkaConsumer

from stream.adapters.kafka import aiokafka_producer
from stream.events.deadletters import DeadLetter, dead_letter_record
from stream.events.schema import account_key
from stream.settings import Settings

log = logging.getLogger("txwatch.repartition")


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
                    key, reason = account_key(m.value)
                    if reason is None:
                        futures.append(await producer.send(target, m.value, key=key))
                        counts["routed"] += 1
                    else:
                        dead = DeadLetter(tp.topic, tp.partition, m.offset, reason, "account_id", m.value or b"", m.key)
                        key, value, headers = dead_letter_record(dead, settings.dead_letter_max_bytes)
                        futures.append(await producer.send(settings.dead_letter_topic, value, key=key, headers=headers))
                        counts["dead"] += 1
            await asyncio.gather(*futures)
            await consumer.commit({tp: msgs[-1].offset + 1 for tp, msgs in batch.items()})
    finally:
        await consumer.stop()
        await producer.stop()
    return counts
