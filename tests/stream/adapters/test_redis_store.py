"""The Redis adapter keeps its side of the port: an unreachable Redis is ServiceUnavailable
(which the core retries), never a redis-py exception the core would not know."""

from __future__ import annotations

import asyncio

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from stream.adapters.redis_store import RedisStore
from stream.core.pipeline import BatchResult
from stream.errors import ServiceUnavailable
from txwatch.local.embedded import free_port


@pytest.fixture()
def unreachable() -> RedisStore:
    # No retries inside redis-py: the core does the retrying.
    client = redis.Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=0.5,
                         retry=Retry(NoBackoff(), 0))
    return RedisStore(client)


def test_reads_of_an_unreachable_redis_are_service_unavailable(unreachable):
    with pytest.raises(ServiceUnavailable, match="state read: ConnectionError"):
        unreachable.load("t:0", ["a"])
    with pytest.raises(ServiceUnavailable, match="offset read"):
        unreachable.offset("t:0")


def test_a_batch_write_to_an_unreachable_redis_is_service_unavailable(unreachable):
    result = BatchResult("t:0", -1, 4, states={"a": b"x"})
    with pytest.raises(ServiceUnavailable, match="batch write"):
        unreachable.commit_many([result])


def test_an_awaited_batch_write_to_an_unreachable_redis_is_service_unavailable(unreachable):
    """The worker's write path (the asyncio twin of the client) reports the same way."""
    result = BatchResult("t:0", -1, 4, states={"a": b"x"})

    async def write():
        await unreachable.commit_many_async([result])

    with pytest.raises(ServiceUnavailable, match="batch write"):
        asyncio.run(write())
