"""Reliability: Redis and the broker go away mid-stream; nothing is lost or duplicated.

* Redis outage: a durable redis-server (append-only file, fsync per write) is SIGKILLed
  for 12 s while a worker runs. The worker must retry with backoff, must not commit Kafka
  offsets past batches that are not in Redis, and must finish with exactly the states and
  alerts of an uninterrupted run once Redis is back.
* Broker restart: Tansu with its storage in an S3 object store (moto's S3 server on
  loopback) is stopped and restarted mid-stream; the worker reconnects by itself.
"""

from __future__ import annotations

import subprocess
import sys
import time

import boto3
import pytest
import redis
from kafka.admin import KafkaAdminClient

from stream.adapters.kafka import ensure_topics
from tests.integration.conftest import (
    alert_ids, consume_all, offline, processed, produce_events, start_worker, stop_worker, stored_states,
    wait_processed,
)
from txwatch.local.embedded import EmbeddedKafka, EmbeddedRedis, wait_for_port, free_port

pytestmark = [pytest.mark.integration, pytest.mark.reliability]

OUTAGE_S = 12.0


@pytest.fixture(scope="module")
def outage_events(small_history):
    return small_history[:40_000]


def committed_offsets(s) -> dict[int, int]:
    """The consumer group's committed Kafka offsets (next offset to read), by partition."""
    admin = KafkaAdminClient(bootstrap_servers=s.bootstrap_servers, request_timeout_ms=5000)
    try:
        got = admin.list_group_offsets(s.group_id).get(s.group_id, {})
    finally:
        admin.close()
    return {tp.partition: om.offset for tp, om in got.items() if tp.topic == s.topics[0] and om.offset >= 0}


def redis_offsets(client: redis.Redis, s) -> dict[int, int]:
    out = {}
    for p in range(s.partitions):
        raw = client.get(f"{s.redis_prefix}:{{{s.topics[0]}:{p}}}:offset")
        out[p] = -1 if raw is None else int(raw)
    return out


def assert_same_as_uninterrupted(s, models, events):
    expected, states = offline(models, events)
    got = alert_ids(s)
    assert len(got) == len(set(got)), "an alert was written twice"
    assert set(got) == expected
    assert stored_states(s) == states


@pytest.mark.parametrize("runner", ["faust", "plain"])
def test_redis_outage_loses_and_duplicates_nothing(settings, models, outage_events, tmp_path, runner):
    durable = EmbeddedRedis(workdir=tmp_path / "redis", durable=True).start()
    s = settings.model_copy(update={"redis_url": durable.url, "retry_max_s": 2.0})
    first, second = outage_events[:20_000], outage_events[20_000:]
    log_path = tmp_path / "worker.log"
    produce_events(s, first)
    worker = start_worker(s, runner, log_path)
    try:
        deadline = time.monotonic() + 120
        while processed(s) < 4_000 or not committed_offsets(s):  # scoring, and Kafka offsets committed
            assert worker.poll() is None and time.monotonic() < deadline, "worker did not start scoring"
            time.sleep(0.05)
        durable.kill()  # SIGKILL mid-stream; every acknowledged write is in the AOF
        down_at = time.monotonic()
        produce_events(s, second)  # the stream keeps coming while Redis is down
        committed_during: dict[int, int] = {}
        while time.monotonic() - down_at < OUTAGE_S:
            assert worker.poll() is None, "the worker exited during the outage"
            for p, off in committed_offsets(s).items():
                committed_during[p] = max(off, committed_during.get(p, -1))
            time.sleep(1.0)
        # What Redis held when it died: read its files on another port, out of the worker's reach.
        peek = EmbeddedRedis(workdir=tmp_path / "redis", durable=True).start()
        at_death = redis_offsets(redis.Redis.from_url(peek.url), s)
        peek.stop()
        assert sum(o + 1 for o in at_death.values()) < len(outage_events)  # it died mid-stream
        assert committed_during, "no committed offsets to check"
        for p, off in committed_during.items():
            assert off <= at_death[p] + 1, f"partition {p}: Kafka offset {off} committed past Redis ({at_death[p]})"
        durable.start()  # same port, same files
        wait_processed(s, len(outage_events), timeout=120, proc=worker)
    finally:
        stop_worker(worker)
    log = log_path.read_text()
    assert "writing the batch to Redis failed" in log or "reading states failed" in log  # it retried
    assert_same_as_uninterrupted(s, models, outage_events)
    durable.close()


@pytest.fixture
def s3_server(tmp_path):
    """moto's S3 server on a loopback port, with a bucket for Tansu."""
    port = free_port()
    log = tmp_path / "moto.log"
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=open(log, "wb"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        wait_for_port(port, proc, "moto S3", log, 30)
        endpoint = f"http://127.0.0.1:{port}"
        creds = {"AWS_ACCESS_KEY_ID": "txwatch-test", "AWS_SECRET_ACCESS_KEY": "txwatch-test",
                 "AWS_DEFAULT_REGION": "us-east-1"}
        boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=creds["AWS_ACCESS_KEY_ID"],
                     aws_secret_access_key=creds["AWS_SECRET_ACCESS_KEY"],
                     region_name=creds["AWS_DEFAULT_REGION"]).create_bucket(Bucket="tansu")
        yield creds | {"AWS_ENDPOINT": endpoint, "AWS_ALLOW_HTTP": "true"}
    finally:
        proc.terminate()
        proc.wait(10)


def test_broker_restart_with_durable_storage_loses_nothing(settings, models, outage_events, s3_server, tmp_path):
    broker = EmbeddedKafka(workdir=tmp_path / "kafka", storage="s3://tansu/", env=s3_server).start()
    # On S3 storage a fetch needs object listings; with a 5 ms wait Tansu answers every fetch
    # empty (measured: nothing in 60 s), with 500 ms it streams normally.
    s = settings.model_copy(update={"kafka_url": broker.url, "fetch_max_wait_ms": 500})
    ensure_topics(s)
    events = outage_events
    first, second = events[:30_000], events[30_000:]
    produce_events(s, first)
    log_path = tmp_path / "worker.log"
    worker = start_worker(s, "faust", log_path)
    try:
        deadline = time.monotonic() + 120
        while processed(s) < 3_000:
            assert worker.poll() is None and time.monotonic() < deadline, "worker did not start scoring"
            time.sleep(0.05)
        broker.stop()  # while the worker is scoring (it may still finish records it fetched)
        time.sleep(5.0)
        assert worker.poll() is None, "the worker exited while the broker was down"
        broker.start()  # same port, same storage
        # The storage survived: every record produced before the stop is still there.
        assert len(consume_all(s, s.topics[0], len(first), timeout=60)) == len(first)
        produce_events(s, second)
        wait_processed(s, len(events), timeout=180, proc=worker)
    finally:
        stop_worker(worker)
        broker.close()
    assert_same_as_uninterrupted(s, models, events)
