"""Events in through a real Kafka-protocol broker, alerts out in a real Redis."""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import subprocess
import sys
import time

import orjson
import pytest

from stream.runners.plain import run_plain
from tests.integration.conftest import (
    ROOT, alert_ids, consume_all, env_for, offline, processed, produce, produce_events, redis_for,
    start_worker, stored_states, wait_processed,
)

pytestmark = pytest.mark.integration

N = 12_000


@pytest.fixture(scope="module")
def stream_events(small_history):
    return small_history[:N]


def run_plain_until(s, n):
    async def main():
        stop = asyncio.Event()
        task = asyncio.create_task(run_plain(s, stop=stop))
        deadline = time.monotonic() + 120
        while processed(s) < n and time.monotonic() < deadline and not task.done():
            await asyncio.sleep(0.2)
        stop.set()
        return await task
    return asyncio.run(main())


def test_plain_runner_alerts_equal_offline_and_bad_records_are_dead_lettered(settings, models, stream_events):
    bad = [b"{oops", orjson.dumps({**stream_events[0], "event_id": "bad-1", "usd_value": "12"}),
           b"x" * 70_000, b"[]"]
    produce_events(settings, stream_events)
    produce(settings, bad, [b"acct-bad"] * len(bad))
    core = run_plain_until(settings, N + len(bad))
    expected, states = offline(models, stream_events)
    got = alert_ids(settings)
    assert len(got) == len(set(got)) and set(got) == expected and expected
    assert stored_states(settings) == states  # every account's state, byte for byte
    m = core.metrics
    assert m.value(m.events, outcome="dead") == len(bad)
    dead = consume_all(settings, settings.dead_letter_topic, len(bad))
    assert sorted(d.value for d in dead) == sorted(bad)
    reasons = {dict(d.headers)["txwatch-reason"].decode() for d in dead}
    assert any("not valid JSON" in r for r in reasons)
    assert "expected number, got str" in reasons
    assert any("exceeds" in r for r in reasons)
    kafka_alerts = consume_all(settings, settings.alerts_topic, len(expected))
    assert {orjson.loads(a.value)["event_id"] for a in kafka_alerts} == expected
    one = redis_for(settings).hgetall(
        f"{settings.redis_prefix}:{{{kafka_alerts[0].topic.replace('alerts', 'events')}:0}}:alert:x")
    assert one == {}  # (sanity: unknown ids have no hash)


def test_replays_create_no_second_alert_and_change_no_state(settings, models, stream_events):
    part = stream_events[:4000]
    produce_events(settings, part)
    run_plain_until(settings, len(part))
    first_alerts, first_states = sorted(alert_ids(settings)), stored_states(settings)
    assert first_alerts
    # 1) The same offsets again: a new consumer group starts from the beginning.
    s2 = settings.model_copy(update={"group_id": settings.group_id + "-again"})
    core = run_plain_until(s2, len(part))
    deadline = time.monotonic() + 30
    while core.metrics.value(core.metrics.events, outcome="skipped") < len(part) and time.monotonic() < deadline:
        core = run_plain_until(s2, len(part))
    assert sorted(alert_ids(settings)) == first_alerts
    assert stored_states(settings) == first_states
    # 2) Duplicate deliveries (each account's last 5 events published again, at new
    #    offsets, like producer retries) are recognised: no alert, no state change.
    by_account: dict[str, list[dict]] = {}
    for e in part:
        by_account.setdefault(e["account_id"], []).append(e)
    again = sorted((e for evs in by_account.values() for e in evs[-5:]), key=lambda e: e["ts"])
    produce_events(settings, again)
    core = run_plain_until(settings, len(part) + len(again))
    assert core.metrics.value(core.metrics.events, outcome="duplicate") == len(again)
    assert sorted(alert_ids(settings)) == first_alerts
    assert stored_states(settings) == first_states
    c = redis_for(settings)
    stream_len = sum(c.xlen(f"{settings.redis_prefix}:{{{settings.topics[0]}:{p}}}:alerts")
                     for p in range(settings.partitions))
    assert stream_len == len(first_alerts)


