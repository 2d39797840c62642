"""The shadow challenger and the live fidelity sample in the worker core (in-memory doubles)."""

from __future__ import annotations

import asyncio
import shutil

import numpy as np
import orjson
import pytest

from stream.core.ports import Record
from stream.core.sampling import FidelitySampler
from stream.core.shadow import Shadow
from stream.core.worker import WorkerCore
from stream.metrics import WorkerMetrics
from stream.scoring.profile import load_profile
from stream.scoring.student import load_student
from stream.settings import load_settings
from tests.doubles import MemorySink, MemoryStore, StaticWatcher


class Half:
    """A challenger that scores half the first feature."""

    version, threshold = "half", 0.3

    def score(self, X):
        return X[:, 0] / 2


def test_shadow_counts_agree_with_a_direct_count():
    rng = np.random.default_rng(3)
    sh = Shadow(Half(), "champ", 60, reservoir=500, seed=1, now=lambda: 0.0)
    X = rng.random((10_000, 2))
    champion = rng.random(10_000)
    ids = [f"e{i}" for i in range(10_000)]
    for i in range(0, 10_000, 777):       # batches of uneven size
        sh.observe(ids[i:i + 777], X[i:i + 777], champion[i:i + 777], 0.9)
    w = sh.take()
    a, b = champion >= 0.9, X[:, 0] / 2 >= 0.3
    assert (w.rows, w.champion_alerts, w.challenger_alerts, w.both) == (10_000, a.sum(), b.sum(), (a & b).sum())
    assert [e for e, *_ in w.would_be] == [ids[i] for i in np.flatnonzero(a | b)]
    which = {e: k for e, _, _, k in w.would_be}
    assert which[ids[np.flatnonzero(a & b)[0]]] == "both" and which[ids[np.flatnonzero(a & ~b)[0]]] == "champion"
    # The reservoir: bounded, every pair a real (champion, challenger) pair, drawn from the whole stream.
    assert w.pairs.shape == (500, 2)
    pos = {v: i for i, v in enumerate(champion)}
    where = np.array([pos[v] for v in w.pairs[:, 0]])
    assert np.allclose(w.pairs[:, 1], X[where, 0] / 2)
    assert 4_000 < where.mean() < 6_000 and where.max() > 9_000    # uniform over 0..9999, not the first 500
    assert sh.take() is None                                          # nothing since


def test_shadow_caps_would_be_alerts_and_a_window_put_back_is_added_to_the_next():
    sh = Shadow(Half(), "champ", 60, reservoir=10, max_would_be=5, seed=0, now=lambda: 0.0)
    X = np.ones((8, 1))
    sh.observe([f"e{i}" for i in range(8)], X, np.ones(8), 0.5)
    w = sh.take()
    assert len(w.would_be) == 5 and w.dropped == 3 and w.both == 8
    sh.observe(["x"], X[:1], np.zeros(1), 0.5)
    sh.restore(w)
    again = sh.take()
    assert again.rows == 9 and again.both == 8 and again.challenger_alerts == 9 and again.dropped == 3
    assert len(again.would_be) == 5 and len(again.pairs) == 9


def test_sampler_keeps_about_its_rate_and_bounds_what_waits():
    t = [0.0]
    s = FidelitySampler(0.01, "m", every_s=1.0, max_rows=300, seed=2, now=lambda: t[0])
    X = np.arange(200_000, dtype=float).reshape(100_000, 2)
    s.add([str(i) for i in range(100_000)], X, X[:, 0])
    assert s.take() is None                             # not yet time
    t[0] = 2.0
    sample = s.take()
    # Binomial(100000, 0.01): mean 1000, sd 31; what waits is capped at 300, the oldest dropped.
    assert len(sample.ids) == 300 and 850 < 300 + s.dropped < 1150
    assert sample.rows[:, 0].tolist() == [float(i) * 2 for i in map(int, sample.ids)]
    assert np.array_equal(sample.scores, sample.rows[:, 0])
    with pytest.raises(ValueError):
        FidelitySampler(0.0, "m")


