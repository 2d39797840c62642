"""RedisStore against a real redis-server: the atomic batch write and its fence."""

from __future__ import annotations

import asyncio
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


def test_a_commit_removes_the_published_outbox_entries_in_its_own_round_trip(store, models, small_history):
    """Entries already on Kafka ride along with the next commit (HDEL before the scripts,
    in one pipeline), and that commit's own replies are unchanged by them."""
    events = small_history[:900]
    pipe = Pipeline(load_student(models["student"]), store)
    recs = {p: [Record("ev", p, i, orjson.dumps(e)) for i, e in enumerate(events)] for p in (2, 3)}
    first = [pipe.process(recs[p][:300]) for p in (2, 3)]
    for r in first:
        r.outbox = b"first " + r.partition_key.encode()
    store.commit_many(first)
    assert {p: sorted(store.outbox(f"ev:{p}")) for p in (2, 3)} == {2: [299], 3: [299]}
    second = [pipe.process(recs[p][300:600]) for p in (2, 3)]
    for r in second:
        r.outbox = b"second"
    store.client.script_flush()  # and the reload path keeps the HDELs' replies apart too
    outcomes = store.commit_many(second, {"ev:2": [299], "ev:3": [299]})
    assert outcomes == [[a.event_id for a in r.alerts] for r in second] and any(outcomes)
    assert {p: store.outbox(f"ev:{p}") for p in (2, 3)} == {2: {599: b"second"}, 3: {599: b"second"}}
    store.clear_outbox({"ev:2": [599], "ev:3": [599], "ev:4": []})
    assert store.outbox("ev:2") == {} and store.outbox("ev:3") == {}


def test_the_awaited_write_is_the_same_write(store, models, small_history):
    """commit_many_async (the worker's path, redis-py's asyncio client) applies, fences,
    clears and reloads its script as commit_many does, on whichever event loop runs it."""
    events = small_history[:900]
    recs = [Record("ev", 5, i, orjson.dumps(e)) for i, e in enumerate(events)]
    student = load_student(models["student"])
    pipe = Pipeline(student, store)
    first = pipe.process(recs[:300])
    first.outbox = b"first"
    stale = Pipeline(student, store).process(recs[:200])  # another worker, same start
    assert asyncio.run(store.commit_many_async([first])) == [[a.event_id for a in first.alerts]]
    assert store.offset("ev:5") == 299 and store.outbox("ev:5") == {299: b"first"}
    assert asyncio.run(store.commit_many_async([first])) == [[]]  # again: a no-op
    [fenced] = asyncio.run(store.commit_many_async([stale]))
    assert isinstance(fenced, FenceError)

    second = pipe.process(recs[300:])
    store.client.script_flush()  # a new loop, and the script to load again
    outcomes = asyncio.run(store.commit_many_async([second], {"ev:5": [299]}))
    assert outcomes == [[a.event_id for a in second.alerts]] and first.alerts + second.alerts
    assert store.offset("ev:5") == 899 and store.outbox("ev:5") == {}
    stored = store.client.hgetall(store.key("ev:5", "state"))
    assert {k.decode(): v for k, v in stored.items()} == {**first.states, **second.states}
    # A round with nothing new to store still clears what Kafka has acknowledged.
    store.client.hset(store.key("ev:5", "outbox"), "899", b"second")
    replayed = pipe.process(recs[300:])  # already applied: nothing to store
    assert replayed.empty
    assert asyncio.run(store.commit_many_async([replayed], {"ev:5": [899]})) == [[]]
    assert store.outbox("ev:5") == {} and store.offset("ev:5") == 899


def test_aclose_closes_the_connections_of_the_running_loop(store, models, small_history):
    """A stopping worker's asyncio Redis connections close with it (the server sees them go),
    and the store opens new ones if it writes again."""
    recs = [Record("ev", 6, i, orjson.dumps(e)) for i, e in enumerate(small_history[:200])]
    pipe = Pipeline(load_student(models["student"]), store)

    async def write_then_close(batch) -> tuple[int, int]:
        await store.commit_many_async([pipe.process(batch)])
        open_ = len(store.client.client_list())
        await store.aclose()
        await store.aclose()  # twice: a no-op
        return open_, len(store.client.client_list())

    for batch in (recs[:100], recs[100:]):
        open_, closed = asyncio.run(write_then_close(batch))
        assert closed == open_ - 1
    assert store.offset("ev:6") == 199
