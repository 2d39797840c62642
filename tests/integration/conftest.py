"""Real servers for integration tests: Tansu (Kafka protocol) and redis-server, on free ports.

Each test gets its own topics, consumer group and Redis key prefix, so tests never see
each other's data (and never touch keys they did not create).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import orjson
import pytest
import redis

from stream.adapters.kafka import ensure_topics
from stream.events.schema import event_from_dict
from stream.features.reference import FeatureEngine
from stream.scoring.student import load_student
from stream.settings import Settings, load_settings
from txwatch.local.embedded import EmbeddedKafka, EmbeddedRedis, die_with_parent

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def kafka():
    with EmbeddedKafka() as k:
        yield k


@pytest.fixture(scope="session")
def redis_server():
    with EmbeddedRedis() as r:
        yield r


@pytest.fixture
def settings(kafka, redis_server, models) -> Settings:
    tag = uuid.uuid4().hex[:8]
    s = load_settings(
        kafka_url=kafka.url, redis_url=redis_server.url, input_topics=f"events-{tag}",
        dead_letter_topic=f"dlq-{tag}", alerts_topic=f"alerts-{tag}", group_id=f"g-{tag}",
        redis_prefix=f"t{tag}", partitions=3, model_dir=str(models["student"]), metrics_port=0,
        session_timeout_s=6, rebalance_timeout_s=6, model_poll_s=0.5, log_interval_s=1,
    )
    ensure_topics(s)
    return s


def env_for(s: Settings, **extra) -> dict:
    """The environment a worker subprocess reads these settings from."""
    return dict(os.environ) | s.to_env() | {k: str(v) for k, v in extra.items()}


def start_worker(s: Settings, runner: str, log_path: Path, **extra) -> subprocess.Popen:
    """``txwatch worker`` as a separate process, as users run it."""
    return subprocess.Popen([sys.executable, "-m", "txwatch", "worker", "--runner", runner],
                            env=env_for(s, **extra), cwd=ROOT, stdout=open(log_path, "wb"),
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            preexec_fn=die_with_parent)  # a killed test run leaves no worker behind


def stop_worker(worker: subprocess.Popen) -> None:
    """SIGTERM, as an orchestrator stops a worker; SIGKILL if it is still up 30 s later."""
    if worker.poll() is None:
        worker.terminate()
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()


def produce(s: Settings, payloads: list[bytes], keys: list[bytes | None] | None = None) -> None:
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=s.bootstrap_servers, acks=1, linger_ms=5,
                             max_request_size=4 * 1024 * 1024)
    keys = keys or [None] * len(payloads)
    for value, key in zip(payloads, keys):
        producer.send(s.topics[0], value=value, key=key)
    producer.flush()
    producer.close()


def produce_events(s: Settings, events: list[dict]) -> None:
    produce(s, [orjson.dumps(e) for e in events], [e["account_id"].encode() for e in events])


def consume_all(s: Settings, topic: str, expected: int, timeout: float = 30.0) -> list:
    """Every record of ``topic`` (kafka-python with assign(); its groups do not work on Tansu)."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=s.bootstrap_servers, auto_offset_reset="earliest",
                             enable_auto_commit=False, consumer_timeout_ms=1000)
    tps = [TopicPartition(topic, p) for p in range(s.partitions)]
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    out = []
    deadline = time.monotonic() + timeout
    while len(out) < expected and time.monotonic() < deadline:
        for msg in consumer:
            out.append(msg)
    consumer.close()
    return out


def redis_for(s: Settings) -> redis.Redis:
    return redis.Redis.from_url(s.redis_url)


def processed(s: Settings) -> int:
    c = redis_for(s)
    total = 0
    for p in range(s.partitions):
        raw = c.get(f"{s.redis_prefix}:{{{s.topics[0]}:{p}}}:offset")
        total += 0 if raw is None else int(raw) + 1
    return total


def wait_processed(s: Settings, n: int, timeout: float = 120.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while processed(s) < n:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"worker exited with {proc.returncode}")
        if time.monotonic() > deadline:
            raise AssertionError(f"only {processed(s)} of {n} records processed")
        time.sleep(0.2)


def alert_ids(s: Settings) -> list[str]:
    c = redis_for(s)
    ids = []
    for p in range(s.partitions):
        ids += [e.decode() for e in c.zrange(f"{s.redis_prefix}:{{{s.topics[0]}:{p}}}:alerts:by_time", 0, -1)]
    return ids


def stored_states(s: Settings) -> dict[str, bytes]:
    c = redis_for(s)
    out = {}
    for p in range(s.partitions):
        out.update({k.decode(): v for k, v in c.hgetall(f"{s.redis_prefix}:{{{s.topics[0]}:{p}}}:state").items()})
    return out


def offline(models, events: list[dict]) -> tuple[set[str], dict[str, bytes]]:
    """Expected alert ids and final account states, computed without Kafka or Redis."""
    student = load_student(models["student"])
    engine = FeatureEngine()
    evs = [event_from_dict(e) for e in events]
    scores = student.score(engine.replay(evs))
    alerts = {e.event_id for e, p in zip(evs, scores) if p >= student.threshold}
    return alerts, {k: v.to_bytes() for k, v in engine.states.items()}
