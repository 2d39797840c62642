"""RedisStore against a real redis-server: the atomic batch write and its fence."""

from __future__ import annotations

import uuid

import orjson
import pytest
import redis

from stream.adapters.redis_store import RedisStore, StoreConfig
from stream.core.pipeline import Pipeline
from stream.core.ports import FenceError, Record
from stream.scoring.student import load_student

pytestmark = pytest.mark.integration


@pytest.fixture
def store(redis_server):
    prefix = f"t{uuid.uuid4().hex[:8]}"
    client = redis.Redis.from_url(redis_server.url)
    yield RedisStore(client, StoreConfig(prefix=prefix))
    for key in client.scan_iter(f"{prefix}:*"):
        client.delete(key)


def test_commit_is_fenced_and_a_retried_commit_is_a_no_op(store, models, small_history):
    events = small_history[:3000]
    records = [Record("ev", 0, i, orjson.dumps(e)) for i, e in enumerate(events)]
    student = load_student(models["student"])
    result = Pipeline(student, store).process(records[:1500])
    stale_result = Pipeline(student, store).process(records[:1000])  # another worker, same start
    added = store.commit(result)
    assert added and added == [a.event_id for a in result.alerts]
    snapshot = {k: store.client.dump(k) for k in store.client.scan_iter(f"{store.config.prefix}:*")
                if store.client.type(k) != b"stream"}
    assert store.commit(result) == []  # the same batch again (its reply was lost): no change
    assert snapshot == {k: store.client.dump(k) for k in snapshot}
    with pytest.raises(FenceError):
        store.commit(stale_result)
    assert store.offset("ev:0") == 1499


def test_commit_survives_redis_losing_its_script_cache(store, models, small_history):
    """After a Redis restart (or SCRIPT FLUSH) the commit script is loaded again, once."""
    events = small_history[:600]
    records = [Record("ev", 1, i, orjson.dumps(e)) for i, e in enumerate(events)]
    pipe = Pipeline(load_student(models["student"]), store)
    first = pipe.process(records[:300])
    store.commit(first)
    store.client.script_flush()
    second = pipe.process(records[300:])
    store.commit(second)
    assert store.offset("ev:1") == 599
    assert store.client.script_exists(store._commit.sha) == [True]
