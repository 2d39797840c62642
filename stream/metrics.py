"""Prometheus metrics of a worker, and the periodic one-line log."""

from __future__ import annotations

import logging
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

log = logging.getLogger("txwatch.worker")

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_BATCH_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1)


class WorkerMetrics:
    """The worker's counters, on their own registry (several workers may share a process in tests)."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.events = Counter("txwatch_events_total", "Events by outcome", ["outcome"], registry=r)
        self.alerts = Counter("txwatch_alerts_total", "New alerts written to Redis", registry=r)
        self.dead = Counter("txwatch_dead_letters_total", "Records sent to the dead-letter topic", ["reason"], registry=r)
        self.batch_seconds = Histogram("txwatch_batch_score_seconds", "Student scoring time per batch",
                                       buckets=_BATCH_BUCKETS, registry=r)
        self.latency = Histogram("txwatch_end_to_end_latency_seconds",
                                 "Kafka record timestamp to alert/state committed in Redis",
                                 buckets=_LATENCY_BUCKETS, registry=r)
        self.lag = Gauge("txwatch_consumer_lag", "High watermark minus next offset", ["partition"], registry=r)
        self.retries = Counter("txwatch_redis_retries_total", "Failed Redis writes that were retried", registry=r)
        self.reloads = Counter("txwatch_model_reloads_total", "Model reload attempts", ["result"], registry=r)
        self.model = Gauge("txwatch_model_info", "Serving model version", ["version"], registry=r)
        self.drift_psi = Gauge("txwatch_drift_psi", "PSI of a feature in the last drift window against the "
                               "model's reference profile", ["feature"], registry=r)
        self.score_psi = Gauge("txwatch_drift_score_psi", "PSI of the score in the last drift window", registry=r)
        self.alert_rate = Gauge("txwatch_alert_rate", "Alerts per scored event in the last drift window", registry=r)
        self.alert_rate_target = Gauge("txwatch_alert_rate_target", "The serving model's alert-rate target", registry=r)
        self.threshold = Gauge("txwatch_alert_threshold", "The alert threshold in force (alert-rate control moves it)",
                               registry=r)
        self.batches = Counter("txwatch_batches_total", "Partition batches stored in Redis", registry=r)
        self.shadow_rows = Counter("txwatch_shadow_rows_total", "Events the shadow challenger scored", registry=r)
        self.shadow_alert_rate = Gauge("txwatch_shadow_alert_rate", "Alerts per event in the last shadow window, by "
                                       "model (champion, challenger)", ["model"], registry=r)
        self.shadow_overlap = Gauge("txwatch_shadow_alert_overlap", "Alerts both models raise over alerts either "
                                    "raises, in the last shadow window", registry=r)
        self.fidelity_sample_rows = Counter("txwatch_fidelity_sample_rows_total", "Scored rows sent for live "
                                            "teacher fidelity", registry=r)
        self._last = (time.monotonic(), 0.0, 0.0)

    def serve(self, port: int) -> None:
        """Expose ``/metrics`` on ``port`` (0: not at all)."""
        if port:
            start_http_server(port, addr="0.0.0.0", registry=self.registry)

    def set_model(self, version: str) -> None:
        """Record the serving model version (one series with value 1)."""
        self.model.clear()
        self.model.labels(version=version).set(1)

    def observe_drift(self, rep: dict) -> None:
        """Export a drift window's report (:func:`stream.core.drift.report`) as gauges."""
        for name, f in rep["features"].items():
            self.drift_psi.labels(feature=name).set(f["psi"])
        self.score_psi.set(rep["score_psi"])
        if rep["alert_rate"] is not None:
            self.alert_rate.set(rep["alert_rate"])
        if rep["alert_rate_target"] is not None:
            self.alert_rate_target.set(rep["alert_rate_target"])

    def observe_shadow(self, window) -> None:
        """Export a shadow window (:class:`stream.core.shadow.ShadowWindow`) as gauges."""
        self.shadow_rows.inc(window.rows)
        if window.rows:
            self.shadow_alert_rate.labels(model="champion").set(window.champion_alerts / window.rows)
            self.shadow_alert_rate.labels(model="challenger").set(window.challenger_alerts / window.rows)
        either = window.champion_alerts + window.challenger_alerts - window.both
        if either:
            self.shadow_overlap.set(window.both / either)

    def value(self, counter: Counter, **labels) -> float:
        """Current value of a counter (for logs and tests)."""
        metric = counter.labels(**labels) if labels else counter
        return metric._value.get()

    def log_line(self) -> str:
        """``events=… (…/s) batch=… alerts=… dead=… lag=…``: rate and mean events per stored
        partition batch since the previous line."""
        now = time.monotonic()
        scored = self.value(self.events, outcome="scored")
        batches = self.value(self.batches)
        t0, n0, b0 = self._last
        rate = (scored - n0) / max(now - t0, 1e-9)
        mean_batch = (scored - n0) / (batches - b0) if batches > b0 else 0.0
        self._last = (now, scored, batches)
        dead = sum(s.value for m in self.dead.collect() for s in m.samples if s.name.endswith("_total"))
        lag = sum(s.value for m in self.lag.collect() for s in m.samples)
        return (f"events={scored:.0f} ({rate:.0f}/s) batch={mean_batch:.0f} alerts={self.value(self.alerts):.0f} "
                f"dead={dead:.0f} replayed={self.value(self.events, outcome='skipped'):.0f} lag={lag:.0f}")
