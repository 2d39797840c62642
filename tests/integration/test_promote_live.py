"""Promotion and rollback on a running worker: the served model changes between batches,
with no event lost and none scored twice.

A worker (plain runner) serves student A. Events go in; ``txwatch promote`` switches to
student B (distilled from the same teacher with another leaf budget); more events; ``txwatch
promote --rollback`` returns to A; more events. Every event is applied once (the stored
offsets count them), every alert is in Redis once, and each phase's alerts name the model
that was served while they were scored.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import redis

from tests.integration.conftest import alert_ids, produce_events, redis_for, start_worker, wait_processed
from training.distill import distill
from training.teacher import load_teacher
from txwatch.cli import main

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def student_b(models, dataset, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("b") / "student"
    distill(dataset, load_teacher(models["teacher"]), out, leaf_budget=0.08, family="trees", log=lambda m: None)
    return out


def _versions(s, ids) -> dict[str, str]:
    """event id -> the model version its alert names."""
    c = redis_for(s)
    out = {}
    for p in range(s.partitions):
        for eid in ids:
            v = c.hget(f"{s.redis_prefix}:{{{s.topics[0]}:{p}}}:alert:{eid}", "model_version")
            if v is not None:
                out[eid] = v.decode()
    return out


def _served_version(s, proc, want: str, timeout: float = 30.0) -> None:
    """Wait until the worker logs that it serves ``want`` (it checks every model_poll_s)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if want in proc.log_path.read_text(errors="replace"):
            return
        assert proc.poll() is None, "the worker exited"
        time.sleep(0.2)
    raise AssertionError(f"the worker did not switch to {want}")


def test_promote_then_rollback_on_a_running_worker(settings, models, student_b, events_file, small_events, tmp_path,
                                                   monkeypatch, capsys):
    from stream.scoring.student import load_student

    version_a = load_student(models["student"]).version
    version_b = load_student(student_b).version
    assert version_a != version_b
    monkeypatch.setenv("TXWATCH_REDIS_URL", settings.redis_url)
    monkeypatch.setenv("TXWATCH_REDIS_PREFIX", settings.redis_prefix)
    monkeypatch.setenv("TXWATCH_MODEL_DIR", settings.model_dir)
    log_path = tmp_path / "worker.log"
    worker = start_worker(settings, "plain", log_path, TXWATCH_LOG_LEVEL="INFO")
    worker.log_path = log_path
    phases = [small_events[:8000], small_events[8000:16000], small_events[16000:24000]]
    try:
        produce_events(settings, phases[0])
        wait_processed(settings, 8000, proc=worker)

        assert main(["promote", str(student_b), "--events", str(events_file), "--period", "all",
                     "--why", "try B"]) == 0
        assert json.loads(capsys.readouterr().out)["to"]["version"] == version_b
        _served_version(settings, worker, f"model reloaded: {version_b}")
        produce_events(settings, phases[1])
        wait_processed(settings, 16000, proc=worker)

        assert main(["promote", "--rollback", "--why", "back to A"]) == 0
        assert json.loads(capsys.readouterr().out)["to"]["version"] == version_a
        _served_version(settings, worker, f"model reloaded: {version_a}")
        produce_events(settings, phases[2])
        wait_processed(settings, 24000, proc=worker)
    finally:
        worker.terminate()
        worker.wait(30)

    ids = alert_ids(settings)
    assert len(ids) == len(set(ids)) > 0                         # every alert once
    c: redis.Redis = redis_for(settings)
    applied = sum(int(c.get(f"{settings.redis_prefix}:{{{settings.topics[0]}:{p}}}:offset") or -1) + 1
                  for p in range(settings.partitions))
    assert applied == 24000                                      # every event applied once, none lost
    seen: set[str] = set()
    for phase, want in zip(phases, (version_a, version_b, version_a)):
        first = [e["event_id"] for e in phase if e["event_id"] not in seen]   # a re-delivery is not re-scored
        seen.update(first)
        names = set(_versions(settings, first).values())
        assert names == {want}, (want, names)
