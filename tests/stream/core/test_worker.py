"""WorkerCore in memory: write order, retries, dead-letter records, model reload."""

from __future__ import annotations

import asyncio
import json
import shutil

import orjson

from stream.adapters.model_watcher import ModelWatcher
from stream.core.ports import Record
from stream.core.worker import WorkerCore
from stream.metrics import WorkerMetrics
from stream.scoring.student import load_student
from stream.settings import load_settings
from tests.doubles import MemoryStore

TOPIC = "exchange.events"


class Journal:
    """Records every publish and every store commit, in order."""

    def __init__(self, store: MemoryStore) -> None:
        self.log: list[tuple] = []
        self.store = store
        original = store.commit

        def commit(result):
            added = original(result)
            self.log.append(("redis", result.partition_key, result.last_offset))
            return added
        store.commit = commit

    async def publish(self, topic, items):
        for key, value, headers in items:
            self.log.append(("kafka", topic, key, value, dict(headers)))


def make_core(models, tmp_path, store=None, **settings):
    store = store or MemoryStore()
    journal = Journal(store)
    s = load_settings(model_dir=str(models["student"]), retry_max_s=0.05, **settings)
    metrics = WorkerMetrics()
    core = WorkerCore(s, store, load_student(models["student"]), journal.publish, metrics)
    return core, journal, store


def records(events, partition=0, start=0):
    return [Record(TOPIC, partition, start + i, v if isinstance(v, bytes) else orjson.dumps(v), b"k", None)
            for i, v in enumerate(events)]


def test_the_redis_commit_comes_first_with_its_outbox_then_kafka_then_the_outbox_is_cleared(
        models, small_history, tmp_path):
    core, journal, store = make_core(models, tmp_path)
    outboxes_at_commit = []
    commit = store.commit

    def spying_commit(result):
        added = commit(result)
        outboxes_at_commit.append(store.outbox(result.partition_key))
        return added
    store.commit = spying_commit
    student = core.student
    # Pick events the model alerts on, plus one bad record.
    from stream.events.schema import event_from_dict
    from stream.features.reference import FeatureEngine
    evs = small_history[:4000]
    engine = FeatureEngine()
    rows = engine.replay([event_from_dict(e) for e in evs])
    n_alerts = int((student.score(rows) >= student.threshold).sum())
    assert n_alerts > 0
    batch = records(evs + [b'{"event_id": 5}'])
    asyncio.run(core.handle(batch))
    kinds = [entry[0] for entry in journal.log]
    assert kinds.count("redis") == 1 and kinds[0] == "redis"  # Redis first, Kafka after
    # The commit stored the batch's messages (its outbox entry); Kafka has them now, and the
    # entry leaves the outbox with the next commit or, with none coming, the idle tick.
    assert len(outboxes_at_commit[0]) == 1 and len(store.outbox(f"{TOPIC}:0")) == 1
    core.idle()
    assert store.outbox(f"{TOPIC}:0") == {}
    alerts = [e for e in journal.log if e[0] == "kafka" and e[1] == core.settings.alerts_topic]
    assert len(alerts) == n_alerts == len(store.all_alerts())
    body = orjson.loads(alerts[0][3])
    assert body["model_version"] == student.version and body["reasons"]
    dead = [e for e in journal.log if e[0] == "kafka" and e[1] == core.settings.dead_letter_topic]
    assert len(dead) == 1
    assert dead[0][3] == b'{"event_id": 5}'
    assert dead[0][4]["txwatch-reason"] == b"expected string, got int"
    assert dead[0][4]["txwatch-source"] == f"{TOPIC}:0:{len(evs)}".encode()
    m = core.metrics
    assert m.value(m.events, outcome="scored") == len(evs)
    assert m.value(m.events, outcome="dead") == 1
    assert m.value(m.alerts) == n_alerts


def test_published_outbox_entries_leave_with_the_next_commit_not_a_round_trip_of_their_own(
        models, small_history, tmp_path):
    core, journal, store = make_core(models, tmp_path)
    commits, clears = [], []
    commit_many, clear_outbox = store.commit_many, store.clear_outbox

    def spying_commit_many(results, cleared=None):
        commits.append({k: list(v) for k, v in (cleared or {}).items()})
        return commit_many(results, cleared)

    def spying_clear(cleared):
        clears.append(cleared)
        return clear_outbox(cleared)
    store.commit_many, store.clear_outbox = spying_commit_many, spying_clear
    evs = small_history[:3000]
    asyncio.run(core.handle(records(evs[:1000], partition=0) + records(evs[:1000], partition=1)))
    ends = {f"{TOPIC}:{p}": 999 for p in range(2)}
    assert all(len(store.outbox(k)) == 1 for k in ends)  # on Kafka, not yet cleared
    asyncio.run(core.handle(records(evs[1000:2000], partition=0, start=1000)
                            + records(evs[1000:2000], partition=1, start=1000)))
    # The third commit carried the first two entries' removal in its own round trip.
    assert commits == [{}, {k: [e] for k, e in ends.items()}] and clears == []
    assert {k: sorted(store.outbox(k)) for k in ends} == {k: [1999] for k in ends}
    asyncio.run(core.settle())  # before a rebalance or a stop: nothing left for a next owner
    assert all(store.outbox(k) == {} for k in ends)
    assert len(clears) == 1


