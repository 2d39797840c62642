"""``txwatch bench stream`` end to end, small: every phase runs on the real broker and Redis
and reports what it measured (no timing is asserted: machines are noisy)."""

from __future__ import annotations

import pytest

from txwatch.bench.stream import bench_stream

pytestmark = pytest.mark.integration


def test_bench_stream_runs_every_phase(kafka, redis_server, events_file, models, tmp_path, monkeypatch):
    monkeypatch.setenv("TXWATCH_KAFKA_URL", kafka.url)
    monkeypatch.setenv("TXWATCH_REDIS_URL", redis_server.url)
    n = 8000
    r = bench_stream(str(events_file), str(models["student"]), n=n, partitions=2, latency_rate=600,
                     latency_seconds=6, workdir=str(tmp_path))
    assert r["events"] == n and r["broker"] == "configured"
    for phase in ("aiokafka_drain", "faust_noop", "faust_noop_bulk", "core_plain_bare", "core_plain", "faust_worker",
                  "scale_out"):
        # All records processed; the rate is None when a phase this small finished within
        # one poll of the stored offsets (the full-size bench runs for seconds per phase).
        rate = r[phase]["events_per_s"]
        assert r[phase]["records"] >= n and (rate is None or rate > 0), (phase, r[phase])
    # Both latency phases time real alerts (pub/sub messages of their own workers).
    for phase in ("latency", "latency_plain"):
        lat = r[phase]
        assert lat["events"] == 3600 and lat["alerts_timed"] > 0, (phase, lat)
        assert 0 < lat["p50_ms"] <= lat["p95_ms"] <= lat["p99_ms"] <= lat["max_ms"]
        assert 1 <= len(lat["p99_ms_by_5s"]) <= 2  # 6 s of sends: two 5 s windows (one may hold no alert)
        assert lat["peak_rss_mb"] > 0  # the run's own worker process, stopped after it
    transport = r["transport_latency"]
    assert transport["received"] == transport["events"] == 3600
    # Each latency phase ran once per round (in turns) and reports its lowest p99.
    for phase in ("latency", "latency_plain", "transport_latency"):
        runs = r[phase]["runs_p99_ms"]
        assert len(runs) == 2 and None not in runs and r[phase]["p99_ms"] == min(runs), (phase, runs)
    # The monitored phases really ran drift, the fidelity sample and the shadow challenger
    # (handed to Redis at the stop at the latest), and each step's cost per event was timed.
    seen = r["core_plain"]["monitored"]
    assert seen["drift_rows"] == seen["shadow_rows"] > 0.9 * n, seen
    assert 0 < seen["fidelity_sample_rows"] < 0.05 * n, seen
    cost = r["monitoring_cost"]["us_per_event"]
    assert set(cost) == {"pipeline_parse_features_score", "drift", "fidelity_sample", "shadow_challenger"}
    assert all(v > 0 for v in cost.values()), cost
    steps = r["monitoring_cost"]["pipeline_steps_us_per_event"]
    assert set(steps) == {"parse", "features", "score"} and all(v > 0 for v in steps.values()), steps
    # The figures the issues set targets on are computed from those phases.
    assert r["ratios"]["faust_worker_over_noop"] == round(r["faust_worker"]["events_per_s"]
                                                          / r["faust_noop"]["events_per_s"], 3)
    assert r["ratios"]["faust_worker_over_noop_bulk"] == round(r["faust_worker"]["events_per_s"]
                                                               / r["faust_noop_bulk"]["events_per_s"], 3)
    gap = r["p99_above_transport_ms"]
    assert gap["plain"] == round(r["latency_plain"]["p99_ms"] - transport["p99_ms"], 2)
