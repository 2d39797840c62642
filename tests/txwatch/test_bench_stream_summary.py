"""The target figures ``txwatch bench stream`` derives from its phases (no broker needed)."""

from __future__ import annotations

from txwatch.bench.stream import summary


def test_ratios_and_latency_gaps_come_from_the_phases():
    run = {"faust_worker": {"events_per_s": 15_000}, "faust_noop": {"events_per_s": 20_000},
           "faust_noop_bulk": {"events_per_s": 25_000},
           "core_plain": {"events_per_s": 150_000}, "core_plain_bare": {"events_per_s": 200_000},
           "aiokafka_drain": {"events_per_s": 600_000}, "scale_out": {"events_per_s": 30_000},
           "latency": {"p99_ms": 55.5}, "latency_plain": {"p99_ms": 41.25}, "transport_latency": {"p99_ms": 40.0}}
    out = summary(run)
    assert out["ratios"] == {"faust_worker_over_noop": 0.75, "faust_worker_over_noop_bulk": 0.6, "core_over_drain": 0.25,
                             "core_monitoring_on_over_off": 0.75, "two_workers_over_one": 2.0}
    assert out["p99_above_transport_ms"] == {"faust_worker": 15.5, "plain": 1.25}


def test_a_figure_whose_phase_did_not_run_is_none():
    out = summary({"faust_worker": {"events_per_s": None}, "faust_noop": {"events_per_s": 20_000},
                   "latency": {"p99_ms": 50.0}})
    assert out["ratios"]["faust_worker_over_noop"] is None and out["ratios"]["core_over_drain"] is None
    assert out["p99_above_transport_ms"] == {"faust_worker": None, "plain": None}
