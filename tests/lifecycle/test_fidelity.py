"""``txwatch fidelity`` as operators run it: a follower process that closes windows as the
clock passes them, keeps its cursor, and stops on SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid

import orjson
import pytest
import redis

from lifecycle.fidelity import cursor_key, latest
from stream.adapters.redis_store import RedisStore, StoreConfig
from stream.events.samples import Sample
from stream.scoring.student import load_student
from txwatch.local.embedded import EmbeddedRedis

pytestmark = pytest.mark.integration


def test_the_follower_closes_windows_as_time_passes_and_stops_on_sigterm(models, dataset, tmp_path):
    student = load_student(models["student"])
    prefix = f"ff{uuid.uuid4().hex[:8]}"
    with EmbeddedRedis() as server:
        client = redis.Redis.from_url(server.url)
        store = RedisStore(client, StoreConfig(prefix=prefix))
        env = dict(os.environ, TXWATCH_REDIS_URL=server.url, TXWATCH_REDIS_PREFIX=prefix,
                   TXWATCH_MODEL_DIR=str(models["student"]))
        proc = subprocess.Popen([sys.executable, "-m", "txwatch", "fidelity", "--window-s", "2", "--min-rows", "100"],
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            X = dataset.X[:3000]
            for i in range(0, 3000, 1000):     # three sends within one 2 s window
                rows = X[i:i + 1000]
                store.record_sample(Sample(student.version, int(time.time() * 1000), [f"e{j}" for j in range(i, i + 1000)],
                                           student.score(rows), rows))
            line = proc.stdout.readline()      # the window, once the clock passed its end (and a grace)
            window = orjson.loads(line)
            assert window["model_version"] == student.version and window["judged"] and window["alarms"] == []
            assert window["rows"] == 3000 or window["rows"] + _next_rows(proc) == 3000
            stored = [w["window_start_s"] for w in latest(client, prefix, student.version, 10)]
            assert window["window_start_s"] in stored
            assert client.get(cursor_key(prefix)) is not None
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=10) == 0, proc.stderr.read()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def _next_rows(proc) -> int:
    """The rows of the following window (the sends straddled a window edge)."""
    return orjson.loads(proc.stdout.readline())["rows"]


def test_the_follower_stops_on_sigterm_within_seconds_with_redis_gone(models, tmp_path):
    server = EmbeddedRedis().start()
    env = dict(os.environ, TXWATCH_REDIS_URL=server.url, TXWATCH_REDIS_PREFIX=f"fg{uuid.uuid4().hex[:8]}",
               TXWATCH_MODEL_DIR=str(models["student"]))
    proc = subprocess.Popen([sys.executable, "-m", "txwatch", "fidelity"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(3.0)                      # following the stream
        server.stop()
        time.sleep(8.0)                      # retrying with backoff (0.5, 1, 2, 4 s...)
        assert proc.poll() is None           # still following: an outage is waited out
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        assert time.monotonic() - t0 < 5.0
        assert "Redis unreachable" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        server.close()
