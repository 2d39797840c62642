"""Drift and live fidelity end to end: events through the worker core into Redis (drift windows
and the fidelity sample), then ``txwatch drift`` and ``txwatch fidelity``.

The reference profile is the training period of the session's small history. Traffic without
drift is that period's events delivered again to a fresh worker: the alarm stays off. Traffic
with drift is the same events with every amount five times larger and the anomaly scenarios'
events repeated (a shifted amount distribution and a new scenario mix): the alarm fires, on the
amount features, and the student's live agreement with its teacher falls (on the shifted
amounts the student extrapolates where the teacher's trees differ). (A new simulation with another seed is not a no-drift control here: its asset
prices take another path, and the 24-hour USD volume's PSI reaches 0.26, which is what the
monitor should report when the market moves.)
"""

from __future__ import annotations

import asyncio
import contextlib
import io
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
from tests.doubles import StaticWatcher
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


# Every scored row goes to the fidelity sample: at 20 % (7,000 rows) mean |dp| and KL, which a
# few tail rows dominate, moved by as much between two runs as the drift moves them. How the
# sampler keeps its rate is tested on its own (tests/stream/core/test_shadow.py).
SAMPLE_RATE = 1.0
ONE_WINDOW = ("--window-s", "1000000")   # every sample of a run in one fidelity window


def _run_worker(models, redis_url: str, prefix: str, events) -> None:
    """The worker core on a real Redis (states, alerts, drift windows, fidelity sample), with every event."""
    import redis

    store = RedisStore(redis.Redis.from_url(redis_url), StoreConfig(prefix=prefix))
    settings = load_settings(model_dir=str(models["student"]), redis_prefix=prefix, drift_window_s=3600,
                             fidelity_sample_rate=SAMPLE_RATE)

    async def publish(topic, items):
        return None

    core = WorkerCore(settings, store, load_student(models["student"]), publish, WorkerMetrics(),
                      StaticWatcher(load_profile(models["student"])), monitor=store)
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


def _fidelity_cli(models, redis_url: str, prefix: str, monkeypatch, capsys, *args) -> tuple[int, dict, str]:
    monkeypatch.setenv("TXWATCH_REDIS_URL", redis_url)
    monkeypatch.setenv("TXWATCH_REDIS_PREFIX", prefix)
    monkeypatch.setenv("TXWATCH_MODEL_DIR", str(models["student"]))
    rc = main(["fidelity", "--once", *ONE_WINDOW, *args])
    out = capsys.readouterr()
    return rc, orjson.loads(out.out), out.err


@pytest.fixture(scope="module")
def runs(models, redis_server, traffic):
    """``{"clean": prefix, "drifted": prefix}``: the worker run on each traffic, into its own keys."""
    out = {}
    for name, events in (("clean", traffic), ("drifted", _drifted(traffic))):
        out[name] = f"d{uuid.uuid4().hex[:8]}"
        _run_worker(models, redis_server.url, out[name], events)
    return out


@pytest.fixture(scope="module")
def live_fidelity(models, redis_server, runs):
    """The one fidelity window of each run, as ``txwatch fidelity --once`` judged it, with its exit status."""
    mp = pytest.MonkeyPatch()
    out = {}
    try:
        for name, prefix in runs.items():
            mp.setenv("TXWATCH_REDIS_URL", redis_server.url)
            mp.setenv("TXWATCH_REDIS_PREFIX", prefix)
            mp.setenv("TXWATCH_MODEL_DIR", str(models["student"]))
            buf = io.StringIO()
            with contextlib.redirect_stdout(buf):
                rc = main(["fidelity", "--once", *ONE_WINDOW])
            out[name] = (rc, orjson.loads(buf.getvalue()))
    finally:
        mp.undo()
    return out


def test_no_drift_no_alarm(models, redis_server, runs, live_fidelity, monkeypatch, capsys):
    rc, rep = _drift_cli(models, redis_server.url, runs["clean"], monkeypatch, capsys)
    assert rep["rows"] > 30_000 and rep["verdict"] == "stable", (rep["alarms"], rep["top_features"], rep["score_psi"])
    assert rc == 0 and rep["score_psi"] < 0.1
    # Live fidelity: one judged window of about SAMPLE_RATE of the rows, within the profile's bounds.
    rc, fid = live_fidelity["clean"]
    (window,) = fid["windows"]
    assert window["rows"] == rep["rows"]
    assert window["judged"] and window["alarms"] == [] and rc == 0 and fid["verdict"] == "ok"
    assert window["live"]["spearman"] >= window["bounds"]["spearman"]["min"]