def test_faust_worker_scores_and_hot_reloads(settings, models, stream_events, tmp_path):
    part = stream_events[:6000]
    produce_events(settings, part)
    worker = start_worker(settings, "faust", tmp_path / "worker.log")
    try:
        wait_processed(settings, len(part), proc=worker)
        expected, _ = offline(models, part)
        assert set(alert_ids(settings)) == expected
        # New model published through the Redis pointer: later alerts carry its version.
        new = tmp_path / "student-v2"
        shutil.copytree(models["student"], new)
        m = json.loads((new / "manifest.json").read_text())
        m["model_version"] = "student-hot-v2"
        (new / "manifest.json").write_text(json.dumps(m))
        c = redis_for(settings)
        c.set(f"{settings.redis_prefix}:model:dir", str(new))
        time.sleep(2.0)
        later = stream_events[6000:9000]
        produce_events(settings, later)
        wait_processed(settings, 9000, proc=worker)
        versions = {}
        for p in range(settings.partitions):
            for eid in c.zrange(f"{settings.redis_prefix}:{{{settings.topics[0]}:{p}}}:alerts:by_time", 0, -1):
                h = c.hgetall(f"{settings.redis_prefix}:{{{settings.topics[0]}:{p}}}:alert:{eid.decode()}")
                versions[eid.decode()] = h[b"model_version"].decode()
        later_ids = {e["event_id"] for e in later}
        assert {v for k, v in versions.items() if k in later_ids} == {"student-hot-v2"}
        # A broken model is refused; the worker keeps serving with v2.
        broken = tmp_path / "broken"
        shutil.copytree(new, broken)
        (broken / "student.json").write_bytes(b"{}")
        c.set(f"{settings.redis_prefix}:model:dir", str(broken))
        time.sleep(2.0)
        produce_events(settings, stream_events[9000:10000])
        wait_processed(settings, 10000, proc=worker)
        assert worker.poll() is None
        log = (tmp_path / "worker.log").read_text()
        assert "model reload refused" in log and "sha256 mismatch" in log
        assert "model reloaded: student-hot-v2" in log  # INFO lines reach the log under faust
        assert "events=" in log and "alerts=" in log  # the periodic one-line progress log
    finally:
        worker.terminate()
        worker.wait(20)


def test_killed_worker_restarts_to_the_same_states_and_alerts(settings, models, small_history, tmp_path):
    events = small_history
    n = len(events)
    produce_events(settings, events)
    worker = start_worker(settings, "plain", tmp_path / "w1.log")
    try:
        deadline = time.monotonic() + 120
        while processed(settings) < 2_000 and time.monotonic() < deadline and worker.poll() is None:
            time.sleep(0.02)
    finally:
        worker.send_signal(signal.SIGKILL)
        worker.wait()
    assert 0 < processed(settings) < n  # killed mid-stream
    worker = start_worker(settings, "plain", tmp_path / "w2.log")
    try:
        wait_processed(settings, n, proc=worker)
    finally:
        worker.terminate()
        worker.wait(20)
    expected, states = offline(models, events)
    got = alert_ids(settings)
    assert len(got) == len(set(got)) and set(got) == expected
    assert stored_states(settings) == states


def test_unreachable_redis_is_one_clear_error(settings, tmp_path):
    env = env_for(settings, TXWATCH_REDIS_URL="redis://127.0.0.1:1/0")
    done = subprocess.run([sys.executable, "-m", "txwatch", "worker", "--runner", "plain"], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "cannot reach Redis at redis://127.0.0.1:1/0" in done.stderr
    assert "Traceback" not in done.stderr


def test_repartition_keys_by_account_and_dead_letters_the_rest(settings, models, stream_events):
    from kafka.admin import KafkaAdminClient, NewTopic

    from stream.tools.repartition import run_repartition

    source = settings.topics[0] + "-unkeyed"
    admin = KafkaAdminClient(bootstrap_servers=settings.bootstrap_servers)
    admin.create_topics([NewTopic(source, 1, 1)])  # one partition: the source order is the order
    admin.close()
    part = stream_events[:3000]
    from kafka import KafkaProducer
    producer = KafkaProducer(bootstrap_servers=settings.bootstrap_servers)
    for i, e in enumerate(part):  # keyed by something else: round-robin by event index
        producer.send(source, value=orjson.dumps(e), key=str(i % 7).encode())
    producer.send(source, value=b'{"no_account": 1}', key=b"x")
    producer.flush()
    producer.close()

    async def main():
        stop = asyncio.Event()
        rep = asyncio.create_task(run_repartition(settings, source, settings.topics[0], stop=stop))
        deadline = time.monotonic() + 60
        while processed(settings) < len(part) and time.monotonic() < deadline:
            if not hasattr(main, "worker"):
                main.worker = asyncio.create_task(run_plain(settings, stop=stop))
            await asyncio.sleep(0.2)
        stop.set()
        await main.worker
        return await rep

    counts = asyncio.run(main())
    assert counts == {"routed": len(part), "dead": 1}
    expected, states = offline(models, part)
    assert set(alert_ids(settings)) == expected
    assert stored_states(settings) == states
    dead = consume_all(settings, settings.dead_letter_topic, 1)
    assert [dict(d.headers)["txwatch-reason"] for d in dead] == [b"account_id: missing or not a string"]
