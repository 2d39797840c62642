"""The worker's Kafka publisher (stream.adapters.kafka.publisher) against the embedded broker:
every message arrives once, with its key and headers, in order per partition, and on the
partition ``producer.send`` would have chosen for its key."""

import asyncio

from stream.adapters.kafka import aiokafka_producer, publisher

from .conftest import consume_all


def test_published_messages_arrive_whole_in_order_on_the_keys_partitions(settings):
    s = settings
    big = 200 * 1024  # a few values this large overflow a batch: the publisher starts another
    items = [(f"k{i}".encode() if i % 10 else None,
              (b"v%d:" % i) + b"x" * (big if i % 37 == 0 else i),
              [("reason", b"r%d" % i)] if i % 3 == 0 else [])
             for i in range(300)]
    keyed = [key for key, _, _ in items if key is not None]

    async def run() -> None:
        producer = aiokafka_producer(s)
        await producer.start()
        try:
            await publisher(producer)(s.alerts_topic, items)
            # The same keys through producer.send, one by one, on another topic.
            await asyncio.gather(*[await producer.send(s.dead_letter_topic, b"", key=k) for k in keyed])
        finally:
            await producer.stop()

    asyncio.run(run())
    got = consume_all(s, s.alerts_topic, len(items))
    assert sorted((m.value, m.key, list(m.headers)) for m in got) == sorted((v, k, h) for k, v, h in items)
    position = {v: i for i, (_, v, _) in enumerate(items)}
    for p in range(s.partitions):
        order = [position[m.value] for m in got if m.partition == p]
        assert order == sorted(order), f"partition {p} out of order"
    assert len({m.partition for m in got}) == s.partitions
    reference = {m.key: m.partition for m in consume_all(s, s.dead_letter_topic, len(keyed))}
    assert {m.key: m.partition for m in got if m.key is not None} == reference