async def _publish(topic, items):
    return None


def _records(events):
    return [Record("t", 0, i, orjson.dumps(e), e["account_id"].encode(), None) for i, e in enumerate(events)]


def _run(core, recs):
    async def go():
        out = []
        for i in range(0, len(recs), 1000):
            out += await core.handle(recs[i:i + 1000])
        return out
    return asyncio.run(go())


def test_the_worker_shadows_a_challenger_without_changing_what_reviewers_see(models, small_history, tmp_path):
    student = load_student(models["student"])
    copy = shutil.copytree(models["student"], tmp_path / "challenger")
    challenger = load_student(copy)
    profile = load_profile(models["student"])
    settings = load_settings(model_dir=str(models["student"]), drift_window_s=3600, fidelity_sample_rate=0.05)
    recs = _records(small_history[:6000])

    alone, sink0 = MemoryStore(), MemorySink()
    _run(WorkerCore(settings, alone, student, _publish, WorkerMetrics(), StaticWatcher(profile), monitor=sink0), recs)
    shadowed, sink = MemoryStore(), MemorySink()
    metrics = WorkerMetrics()
    core = WorkerCore(settings, shadowed, student, _publish, metrics, StaticWatcher(profile, challenger),
                      monitor=sink)
    results = _run(core, recs)
    core._flush_monitor(force=True)
    scored = sum(r.scored for r in results)
    alerts = sum(len(r.alerts) for r in results)
    # Reviewers see exactly the same alerts, with the champion's version.
    assert shadowed.all_alerts().keys() == alone.all_alerts().keys() and alerts > 0
    assert {a["model_version"] for a in shadowed.all_alerts().values()} == {student.version}
    # The shadow: one window, every row, and (the same model) total agreement.
    (w,) = sink.shadows
    assert w.rows == scored and w.challenger_version == challenger.version
    assert w.champion_alerts == w.challenger_alerts == w.both == alerts
    assert len(w.would_be) == alerts and np.array_equal(w.pairs[:, 0], w.pairs[:, 1])
    assert metrics.value(metrics.shadow_rows) == scored and metrics.shadow_overlap._value.get() == 1.0
    # The fidelity sample: about 5 % of the scored rows, the champion's scores, its version.
    got = sum(len(s.ids) for s in sink.samples)
    assert abs(got - 0.05 * scored) < 5 * np.sqrt(0.05 * scored) and {s.model_version for s in sink.samples} == {
        student.version}
    assert metrics.value(metrics.fidelity_sample_rows) == got
    sample = sink.samples[0]
    assert np.allclose(student.score(sample.rows), sample.scores)


def test_monitoring_records_wait_for_an_unreachable_sink(models, small_history):
    student = load_student(models["student"])
    settings = load_settings(model_dir=str(models["student"]), drift_window_s=3600, fidelity_sample_rate=0.05)
    sink = MemorySink()
    core = WorkerCore(settings, MemoryStore(), student, _publish, WorkerMetrics(),
                      StaticWatcher(load_profile(models["student"]), student), monitor=sink)
    sink.down = True
    results = _run(core, _records(small_history[:3000]))
    core._flush_monitor(force=True)
    assert not sink.samples and not sink.shadows
    sink.down = False
    core._flush_monitor(force=True)
    scored = sum(r.scored for r in results)
    assert [w.rows for w in sink.shadows] == [scored] and len(sink.samples) == 1 and len(sink.samples[0].ids) > 50


def test_no_sink_no_monitoring(models):
    student = load_student(models["student"])
    core = WorkerCore(load_settings(model_dir=str(models["student"])), MemoryStore(), student, _publish,
                      WorkerMetrics(), StaticWatcher(None, student), monitor=None)
    assert core.sampler is None and core.shadow is None