def test_redis_failures_are_retried_without_loss_or_duplicates(models, small_history, tmp_path):
    core, journal, store = make_core(models, tmp_path)
    store.fail_next = 3
    evs = small_history[:3000]
    asyncio.run(core.handle(records(evs)))
    assert core.metrics.value(core.metrics.retries) == 3
    assert store.offsets[f"{TOPIC}:0"] == len(evs) - 1
    # Alerts were produced once per attempt (at-least-once to Kafka), stored once in Redis.
    ids = [orjson.loads(e[3])["event_id"] for e in journal.log if e[0] == "kafka" and e[1] == core.settings.alerts_topic]
    assert len(set(ids)) == len(store.all_alerts())


def test_replayed_batch_is_a_no_op(models, small_history, tmp_path):
    core, journal, store = make_core(models, tmp_path)
    evs = small_history[:2000]
    asyncio.run(core.handle(records(evs)))
    before = (dict(store.offsets), {k: dict(v) for k, v in store.states.items()}, store.all_alerts())
    fresh_core, _, _ = make_core(models, tmp_path, store=store)
    asyncio.run(fresh_core.handle(records(evs)))
    assert (store.offsets, store.states, store.all_alerts()) == before
    assert fresh_core.metrics.value(fresh_core.metrics.events, outcome="skipped") == len(evs)


def test_model_reload_picks_up_new_and_refuses_broken(models, tmp_path):
    s = load_settings(model_dir=str(tmp_path / "live"))
    shutil.copytree(models["student"], tmp_path / "live")
    metrics = WorkerMetrics()
    watcher = ModelWatcher(s, None, metrics)
    first = watcher.load_initial()
    assert watcher.poll() is None  # unchanged
    # A new artifact with another version appears in place.
    new_dir = tmp_path / "new"
    shutil.copytree(models["student"], new_dir)
    m = json.loads((new_dir / "manifest.json").read_text())
    m["model_version"] = "student-v2"
    (new_dir / "manifest.json").write_text(json.dumps(m))
    shutil.rmtree(tmp_path / "live")
    shutil.copytree(new_dir, tmp_path / "live")
    reloaded = watcher.poll()
    assert reloaded is not None and reloaded.version == "student-v2" != first.version
    # A tampered one is refused; nothing is returned, so the current model keeps serving.
    (tmp_path / "live" / "student.json").write_bytes(b'{"family": "linear"}')
    m["model_version"] = "student-v3"
    (tmp_path / "live" / "manifest.json").write_text(json.dumps(m))
    assert watcher.poll() is None
    assert metrics.value(metrics.reloads, result="refused") == 1
    assert metrics.value(metrics.reloads, result="ok") == 2


def test_max_event_bytes_setting_is_applied(models, small_history, tmp_path):
    core, journal, store = make_core(models, tmp_path, max_event_bytes=300)
    big = orjson.dumps({**small_history[0], "note": "x" * 400})
    asyncio.run(core.handle(records([small_history[1], big])))
    dead = [e for e in journal.log if e[0] == "kafka" and e[1] == core.settings.dead_letter_topic]
    assert len(dead) == 1 and b"exceeds 300" in dead[0][4]["txwatch-reason"]


class _Pointer:
    """A Redis client double serving only the model pointer; ``down`` makes it fail."""

    def __init__(self, value: str | None) -> None:
        self.value = value
        self.down = False

    def get(self, key):
        import redis

        if self.down:
            raise redis.ConnectionError("Redis is down")
        return None if self.value is None else self.value.encode()


def test_redis_outage_does_not_switch_the_model_back_to_the_default(models, tmp_path):
    default = tmp_path / "default"
    shutil.copytree(models["student"], default)
    pointed = tmp_path / "pointed"
    shutil.copytree(models["student"], pointed)
    m = json.loads((pointed / "manifest.json").read_text())
    m["model_version"] = "student-pointed"
    (pointed / "manifest.json").write_text(json.dumps(m))
    client = _Pointer(str(pointed))
    watcher = ModelWatcher(load_settings(model_dir=str(default)), client, WorkerMetrics())
    assert watcher.load_initial().version == "student-pointed"
    client.down = True
    assert watcher.poll() is None  # pointer unknown while Redis is down: keep serving
    assert watcher.dir == str(pointed)


def _snapshot(store):
    return dict(store.offsets), {k: dict(v) for k, v in store.states.items()}, set(store.all_alerts())


