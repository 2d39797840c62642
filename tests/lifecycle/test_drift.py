"""Drift end to end: events through the worker core into Redis windows, then ``txwatch drift``.

The reference profile is the training period of the session's small history. Traffic without
drift is that period's events delivered again to a fresh worker: the alarm stays off. Traffic
with drift is the same events with every amount five times larger and the anomaly scenarios'
events repeated (a shifted amount distribution and a new scenario mix): the alarm fires, on the
amount features. (A new simulation with another seed is not a no-drift control here: its asset
prices take another path, and the 24-hour USD volume's PSI reaches 0.26, which is what the
monitor should report when the market moves.)
"""

from __future__ import annotations

import asyncio
import uuid

import orjson
import pytest

from stream.adapters.redis_store import RedisStore, StoreConfig
from stream.core.ports import Record
from stream.core.worker import WorkerCore
from stream.metrics import WorkerMetrics
from stream.scoring.profile import load_profile
from stream.scoring.student import load_student
from stream.settings import load_settings
from txwatch.cli import main
from txwatch.local.embedded import EmbeddedRedis

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def redis_server():
    with EmbeddedRedis() as server:
        yield server


@pytest.fixture(scope="module")
def traffic(small_events):
    """The training period's deliveries (the earliest 60 % of the fixture's 20 days)."""
    start = min(e["ts"] for e in small_events)
    return [e for e in small_events if e["ts"] < start + 12 * 86_400_000]


def _drifted(events):
    out = []
    for e in events:
        e = dict(e, usd_value=e["usd_value"] * 5.0, amount=e["amount"] * 5.0)
        out.append(e)
        if e.get("label") == 1:     # the anomaly scenarios, twice as often
            out.append(dict(e, event_id=e["event_id"] + "-again", ts=e["ts"] + 1))
    return out


class Watcher:
    def __init__(self, profile) -> None:
        self.profile = profile

    def poll(self):
        return None


def _run_worker(models, redis_url: str, prefix: str, events) -> None:
    """The worker core on a real Redis (states, alerts and drift windows), with every event."""
    import redis

    store = RedisStore(redis.Redis.from_url(redis_url), StoreConfig(prefix=prefix))
    settings = load_settings(model_dir=str(models["student"]), redis_prefix=prefix, drift_window_s=3600)

    async def publish(topic, items):
        return None

    core = WorkerCore(settings, store, load_student(models["student"]), publish, WorkerMetrics(),
                      Watcher(load_profile(models["student"])), monitor=store)
    recs = [Record("events", 0, i, orjson.dumps(e), e["account_id"].encode(), None) for i, e in enumerate(events)]

    async def go():
        for i in range(0, len(recs), 2000):
            await core.handle(recs[i:i + 2000])
    asyncio.run(go())
    core._flush_monitor(force=True)


def _drift_cli(models, redis_url: str, prefix: str, monkeypatch, capsys) -> tuple[int, dict]:
    monkeypatch.setenv("TXWATCH_REDIS_URL", redis_url)
    monkeypatch.setenv("TXWATCH_REDIS_PREFIX", prefix)
    monkeypatch.setenv("TXWATCH_MODEL_DIR", str(models["student"]))
    rc = main(["drift", "--minutes", "120"])
    return rc, orjson.loads(capsys.readouterr().out)


def test_no_drift_no_alarm(models, redis_server, traffic, monkeypatch, capsys):
    prefix = f"d{uuid.uuid4().hex[:8]}"
    _run_worker(models, redis_server.url, prefix, traffic)
    rc, rep = _drift_cli(models, redis_server.url, prefix, monkeypatch, capsys)
    assert rep["rows"] > 30_000 and rep["verdict"] == "stable", (rep["alarms"], rep["top_features"], rep["score_psi"])
    assert rc == 0 and rep["score_psi"] < 0.1


def test_shifted_amounts_and_scenario_mix_raise_the_alarm(models, redis_server, traffic, monkeypatch, capsys,
                                                          tmp_path):
    prefix = f"d{uuid.uuid4().hex[:8]}"
    _run_worker(models, redis_server.url, prefix, _drifted(traffic))
    rc, rep = _drift_cli(models, redis_server.url, prefix, monkeypatch, capsys)
    assert rc == 1 and rep["verdict"] == "drift"
    assert rep["features"]["log_usd"]["psi"] > 0.25
    assert any(a.startswith("feature log_usd:") for a in rep["alarms"])
    # The Markdown report with its plots.
    monkeypatch.setenv("TXWATCH_REDIS_PREFIX", prefix)
    assert main(["drift", "--minutes", "120", "--report", str(tmp_path / "report")]) == 1
    capsys.readouterr()
    text = (tmp_path / "report" / "report.md").read_text()
    assert "Verdict: **drift**" in text and (tmp_path / "report" / "score.png").stat().st_size > 1000


def test_a_model_without_a_profile_is_a_clear_error(models, redis_server, tmp_path, monkeypatch, capsys):
    import shutil

    from stream.scoring.artifact import read_artifact, write_artifact

    old = tmp_path / "old"
    shutil.copytree(models["student"], old)
    manifest, files = read_artifact(old, kind="student")
    files.pop("profile.json")
    manifest = {k: v for k, v in manifest.items() if k not in ("files", "profile")}
    shutil.rmtree(old)
    write_artifact(old, files, manifest)
    monkeypatch.setenv("TXWATCH_REDIS_URL", redis_server.url)
    monkeypatch.setenv("TXWATCH_MODEL_DIR", str(old))
    assert main(["drift"]) == 2
    assert "no reference profile" in capsys.readouterr().err
