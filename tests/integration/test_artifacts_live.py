"""Reliability: bad model artifacts pushed to a running faust worker are refused.

Each bad artifact is published through the Redis model pointer while the worker scores;
the worker must log the refusal with its reason, keep serving the model it has (every
alert carries the original version), and stay up.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import shutil
import time

import pytest

from stream.scoring.artifact import MANIFEST
from tests.integration.conftest import (
    alert_ids, offline, produce_events, redis_for, start_worker, wait_processed,
)

pytestmark = [pytest.mark.integration, pytest.mark.reliability]


def _bad_artifacts(good, root):
    """``(name, directory, expected log text)`` for each way an artifact can be bad."""
    def copy(name):
        d = root / name
        shutil.copytree(good, d)
        return d, json.loads((d / MANIFEST).read_text())

    out = []
    d, m = copy("tampered")
    blob = (d / "student.json").read_bytes()
    (d / "student.json").write_bytes(blob.replace(b"0", b"1", 1))
    out.append(("tampered", d, "sha256 mismatch"))
    d, m = copy("schema")
    m["feature_schema_hash"] = "0" * 64
    (d / MANIFEST).write_text(json.dumps(m))
    out.append(("wrong feature schema", d, "feature schema"))
    d, m = copy("traversal")
    m["files"]["../../etc/passwd"] = "0" * 64
    (d / MANIFEST).write_text(json.dumps(m))
    out.append(("path traversal", d, "unsafe file name"))
    d, m = copy("pickle")
    evil = pickle.dumps({"__reduce__": "os.system"})
    (d / "student.json").write_bytes(evil)
    m["files"]["student.json"] = hashlib.sha256(evil).hexdigest()  # a consistent manifest
    (d / MANIFEST).write_text(json.dumps(m))
    out.append(("pickled content", d, "pickled"))
    return out


def test_running_worker_refuses_bad_artifacts_and_keeps_its_model(settings, models, small_history, tmp_path):
    events = small_history[:10_000]
    bad = _bad_artifacts(models["student"], tmp_path)
    chunks = [events[i * 2000:(i + 1) * 2000] for i in range(len(bad) + 1)]
    log_path = tmp_path / "worker.log"
    produce_events(settings, chunks[0])
    worker = start_worker(settings, "faust", log_path)
    client = redis_for(settings)
    try:
        wait_processed(settings, 2000, proc=worker)
        version = json.loads((models["student"] / MANIFEST).read_text())["model_version"]
        for i, (what, directory, reason) in enumerate(bad, start=1):
            client.set(f"{settings.redis_prefix}:model:dir", str(directory))
            deadline = time.monotonic() + 30
            while log_path.read_text().count("model reload refused") < i:
                assert time.monotonic() < deadline, f"{what}: no refusal logged"
                time.sleep(0.2)
            assert reason in log_path.read_text().split("model reload refused")[-1].splitlines()[0], what
            produce_events(settings, chunks[i])
            wait_processed(settings, 2000 * (i + 1), proc=worker)
        assert worker.poll() is None
    finally:
        worker.terminate()
        worker.wait(30)
    expected, _ = offline(models, events)
    got = alert_ids(settings)
    assert set(got) == expected and expected
    p = settings.topics[0]
    versions = set()
    for part in range(settings.partitions):
        for eid in client.zrange(f"{settings.redis_prefix}:{{{p}:{part}}}:alerts:by_time", 0, -1):
            versions.add(client.hget(f"{settings.redis_prefix}:{{{p}:{part}}}:alert:{eid.decode()}",
                                     "model_version").decode())
    assert versions == {version}
    assert "model reloaded" not in log_path.read_text()