def test_shifted_amounts_and_scenario_mix_raise_the_alarm_and_fidelity_falls(
        models, redis_server, runs, live_fidelity, monkeypatch, capsys, tmp_path):
    prefix = runs["drifted"]
    # Live fidelity falls: the student follows its teacher less closely on drifted traffic
    # than on the clean traffic, on every figure measured.
    clean = live_fidelity["clean"][1]["windows"][0]["live"]
    drifted = live_fidelity["drifted"][1]["windows"][0]["live"]
    assert drifted["spearman"] < clean["spearman"] - 0.005, (clean, drifted)
    assert drifted["mean_abs_diff"] > 2 * clean["mean_abs_diff"], (clean, drifted)
    assert drifted["kl"] > 2 * clean["kl"], (clean, drifted)
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


def test_fidelity_refuses_samples_of_unknown_versions_and_malformed_entries(models, redis_server, monkeypatch,
                                                                            capsys):
    import numpy as np
    import redis

    from stream.events.samples import Sample

    prefix = f"f{uuid.uuid4().hex[:8]}"
    client = redis.Redis.from_url(redis_server.url)
    store = RedisStore(client, StoreConfig(prefix=prefix))
    n_features = len(load_student(models["student"]).feature_names)
    store.record_sample(Sample("nobody-promoted-this", 1_700_000_000_000, ["e1", "e2"], np.array([0.1, 0.2]),
                               np.zeros((2, n_features))))
    client.xadd(store.samples_key, {"v": "x", "n": "3", "at": "1"})          # no rows at all
    rc, rep, err = _fidelity_cli(models, redis_server.url, prefix, monkeypatch, capsys)
    assert rc == 1 and rep["verdict"] == "alarm" and rep["windows"] == []
    assert rep["unknown_versions"] == {"nobody-promoted-this": 2} and rep["bad_entries"] == 1 and rep["entries"] == 2
    assert any("nobody-promoted-this refused" in a and "no model directory txwatch knows" in a for a in rep["alarms"])
    # The cursor is kept: a second run reads nothing again.
    rc, rep, _ = _fidelity_cli(models, redis_server.url, prefix, monkeypatch, capsys)
    assert rc == 0 and rep["entries"] == 0


def test_fidelity_alarm_when_the_student_follows_its_teacher_less_than_its_profile_says(
        models, dataset, redis_server, tmp_path, monkeypatch, capsys):
    """The good student with a profile claiming perfect agreement (as in the promotion tests):
    live, on its own traffic, its top-1 % overlap with the teacher is below that claim."""
    import redis

    from stream.events.samples import Sample
    from tests.lifecycle.test_promote import overclaim

    overclaiming = overclaim(models["student"], tmp_path / "overclaiming")
    student = load_student(overclaiming)
    prefix = f"f{uuid.uuid4().hex[:8]}"
    store = RedisStore(redis.Redis.from_url(redis_server.url), StoreConfig(prefix=prefix))
    X = dataset.X[:20_000]
    for i in range(0, len(X), 5000):    # as four workers' sends would hold them
        rows = X[i:i + 5000]
        store.record_sample(Sample(student.version, 1_700_000_000_000 + i, [f"e{j}" for j in range(i, i + len(rows))],
                                   student.score(rows), rows))
    monkeypatch.setenv("TXWATCH_MODEL_DIR", str(overclaiming))
    rc, rep, err = _fidelity_cli({"student": overclaiming}, redis_server.url, prefix, monkeypatch, capsys)
    (window,) = rep["windows"]
    assert rc == 1 and window["rows"] == 20_000 and window["judged"]
    assert any(a.startswith("fidelity top_k_overlap: measured") for a in window["alarms"]), window["alarms"]
    assert f"txwatch: fidelity: {student.version}: fidelity top_k_overlap: measured" in err