def test_a_batch_prepared_while_the_previous_is_written_lands_as_if_sequential(models, small_history, tmp_path):
    """The plain runner computes batch k+1 before batch k is stored: same end state."""
    evs = small_history[:3000]
    recs = records(evs)
    chunks = [recs[:1000], recs[1000:2000], recs[2000:]]
    ref, _, ref_store = make_core(models, tmp_path)
    for chunk in chunks:
        asyncio.run(ref.handle(chunk))

    core, journal, store = make_core(models, tmp_path)

    async def overlapped():
        prepared = await core.prepare([chunks[0]])
        for chunk in chunks[1:]:
            following = await core.prepare([chunk])  # computed before the previous one is stored
            await core.persist(prepared)
            prepared = following
        await core.persist(prepared)

    asyncio.run(overlapped())
    assert _snapshot(store) == _snapshot(ref_store)
    assert [e[2] for e in journal.log if e[0] == "redis"] == [999, 1999, 2999]  # in batch order


def test_a_batch_prepared_before_its_partition_was_dropped_is_computed_again(models, small_history, tmp_path):
    """Batch k+1 was computed from the cache; the partition is then dropped (a rebalance)
    and the store moved on meanwhile. Storing the stale result would write states
    computed from the old cache; it must be computed again from the store."""
    evs = small_history[:2000]
    recs = records(evs)
    core, _, store = make_core(models, tmp_path)
    pkey = f"{TOPIC}:0"

    async def run():
        first = await core.prepare([recs[:1000]])
        second = await core.prepare([recs[1000:]])
        # Meanwhile another worker stored the first half, from empty states (say its
        # history was cut), and this worker's partition cache is dropped.
        other, _, _ = make_core(models, tmp_path, store=store)
        await other.handle(recs[500:1000])
        store.offsets[pkey] = 999
        core.revoke(TOPIC, 0)
        assert (await core.persist(first))[0].scored == 0  # at or below the stored offset now
        await core.persist(second)

    asyncio.run(run())
    # What a worker starting from the store would have written for the second half.
    expected_store = MemoryStore()
    expected_store.offsets[pkey] = 999
    expected_store.states = {pkey: dict(store_states_after(models, tmp_path, recs[500:1000]))}
    fresh, _, _ = make_core(models, tmp_path, store=expected_store)
    asyncio.run(fresh.handle(recs[1000:]))
    assert store.states[pkey] == expected_store.states[pkey]
    assert store.offsets[pkey] == 1999


def store_states_after(models, tmp_path, recs):
    core, _, store = make_core(models, tmp_path)
    asyncio.run(core.handle(recs))
    return store.states[f"{TOPIC}:0"]


def test_a_state_read_failing_mid_batch_is_retried_without_losing_the_batch(models, small_history, tmp_path):
    """Redis fails while the batch reads account states: the retry must process the whole
    batch again (the cache must not already count it as done)."""
    from stream.errors import ServiceUnavailable

    class FlakyLoads(MemoryStore):
        fail_loads = 2

        def load(self, pkey, accounts):
            if self.fail_loads:
                self.fail_loads -= 1
                raise ServiceUnavailable("Redis went away")  # what the Redis adapter reports
            return super().load(pkey, accounts)

    evs = small_history[:1500]
    ref, _, ref_store = make_core(models, tmp_path)
    asyncio.run(ref.handle(records(evs)))
    core, _, store = make_core(models, tmp_path, store=FlakyLoads())
    asyncio.run(core.handle(records(evs)))
    assert core.metrics.value(core.metrics.retries) == 2
    assert _snapshot(store) == _snapshot(ref_store)


def test_a_crash_between_the_commit_and_the_publish_leaves_the_outbox_for_the_next_owner(
        models, small_history, tmp_path):
    """The first worker commits but its publish never completes (the broker is gone, then the
    worker dies); the next owner of the partition publishes the outbox before its own batch."""
    store = MemoryStore()
    first, _, _ = make_core(models, tmp_path, store=store)

    async def broker_gone(topic, items):
        raise ConnectionError("broker gone")
    first.publish = broker_gone
    evs = small_history[:4000]
    asyncio.run(first.persist(asyncio.run(first.prepare([records(evs[:2000])]))))
    stored_alerts = set(store.all_alerts())
    assert stored_alerts and len(store.outbox(f"{TOPIC}:0")) == 1  # committed, not published

    second, journal, _ = make_core(models, tmp_path, store=store)

    def alerts_published():
        return [orjson.loads(e[3])["event_id"] for e in journal.log
                if e[0] == "kafka" and e[1] == second.settings.alerts_topic]
    # Kafka offsets were never committed: the new owner is handed the same records first. The
    # replay is a no-op in Redis (its end offset is the outbox entry's key), yet publishes it.
    asyncio.run(second.handle(records(evs[:2000])))
    assert set(alerts_published()) == stored_alerts
    asyncio.run(second.handle(records(evs[2000:], start=2000)))
    published = alerts_published()
    assert stored_alerts <= set(published)          # the first worker's alerts reached Kafka
    assert set(published) == set(store.all_alerts())  # and every alert stored, nothing else
    assert sorted(store.outbox(f"{TOPIC}:0")) == [3999]  # the first entry left with this commit
    asyncio.run(second.settle())
    assert store.outbox(f"{TOPIC}:0") == {}
