"""The pipeline core with the in-memory store: parity with offline, idempotency, dead letters."""

from __future__ import annotations

import random
import zlib

import numpy as np
import orjson
import pytest

from stream.core.pipeline import Pipeline, partition_key
from stream.core.ports import FenceError, Record
from stream.events.schema import event_from_dict
from stream.scoring.student import load_student
from tests.doubles import MemoryStore
from training.dataset import build_features

TOPIC = "exchange.events"
PARTITIONS = 3


def partition_of(account_id: str) -> int:
    """The partition of an account's events (keyed by account, as the replayer does)."""
    return zlib.crc32(account_id.encode()) % PARTITIONS


def to_records(events: list[dict]) -> dict[int, list[Record]]:
    """Key by account like the replayer: per-partition record lists in produce order."""
    parts: dict[int, list[Record]] = {p: [] for p in range(PARTITIONS)}
    for ev in events:
        p = partition_of(ev["account_id"])
        parts[p].append(Record(TOPIC, p, len(parts[p]), orjson.dumps(ev), ev["account_id"].encode()))
    return parts


def run_batches(pipeline_factory, store, parts, rng, restart_every=None, max_batch=700):
    """Feed each partition in random-size batches, restarting the worker now and then;
    yield ``(partition, result)`` of every batch, committed to ``store``."""
    pipe = pipeline_factory()
    batches = 0
    for p, records in parts.items():
        i = 0
        while i < len(records):
            n = rng.randint(1, max_batch)
            result = pipe.process(records[i:i + n])
            store.commit(result)
            pipe.committed(result)
            yield p, result
            i += n
            batches += 1
            if restart_every and batches % restart_every == 0:
                pipe = pipeline_factory()  # a new worker: empty cache, states from the store


def drive(pipeline_factory, store, parts, rng, restart_every=None):
    """Features and scores by event id, and the alerts, of :func:`run_batches`."""
    features, scores, alerts = {}, {}, []
    for _, result in run_batches(pipeline_factory, store, parts, rng, restart_every):
        if result.scored:
            for eid, row, s in zip(result.event_ids, result.features, result.score_array):
                features[eid] = row
                scores[eid] = s
        alerts += [a.event_id for a in result.alerts]
    return features, scores, alerts


@pytest.fixture(scope="module")
def ordered(small_history):
    """The history in event-time order, each event once (late and duplicate delivery:
    tests/stream/core/test_parity.py)."""
    return small_history


def test_stream_features_and_scores_equal_offline(models, ordered):
    student = load_student(models["student"])
    events = [event_from_dict(e) for e in ordered]
    offline = build_features(events)
    assert not offline.duplicates and not offline.late
    X_off = offline.X
    p_off = student.score(X_off)
    store = MemoryStore()
    feats, scores, alerts = drive(lambda: Pipeline(student, store), store, to_records(ordered),
                                  random.Random(1), restart_every=7)
    assert len(feats) == len(events)
    X_stream = np.array([feats[e.event_id] for e in events])
    assert np.array_equal(X_stream, X_off)  # bit-for-bit, through state bytes and restarts
    p_stream = np.array([scores[e.event_id] for e in events])
    np.testing.assert_allclose(p_stream, p_off, rtol=0, atol=1e-6)
    expected = {e.event_id for e, p in zip(events, p_off) if p >= student.threshold}
    assert set(alerts) == expected and len(alerts) == len(expected) > 0
    assert set(store.all_alerts()) == expected


