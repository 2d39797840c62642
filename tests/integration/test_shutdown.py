"""A worker stops within TXWATCH_SHUTDOWN_TIMEOUT_S of SIGTERM, whether or not its broker
and Redis answer (each test has servers of its own to take away)."""

from __future__ import annotations

import signal
import time

import pytest

from stream.adapters.kafka import ensure_topics
from stream.runners.shutdown import EXIT_DEADLINE
from tests.integration.conftest import processed, produce_events, start_worker
from txwatch.local.embedded import EmbeddedKafka, EmbeddedRedis

pytestmark = [pytest.mark.integration, pytest.mark.reliability]

BOUND_S = 4.0


@pytest.fixture
def own_servers(settings, tmp_path):
    """The test's settings on a broker and a Redis of its own."""
    kafka = EmbeddedKafka(workdir=tmp_path / "kafka").start()
    red = EmbeddedRedis(workdir=tmp_path / "redis").start()
    s = settings.model_copy(update={"kafka_url": kafka.url, "redis_url": red.url, "shutdown_timeout_s": BOUND_S})
    ensure_topics(s)
    yield s, kafka, red
    kafka.close()
    red.close()


def _scoring_worker(s, runner, small_history, tmp_path):
    """A worker that has scored the first 3,000 events, and its log."""
    log_path = tmp_path / "worker.log"
    produce_events(s, small_history[:3000])
    worker = start_worker(s, runner, log_path)
    deadline = time.monotonic() + 90
    while processed(s) < 3000:
        assert worker.poll() is None and time.monotonic() < deadline, log_path.read_text()[-2000:]
        time.sleep(0.1)
    return worker, log_path


def _stop_within_bound(worker, log_path) -> tuple[int, float]:
    t0 = time.monotonic()
    worker.send_signal(signal.SIGTERM)
    try:
        code = worker.wait(BOUND_S + 6)  # the bound, plus the time to notice and exit
    except Exception:
        worker.kill()
        raise AssertionError(f"still running {BOUND_S + 6:.0f}s after SIGTERM:\n{log_path.read_text()[-2000:]}")
    return code, time.monotonic() - t0


@pytest.mark.parametrize("runner", ["faust", "plain"])
def test_sigterm_with_the_broker_gone_stops_within_the_bound(own_servers, small_history, tmp_path, runner):
    s, kafka, _ = own_servers
    worker, log_path = _scoring_worker(s, runner, small_history, tmp_path)
    kafka.kill()
    time.sleep(1.0)  # the worker notices: its fetches fail
    code, seconds = _stop_within_bound(worker, log_path)
    assert seconds <= BOUND_S + 6 and code in (0, EXIT_DEADLINE), (code, log_path.read_text()[-2000:])
    assert "SIGTERM: stopping" in log_path.read_text()


@pytest.mark.parametrize("runner", ["faust", "plain"])
def test_sigterm_with_redis_gone_mid_stream_stops_within_the_bound(own_servers, small_history, tmp_path, runner):
    s, _, red = own_servers
    worker, log_path = _scoring_worker(s, runner, small_history, tmp_path)
    red.kill()
    produce_events(s, small_history[3000:6000])  # a batch that cannot be written
    deadline = time.monotonic() + 30
    while "failed" not in log_path.read_text():  # the worker is retrying its Redis write
        assert time.monotonic() < deadline, log_path.read_text()[-2000:]
        time.sleep(0.2)
    code, seconds = _stop_within_bound(worker, log_path)
    log = log_path.read_text()
    assert code == EXIT_DEADLINE, (code, log[-2000:])  # it could not finish: the deadline ended it
    assert "did not stop within" in log
