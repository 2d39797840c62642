"""Alert-rate control: the rate held through a shift, the bounds, the ring buffer, the worker's hooks."""

from __future__ import annotations

import numpy as np
import pytest

from stream.core.ratecontrol import RateController


def _run(phases, controller, batch=1000):
    """Alerts and events per phase, judging each batch against the threshold in force before it."""
    out = []
    for scores in phases:
        alerts = 0
        for i in range(0, len(scores), batch):
            chunk = scores[i:i + batch]
            alerts += int((chunk >= controller.threshold).sum())
            controller.observe(chunk)
        out.append((alerts, len(scores)))
    return out


class Fixed:
    def __init__(self, threshold):
        self.threshold = threshold

    def observe(self, scores):
        return None


def test_the_controller_holds_the_rate_through_a_shift_a_fixed_threshold_does_not():
    rng = np.random.default_rng(7)
    before = rng.random(100_000) ** 8           # the model's traffic
    threshold = float(np.quantile(before, 0.99))  # chosen for a 1 % alert rate, as distill does
    settle = rng.random(20_000) ** 4              # the traffic shifts (scores rise)
    after = rng.random(100_000) ** 4
    target = 0.01
    controlled = RateController(threshold, target=target, lowest=threshold * 0.5, highest=min(1.0, threshold * 2),
                                window=20_000, every=2_000, model_version="m")
    (_, _), (_, _), (alerts, n) = _run([before, settle, after], controlled)
    fixed = _run([before, settle, after], Fixed(threshold))
    assert abs(alerts / n - target) <= 0.2 * target, alerts / n
    fixed_rate = fixed[2][0] / fixed[2][1]
    assert abs(fixed_rate - target) > 0.2 * target, fixed_rate


def test_the_threshold_stays_within_its_bounds():
    c = RateController(0.5, target=0.01, lowest=0.4, highest=0.6, window=1000, every=100, model_version="m")
    c.observe(np.full(1000, 0.99))
    assert c.threshold == 0.6
    change = c.observe(np.full(1000, 0.01))
    assert c.threshold == 0.4 and (change.old, change.new) == (0.6, 0.4) and "lower bound" in change.why
    with pytest.raises(ValueError):
        RateController(0.9, target=0.01, lowest=0.1, highest=0.5, window=10, every=10, model_version="m")
    with pytest.raises(ValueError):
        RateController(0.5, target=0.0, lowest=0.1, highest=0.9, window=10, every=10, model_version="m")


def test_the_quantile_is_over_exactly_the_last_window_of_scores():
    rng = np.random.default_rng(3)
    c = RateController(0.5, target=0.1, lowest=0.0, highest=1.0, window=1000, every=1, model_version="m")
    seen = []
    for size in (300, 700, 50, 1200, 10, 999, 1):   # wraps, exact fits, batches larger than the window
        batch = rng.random(size)
        seen.extend(batch)
        c.observe(batch)
        assert c.threshold == pytest.approx(float(np.quantile(seen[-1000:], 0.9)))


def test_the_worker_moves_the_threshold_records_each_move_and_alerts_carry_theirs(models, small_history):
    import asyncio

    import orjson

    from stream.core.ports import Record
    from stream.core.worker import WorkerCore
    from stream.metrics import WorkerMetrics
    from stream.scoring.student import load_student
    from stream.settings import load_settings
    from tests.doubles import MemorySink, MemoryStore, StaticWatcher

    async def publish(topic, items):
        return None

    student = load_student(models["student"])
    sink = MemorySink()
    settings = load_settings(model_dir=str(models["student"]), rate_control_target=0.002, rate_control_every=500,
                             rate_control_window=2000, rate_control_bounds="0.5,4")
    core = WorkerCore(settings, MemoryStore(), student, publish, WorkerMetrics(), StaticWatcher(None), monitor=sink)
    sink.down = True                                  # Redis away at first: the moves are kept
    recs = [Record("t", 0, i, orjson.dumps(e), b"k", None) for i, e in enumerate(small_history[:6000])]

    async def go():
        results = []
        for i in range(0, len(recs), 500):
            results += await core.handle(recs[i:i + 500])
        return results
    results = asyncio.run(go())
    assert core._changes and not sink.changes
    sink.down = False
    core.idle()
    moves = sink.changes
    assert moves and not core._changes and moves[0].old == student.threshold
    assert all(m.new != m.old and student.threshold * 0.5 <= m.new <= student.threshold * 4 for m in moves)
    assert core.pipeline.threshold == moves[-1].new
    used = {a.threshold for r in results for a in r.alerts}
    assert used - {student.threshold}, "alerts carry the thresholds they were judged against"
    assert used <= {student.threshold} | {m.new for m in moves}