def test_scoring_the_partitions_in_one_call_gives_each_batch_its_own_results(models, ordered):
    """Pipeline.score over several partitions' batches: each batch gets exactly the scores,
    alerts (with their reasons and partition) and rows that scoring it alone gives."""
    student = load_student(models["student"])
    parts = to_records(ordered[:6000])
    alone_store, joint_store = MemoryStore(), MemoryStore()
    alone, joint = Pipeline(student, alone_store), Pipeline(student, joint_store)
    sizes = [1, 7, 40, 300, 900]
    pos = {p: 0 for p in parts}
    compared = alerts = 0
    for n in sizes * 3:
        groups = [parts[p][pos[p]:pos[p] + n] for p in parts if pos[p] < len(parts[p])]
        for g in groups:
            pos[g[0].partition] += len(g)
        expected = [alone.process(g) for g in groups]
        got = [joint.process(g, score=False) for g in groups]
        assert all(r.pending is not None for r in got if r.states) and not any(r.alerts for r in got)
        joint.score(got)
        for e, g in zip(expected, got):
            assert g.pending is None and g.scored == e.scored and g.event_ids == e.event_ids
            np.testing.assert_array_equal(g.score_array, e.score_array)
            np.testing.assert_array_equal(g.features, e.features)
            assert g.alerts == e.alerts  # scores, reasons, features and partition key included
            alerts += len(g.alerts)
            compared += g.scored
        for r in expected:
            alone_store.commit(r)
        for r in got:
            joint_store.commit(r)
    assert compared == 6000 and alerts > 0

    def stored(store):  # the stored alerts, without the time each was written
        return {k: {f: v for f, v in a.items() if f != "created_ms"} for k, a in store.all_alerts().items()}

    assert stored(joint_store) == stored(alone_store)


def test_replayed_records_change_nothing(models, ordered):
    student = load_student(models["student"])
    store = MemoryStore()
    parts = to_records(ordered[:5000])
    drive(lambda: Pipeline(student, store), store, parts, random.Random(2))
    snapshot = (dict(store.offsets), {k: dict(v) for k, v in store.states.items()}, store.all_alerts())
    # A restarted worker is handed everything again (offsets were never committed to Kafka).
    _, _, alerts = drive(lambda: Pipeline(student, store), store, parts, random.Random(3))
    assert alerts == []
    assert (store.offsets, store.states, store.all_alerts()) == snapshot


def test_bad_records_become_dead_letters_and_good_ones_still_score(models, ordered):
    student = load_student(models["student"])
    store = MemoryStore()
    pipe = Pipeline(student, store)
    good = [orjson.dumps(e) for e in ordered[:3]]
    values = [good[0], b"{not json", None, orjson.dumps({**ordered[1], "amount": -5}), good[1],
              b"\x00" * 70_000, good[2]]
    records = [Record(TOPIC, 0, i, v, b"k") for i, v in enumerate(values)]
    result = pipe.process(records)
    assert result.scored == 3 and result.last_offset == 6
    reasons = {d.offset: (d.reason, d.field) for d in result.dead}
    assert set(reasons) == {1, 2, 3, 5}
    assert "not valid JSON" in reasons[1][0]
    assert reasons[2][0] == "record has no value"
    assert reasons[3] == ("negative value -5.0", "amount")
    assert "exceeds" in reasons[5][0]
    assert [d.value for d in result.dead if d.offset == 1] == [b"{not json"]


def test_fence_rejects_a_stale_worker(models, ordered):
    student = load_student(models["student"])
    store = MemoryStore()
    parts = to_records(ordered[:2000])
    records = parts[0]
    old, new = Pipeline(student, store), Pipeline(student, store)
    stale = old.process(records[:10])  # computed, but the old worker stalls before writing
    fresh = new.process(records[:20])
    store.commit(fresh)
    with pytest.raises(FenceError):
        store.commit(stale)
    assert store.offsets[partition_key(TOPIC, 0)] == records[19].offset


def test_revoked_partition_reloads_from_store(models, ordered):
    student = load_student(models["student"])
    store = MemoryStore()
    records = to_records(ordered[:3000])[1]
    pipe = Pipeline(student, store)
    r1 = pipe.process(records[:100])
    store.commit(r1)
    pipe.committed(r1)
    pkey = partition_key(TOPIC, 1)
    pipe.revoke(pkey)
    store.states[pkey] = {}  # if the cache were still used, this would not matter
    store.offsets[pkey] = -1
    r2 = pipe.process(records[:100])
    assert r2.first_offset == -1 and r2.scored == 100


def test_recommitting_an_applied_batch_changes_nothing(models, ordered):
    """A write whose reply was lost is retried: the second commit is a no-op, not a fence."""
    student = load_student(models["student"])
    store = MemoryStore()
    records = to_records(ordered[:3000])[0]
    result = Pipeline(student, store).process(records[:200])
    first = store.commit(result)
    before = (dict(store.offsets), {k: dict(v) for k, v in store.states.items()}, store.all_alerts())
    assert store.commit(result) == []
    assert (store.offsets, store.states, store.all_alerts()) == before
    assert first == [a.event_id for a in result.alerts]
