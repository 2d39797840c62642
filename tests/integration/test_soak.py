"""Reliability: five minutes at half the measured peak on one faust worker (slow).

Runs ``txwatch bench soak`` (``txwatch.bench.soak``) on the session's small history: the peak is
measured first, then half of it is offered for 300 s. The worker's RSS after the warm-up
must grow by less than 10 %, the lag must stay bounded, no sample interval may show lag
without progress, every event must be processed, and Redis must hold each alert once.
"""

from __future__ import annotations

import pytest

from txwatch.bench.soak import soak

pytestmark = [pytest.mark.integration, pytest.mark.reliability, pytest.mark.slow]


def test_five_minutes_at_half_peak(kafka, redis_server, events_file, models, tmp_path, monkeypatch):
    monkeypatch.setenv("TXWATCH_KAFKA_URL", kafka.url)
    monkeypatch.setenv("TXWATCH_REDIS_URL", redis_server.url)
    r = soak(str(events_file), str(models["student"]), seconds=300, warmup_s=60, peak_events=30_000,
             workdir=str(tmp_path), log=print)
    assert r["processed"] == r["events"]
    assert abs(r["achieved_events_per_s"] - r["offered_events_per_s"]) <= 0.05 * r["offered_events_per_s"]
    assert r["stalls"] == 0
    assert r["max_lag_seconds"] < 5.0, r["max_lag_seconds"]
    assert r["rss_growth_pct"] < 10.0, r["rss_growth_pct"]
    assert r["alerts"] == r["alert_stream_entries"] == r["alert_stream_unique_ids"] > 0
