"""Drift counting in the worker: windows, their stored form, the report, and the worker's hooks."""

from __future__ import annotations

import numpy as np
import pytest

from stream.core.drift import DriftCounter, DriftWindow, report, window_fields, window_from_fields
from stream.scoring.profile import build_profile, feature_counts, fidelity, score_counts


def _profile(rng, n=5000):
    X = np.column_stack([rng.normal(size=n), rng.integers(0, 2, n).astype(float), rng.exponential(size=n)])
    p = rng.random(n) ** 3
    return build_profile(X, ("a", "flag", "amount"), p, threshold=0.6, alert_rate=float((p >= 0.6).mean()),
                         alert_rate_target=0.06, fidelity=fidelity(p, p)), X, p


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_a_window_holds_what_was_added_and_the_counter_starts_afresh():
    rng = np.random.default_rng(1)
    prof, X, p = _profile(rng)
    clock = Clock(1000.0)
    c = DriftCounter(prof, "m", 60, now=clock)
    assert c._start == 960
    c.add(X[:100], p[:100], 3)
    c.add(X[100:250], p[100:250], 2)
    assert not c.due()
    clock.t = 1021.0
    assert c.due()
    w = c.take()
    assert (w.start_s, w.rows, w.alerts) == (960, 250, 5)
    np.testing.assert_array_equal(w.features, feature_counts(prof, X[:250]))
    np.testing.assert_array_equal(w.score, score_counts(prof, p[:250]))
    assert c.rows == 0 and c._start == 1020 and c.take() is None   # an empty window is not handed over


def test_a_window_the_sink_refused_is_counted_again_with_the_next():
    rng = np.random.default_rng(2)
    prof, X, p = _profile(rng)
    c = DriftCounter(prof, "m", 60, now=Clock(0.0))
    c.add(X[:10], p[:10], 1)
    w = c.take()
    c.add(X[10:20], p[10:20], 0)
    c.restore(w)
    assert (c.rows, c.alerts) == (20, 1)
    np.testing.assert_array_equal(c.features, feature_counts(prof, X[:20]))


def test_the_stored_form_round_trips_and_sums_over_workers():
    rng = np.random.default_rng(3)
    prof, X, p = _profile(rng)
    a = DriftWindow("m", 0, 100, 4, feature_counts(prof, X[:100]), score_counts(prof, p[:100]))
    b = DriftWindow("m", 0, 50, 1, feature_counts(prof, X[100:150]), score_counts(prof, p[100:150]))
    summed = {}
    for w in (a, b):  # what HINCRBY does in Redis
        for k, v in window_fields(w).items():
            summed[k.encode()] = str(int(summed.get(k.encode(), b"0")) + v).encode()
    rows, alerts, f, s = window_from_fields(summed, prof)
    assert (rows, alerts) == (150, 5)
    np.testing.assert_array_equal(f, feature_counts(prof, X[:150]))
    np.testing.assert_array_equal(s, score_counts(prof, p[:150]))
    assert window_from_fields({b"f:99:0": b"5", b"s:999": b"1", "rows": "3"}, prof)[0] == 3  # out of shape: ignored


def test_the_report_reads_a_shift_and_not_its_absence():
    rng = np.random.default_rng(4)
    prof, _, _ = _profile(rng)
    prof2, X2, p2 = _profile(np.random.default_rng(5))   # the same distributions, other draws
    same = report(prof, 5000, int((p2 >= 0.6).sum()), feature_counts(prof, X2), score_counts(prof, p2))
    assert max(f["psi"] for f in same["features"].values()) < 0.05 and same["score_psi"] < 0.05
    shifted = X2.copy()
    shifted[:, 2] *= 4.0                      # a shifted amount distribution
    p_shift = np.cbrt(p2)                     # scores pushed up
    drift = report(prof, 5000, int((p_shift >= 0.6).sum()), feature_counts(prof, shifted), score_counts(prof, p_shift))
    assert drift["features"]["amount"]["psi"] > 0.25 and drift["features"]["a"]["psi"] < 0.05
    assert drift["score_psi"] > 0.25 and drift["alert_rate"] > 2 * same["alert_rate"]


def test_the_worker_counts_every_scored_row_and_hands_over_finished_windows(models, small_history):
    import asyncio

    import orjson

    from stream.core.ports import Record
    from stream.core.worker import WorkerCore
    from stream.metrics import WorkerMetrics
    from stream.scoring.profile import load_profile
    from stream.scoring.student import load_student
    from stream.settings import load_settings
    from tests.doubles import MemorySink, MemoryStore, StaticWatcher

    async def publish(topic, items):
        return None

    profile = load_profile(models["student"])
    sink = MemorySink()
    metrics = WorkerMetrics()
    core = WorkerCore(load_settings(model_dir=str(models["student"]), drift_window_s=3600), MemoryStore(),
                      load_student(models["student"]), publish, metrics, StaticWatcher(profile), monitor=sink)
    evs = small_history[:3000]
    recs = [Record("t", 0, i, orjson.dumps(e), b"k", None) for i, e in enumerate(evs)]
    results = asyncio.run(core.handle(recs))
    scored = sum(r.scored for r in results)
    assert core.drift.rows == scored > 0 and not sink.windows       # the hour is not over: nothing handed over
    sink.down = True
    core._flush_monitor(force=True)                                     # Redis away: the window is kept
    assert core.drift.rows == scored and not sink.windows
    sink.down = False
    core._flush_monitor(force=True)
    assert [w.rows for w in sink.windows] == [scored] and core.drift.rows == 0
    assert sink.windows[0].features.sum() == scored * len(profile.feature_names)
    assert metrics.score_psi._value.get() >= 0.0                      # the window's PSI is exported

    off = WorkerCore(load_settings(model_dir=str(models["student"]), drift_window_s=0), MemoryStore(),
                     load_student(models["student"]), publish, WorkerMetrics(), StaticWatcher(profile), monitor=sink)
    assert off.drift is None
