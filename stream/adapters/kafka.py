"""Kafka adapters: topic creation, producers, and the core's :data:`~stream.core.ports.Publish` port.

The client libraries are imported where they are used: the replayer needs only
kafka-python, the workers aiokafka (groups: kafka-python's consumer groups do not work
on the embedded broker).
"""

from __future__ import annotations

import asyncio
import logging

from stream.core.ports import Publish
from stream.errors import ServiceUnavailable
from stream.settings import Settings

log = logging.getLogger("txwatch.worker")


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


def aiokafka_producer(settings: Settings):
    """An aiokafka producer that waits for all in-sync replicas (batches of up to 256 KiB:
    :func:`publisher` fills them)."""
    from aiokafka import AIOKafkaProducer

    return AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers, acks="all", linger_ms=0,
                            max_request_size=settings.producer_max_request_bytes,
                            max_batch_size=min(256 * 1024, settings.producer_max_request_bytes),
                            **settings.kafka_client_options())


def publisher(producer) -> Publish:
    """``publish(topic, items)`` over an aiokafka producer, awaiting every acknowledgement.

    The items are partitioned by key as ``producer.send`` would (the producer's own
    partitioner) and written into record batches by hand, one per partition while it has
    room, each submitted with ``send_batch``: per message that is an append to a buffer,
    not ``send``'s futures, timers and locks.
    """
    from aiokafka.partitioner import DefaultPartitioner

    partitioner = DefaultPartitioner()

    async def publish(topic: str, items) -> None:
        partitions = sorted(await producer.partitions_for(topic))
        batches: dict[int, object] = {}
        acks = []
        for key, value, headers in items:
            p = partitioner(key, partitions, partitions)
            batch = batches.get(p)
            if batch is None:
                batch = batches[p] = producer.create_batch()
            if batch.append(timestamp=None, key=key, value=value, headers=headers or []) is None:
                # Full: submit it, start the next (a first record always fits, whatever its size).
                acks.append(await producer.send_batch(batch, topic, partition=p))
                batch = batches[p] = producer.create_batch()
                batch.append(timestamp=None, key=key, value=value, headers=headers or [])
        for p, batch in batches.items():
            acks.append(await producer.send_batch(batch, topic, partition=p))
        await asyncio.gather(*acks)
    return publish


def kafka_producer(settings: Settings):
    """A kafka-python producer (lingering 5 ms, batching) for the settings' cluster;
    ``ServiceUnavailable`` if unreachable."""
    from kafka import KafkaProducer
    from kafka.errors import KafkaError

    try:
        return KafkaProducer(bootstrap_servers=settings.bootstrap_servers, acks=1, linger_ms=5,
                             batch_size=256 * 1024, max_request_size=2 * 1024 * 1024,
                             **settings.kafka_client_options())
    except KafkaError as exc:
        raise ServiceUnavailable(f"cannot reach Kafka at {settings.kafka_url}: {exc}") from None
