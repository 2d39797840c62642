"""Reliability: a faust worker SIGKILLed in the middle of a 120k-event stream and restarted.

Every event must be scored (each partition's applied offset reaches its end), Redis must
hold no duplicate alert, and the account states and alerts must equal an uninterrupted
run's (offline scoring of the same events; the integration tests show a plain run equals
it). Kafka's ``alerts`` topic is at-least-once: every alert is there, possibly twice.
"""

from __future__ import annotations

import signal
import time

import orjson
import pytest

from tests.integration.conftest import (
    alert_ids, consume_all, offline, processed, produce_events, redis_for, start_worker, stored_states,
    wait_processed,
)
from training.simulate import simulate

pytestmark = [pytest.mark.integration, pytest.mark.reliability]

CRASH = {"n_events": 120_000, "n_accounts": 1_200, "days": 20, "seed": 12}


def test_kill_9_mid_stream_then_restart_equals_an_uninterrupted_run(settings, models, tmp_path):
    events = sorted(simulate(**CRASH), key=lambda e: e["ts"])
    n = len(events)
    assert n >= 100_000
    produce_events(settings, events)
    worker = start_worker(settings, "faust", tmp_path / "w1.log")
    try:
        deadline = time.monotonic() + 180
        while processed(settings) < n // 3:
            assert worker.poll() is None and time.monotonic() < deadline, "worker did not get going"
            time.sleep(0.02)
    finally:
        worker.send_signal(signal.SIGKILL)
        worker.wait()
    at_kill = processed(settings)
    assert n // 3 <= at_kill < n, "not killed mid-stream"
    worker = start_worker(settings, "faust", tmp_path / "w2.log")
    try:
        wait_processed(settings, n, timeout=300, proc=worker)
    finally:
        worker.terminate()
        worker.wait(30)
    expected, states = offline(models, events)
    got = alert_ids(settings)
    assert len(got) == len(set(got)), "Redis holds a duplicate alert"
    assert set(got) == expected and expected
    assert stored_states(settings) == states
    published = {orjson.loads(m.value)["event_id"] for m in consume_all(settings, settings.alerts_topic, len(expected))}
    assert published >= expected


@pytest.mark.parametrize("runner", ["faust", "plain"])
def test_a_crash_between_the_redis_commit_and_the_publish_loses_no_kafka_alert(settings, models, small_history,
                                                                                tmp_path, runner):
    """The worker dies right after a Redis commit, before publishing that batch (a
    failpoint); its replacement publishes what the outbox holds: every alert stored in Redis
    exactly once is on the Kafka alerts topic at least once."""
    events = small_history[:20_000]
    produce_events(settings, events)
    worker = start_worker(settings, runner, tmp_path / "w1.log", TXWATCH_FAILPOINT="exit-after-redis-commit:3")
    assert worker.wait(180) == 86, (tmp_path / "w1.log").read_text()[-2000:]
    at_crash = processed(settings)
    assert 0 < at_crash < len(events), "not stopped mid-stream"
    c = redis_for(settings)
    left = sum(c.hlen(f"{settings.redis_prefix}:{{{settings.topics[0]}:{p}}}:outbox") for p in range(settings.partitions))
    assert left > 0, "the crash left nothing unpublished: the window was not hit"
    worker = start_worker(settings, runner, tmp_path / "w2.log")
    try:
        wait_processed(settings, len(events), timeout=180, proc=worker)
        expected, _ = offline(models, events)
        got = alert_ids(settings)
        assert len(got) == len(set(got)) and set(got) == expected and expected
        # Read the whole topic (it holds duplicates: at-least-once), not just as many records.
        published = {orjson.loads(m.value)["event_id"]
                     for m in consume_all(settings, settings.alerts_topic, 10 ** 9, timeout=15)}
        left_after = sum(c.hlen(f"{settings.redis_prefix}:{{{settings.topics[0]}:{p}}}:outbox")
                         for p in range(settings.partitions))
        assert published >= expected, (len(expected - published), len(expected), left_after, at_crash)
    finally:
        worker.terminate()
        worker.wait(30)
    assert "committed but did not publish" in (tmp_path / "w2.log").read_text()
